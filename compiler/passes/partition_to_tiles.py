"""partition-to-tiles: map every weighted layer onto crossbar arrays and place the arrays on a
grid of tiles.

Pre: spiking form. Post: the graph is unchanged; the mapping (per layer: its K × N matrix,
row/column blocks, arrays, the bounds; per block: its array and offsets; the tile placement)
is recorded in ``ctx.facts["mapping"]`` and written to the artifact as ``mapping.json``; the
tile program (:mod:`bsnnc.backends.rram.program`) with its bit-packed weights and integer
thresholds goes to ``program.txt`` and ``program.npz``. The
algebra and the bounds are in :mod:`bsnnc.backends.rram.mapping`; placement in
:mod:`bsnnc.backends.rram.placement`. The same network is also mapped with 2 rows per input,
for the B-SNN vs BNN area comparison.
"""

from __future__ import annotations

from dataclasses import asdict

from bsnnc.backends.rram.emit import emit_program
from bsnnc.backends.rram.hw import load_hw
from bsnnc.backends.rram.mapping import partition
from bsnnc.backends.rram.placement import place
from bsnnc.backends.rram.program import print_program
from bsnnc.compiler.passes.base import Pass, PassContext
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.verifier import verify_spiking


def partition_to_tiles(g: Graph, ctx: PassContext) -> Graph:
    """See the module docstring."""
    verify_spiking(g)
    opts = ctx.options
    hw = load_hw(opts.hw)
    if opts.duplicate < 1:
        raise BsnncError(f"--duplicate must be at least 1, got {opts.duplicate}")
    m = partition(
        g, hw, pack_layers=opts.pack, fp_layers=opts.fp_layers, duplicate_factor=opts.duplicate
    )
    bnn = partition(g, hw, pack_layers=opts.pack, fp_layers=opts.fp_layers, rho=2)
    summary = m.summary()
    summary["bnn_arrays"] = bnn.n_arrays
    summary["blocks"] = [asdict(b) for b in m.blocks]
    summary["placement"] = place(g, m)
    summary["hw_config"] = hw.as_dict()
    ctx.facts["mapping"] = summary
    program, arrays = emit_program(g, m)
    ctx.facts["program"] = (print_program(program), arrays)
    ctx.notes.append(
        f"partition-to-tiles: {m.n_arrays} arrays of {hw.rows}×{hw.columns} "
        f"(per-layer bound {summary['arrays_bound_per_layer']}, global bound "
        f"{summary['arrays_bound_global']}, utilization {summary['utilization']:.1%}); "
        f"a BNN with 2 rows per input needs {bnn.n_arrays}"
    )
    return g


PASS = Pass(
    "partition-to-tiles", "map layers onto crossbar arrays and tiles (report)", partition_to_tiles
)
