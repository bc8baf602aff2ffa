"""Lowering a spiking graph to the RRAM crossbar backend: map every weighted layer onto
crossbar arrays, place the arrays on a grid of tiles, and emit the tile program.

This is the backend's code generation, not an IR pass: the graph is not rewritten. The
products are the mapping (per layer: its K × N matrix, row/column blocks, arrays, the bounds;
per block: its array and offsets; the tile placement), written to the artifact as
``mapping.json``, and the tile program (:mod:`bsnnc.backends.rram.program`) with its
bit-packed weights and integer thresholds, written as ``program.txt`` and ``program.npz``.
The algebra and the bounds are in :mod:`bsnnc.backends.rram.mapping`; placement in
:mod:`bsnnc.backends.rram.placement`. The same network is also mapped with 2 rows per input,
for the B-SNN vs BNN area comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bsnnc.backends.rram.emit import emit_program
from bsnnc.backends.rram.hw import DEFAULT, load_hw
from bsnnc.backends.rram.mapping import block_count, partition
from bsnnc.backends.rram.placement import place
from bsnnc.backends.rram.program import print_program
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.verifier import verify_spiking

#: the most crossbar blocks a mapping may have, counted with 2 rows per input (the BNN
#: comparison) and copies: VGG-15 for ImageNet on 128×128 arrays needs 16,364 with bit-sliced
#: first/last layers. The mapping, placement and simulator's event counters grow with the block
#: count (1×1 arrays on the digits model: 176k blocks took 247 s and 7.9 GB), so more is
#: refused before any block is made.
MAX_BLOCKS = 1 << 16


@dataclass(frozen=True)
class RramOptions:
    """Options of the crossbar mapping (``bsnnc compile --help``, hardware group)."""

    #: hardware configuration: a preset name or a .json/.toml file.
    hw: str = DEFAULT
    #: pack partly filled blocks of different layers into shared arrays.
    pack: bool = False
    #: full-precision layers: ``digital`` (no arrays) or ``bitsliced`` (8-bit weight slices).
    fp_layers: str = "digital"
    #: up to this many times the unduplicated arrays may hold copies of bottleneck layers.
    duplicate: float = 1.0


@dataclass
class TileLowering:
    """The backend's products for one graph."""

    #: the report's numbers, the per-block list, the placement and the hardware (mapping.json)
    mapping: dict[str, Any]
    #: the tile program's text (program.txt)
    program: str
    #: its arrays: packed weights and integer thresholds (program.npz)
    arrays: dict[str, np.ndarray]
    #: one line for the compile report
    note: str


def lower_to_tiles(g: Graph, options: RramOptions | None = None) -> TileLowering:
    """Map, place and emit ``g`` (a spiking graph) for the crossbar backend."""
    opts = options or RramOptions()
    verify_spiking(g)
    hw = load_hw(opts.hw)
    if not (math.isfinite(opts.duplicate) and opts.duplicate >= 1):
        raise BsnncError(f"--duplicate must be a finite number ≥ 1, got {opts.duplicate}")
    blocks = block_count(g, hw, opts.fp_layers, max(hw.rows_per_input, 2))
    if blocks * opts.duplicate > MAX_BLOCKS:
        raise BsnncError(
            f"--hw {opts.hw}: {hw.rows}×{hw.columns} arrays cut this network into {blocks:,} "
            f"blocks (× {opts.duplicate:g} copies); the limit is {MAX_BLOCKS:,}: use larger "
            "arrays"
        )
    m = partition(
        g, hw, pack_layers=opts.pack, fp_layers=opts.fp_layers, duplicate_factor=opts.duplicate
    )
    bnn = partition(g, hw, pack_layers=opts.pack, fp_layers=opts.fp_layers, rho=2)
    summary = m.summary()
    summary["bnn_arrays"] = bnn.n_arrays
    summary["blocks"] = [asdict(b) for b in m.blocks]
    summary["placement"] = place(g, m)
    summary["hw_config"] = hw.as_dict()
    program, arrays = emit_program(g, m)
    note = (
        f"crossbar mapping: {m.n_arrays} arrays of {hw.rows}×{hw.columns} "
        f"(per-layer bound {summary['arrays_bound_per_layer']}, global bound "
        f"{summary['arrays_bound_global']}, utilization {summary['utilization']:.1%}); "
        f"a BNN with 2 rows per input needs {bnn.n_arrays}"
    )
    merges = [n for n in g.nodes if n.op == "add"]
    if merges:  # residual merges run on the digital adders, not on arrays
        summary["merges"] = len(merges)
        summary["merge_adds_per_step"] = sum(n.type.numel_per_sample() for n in merges)
        note += (
            f"; {len(merges)} residual merge(s) on the digital adders, "
            f"{summary['merge_adds_per_step']:,} adds per image and step"
        )
    return TileLowering(summary, print_program(program), arrays, note)
