"""Partitioning binary layers onto crossbar arrays, packing, and the bounds to compare with.

A binary conv/dense layer unrolls to a K × N matrix: K = Cin·kH·kW rows (one per input; row
k = (ky·kW + kx)·Cin + c keeps its (channel, ky, kx) provenance) and N = Cout columns. With ρ
rows per input (1 for a B-SNN's 0/1 spikes, 2 for a BNN's ±1 inputs), R rows and C data columns
per array (the
reference column sits outside the data columns), the layer is cut into
``⌈ρK/R⌉ × ⌈N/C⌉`` blocks; partial sums across row blocks are added digitally and the IF
neuron of each output sits after that adder.

Bounds reported beside the mapping: per layer ``Σ_l ⌈ρK_l/R⌉·⌈N_l/C⌉`` (what an unpacked
mapping uses) and globally ``⌈Σ_l ρK_l·N_l / (R·C)⌉`` (perfect packing). Packing places blocks
that leave an array partly empty into shared arrays *block-diagonally*: blocks in one array use
disjoint rows and disjoint columns, so driving one block's rows never disturbs another's
outputs. Utilization = Σ ρK·N / (arrays·R·C) over data columns, and over physical columns
with the reference columns counted.

Full-precision layers (the first and the last) are either ``digital`` (computed next to the
arrays or on the host, no array) or ``bitsliced`` to b-bit weights, each weight over b columns
with inputs applied bit-serially: ``⌈K/R⌉ × ⌈b·N/C⌉`` arrays.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bsnnc.backends.rram.hw import HwConfig
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph, Node
from bsnnc.ir.ops import Trait, has_trait, is_binary_layer
from bsnnc.ir.types import Kind


@dataclass
class Block:
    """One ≤ R × C piece of a layer's matrix: rows [r0, r1) and columns [c0, c1)."""

    layer: str
    r0: int
    r1: int
    c0: int
    c1: int
    array: int = -1
    row_offset: int = 0
    col_offset: int = 0
    copy: int = 0  # which duplicate of the layer (see ``duplicate``)

    @property
    def height(self) -> int:
        return self.r1 - self.r0

    @property
    def width(self) -> int:
        return self.c1 - self.c0


@dataclass
class LayerMap:
    """The mapping of one weighted layer."""

    node: str
    loc: str
    kind: str  # "binary", "digital" or "bitsliced"
    K: int
    N: int
    rho: int
    rows: int  # matrix rows on the arrays: ρ·K (binary) or K (bit-sliced)
    cols: int  # matrix columns on the arrays: N (binary) or b·N (bit-sliced)
    row_blocks: int
    col_blocks: int
    bound: int  # ⌈ρK/R⌉·⌈N/C⌉ (0 for digital layers)
    arrays: list[int] = field(default_factory=list)
    positions: int = 1  # output positions per image and timestep (oH·oW; 1 for dense)
    copies: int = 1  # duplicates that share the positions (pipeline balancing)
    acc_bits: int = 0  # accumulator width its partial sums need (see ``accumulator_bits``)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class Mapping:
    """The whole network on arrays."""

    hw: HwConfig
    layers: list[LayerMap]
    blocks: list[Block]
    n_arrays: int
    packed: bool
    fp_layers: str

    def summary(self) -> dict[str, Any]:
        """The numbers the report shows (and the artifact's mapping.json keeps)."""
        hw = self.hw
        onchip = [lm for lm in self.layers if lm.kind != "digital"]
        data = sum(lm.rows * lm.cols for lm in onchip)
        cells = self.n_arrays * hw.rows * hw.columns
        phys = self.n_arrays * hw.rows * (hw.columns + hw.reference_columns)
        return {
            "hw": hw.name,
            "arrays": self.n_arrays,
            "arrays_bound_per_layer": sum(lm.bound for lm in onchip),
            "arrays_bound_global": math.ceil(data / (hw.rows * hw.columns)) if data else 0,
            "utilization": data / cells if cells else 0.0,
            "utilization_physical": data / phys if phys else 0.0,
            "accumulator_bits_needed": max((lm.acc_bits for lm in self.layers), default=0),
            "packed": self.packed,
            "fp_layers": self.fp_layers,
            "layers": [lm.as_dict() for lm in self.layers],
        }


FP_BITS = 8


def _matrix(g: Graph, n: Node) -> tuple[int, int]:
    w = g.constants[n.const_operands()[0]].type.shape
    k = int(np.prod([int(d or 1) for d in w[1:]]))
    return k, int(w[0] or 0)


def layer_map(
    g: Graph, n: Node, hw: HwConfig, fp_layers: str, rho: int
) -> tuple[LayerMap, list[Block]]:
    """Cut one weighted layer into blocks (see the module docstring)."""
    k, nn = _matrix(g, n)
    binary = is_binary_layer(g, n)
    kind = "binary" if binary else fp_layers
    if kind == "digital":
        return LayerMap(n.result, n.loc or "", kind, k, nn, 0, 0, 0, 0, 0, 0), []
    rows = rho * k if binary else k
    cols = nn if binary else FP_BITS * nn
    rb, cb = math.ceil(rows / hw.rows), math.ceil(cols / hw.columns)
    blocks = [
        Block(
            n.result,
            r * hw.rows,
            min(rows, (r + 1) * hw.rows),
            c * hw.columns,
            min(cols, (c + 1) * hw.columns),
        )
        for r in range(rb)
        for c in range(cb)
    ]
    lm = LayerMap(
        n.result, n.loc or "", kind, k, nn, rho if binary else 1, rows, cols, rb, cb, rb * cb
    )
    return lm, blocks


def block_count(g: Graph, hw: HwConfig, fp_layers: str, rho: int) -> int:
    """How many blocks :func:`partition` would cut ``g`` into (before packing or copies),
    computed without making them: Σ_l ⌈ρ_l·K_l / R⌉ · ⌈b_l·N_l / C⌉ over the layers on arrays."""
    total = 0
    for n in g.nodes:
        if not has_trait(n.op, Trait.WEIGHTED):
            continue
        k, nn = _matrix(g, n)
        binary = is_binary_layer(g, n)
        if not binary and fp_layers == "digital":
            continue
        rows, cols = (rho * k, nn) if binary else (k, FP_BITS * nn)
        total += math.ceil(rows / hw.rows) * math.ceil(cols / hw.columns)
    return total


def accumulator_bits(k: int, in_bits: int, w_bits: int) -> int:
    """Signed width of a sum of ``k`` products of ``in_bits``-bit unsigned inputs and
    ``w_bits``-bit signed weights: |Σ| ≤ k·(2^in − 1)·2^(w−1), plus a sign bit. Binary
    layers (0/1 spikes × ±1): k.bit_length() + 1."""
    largest: int = k * (2**in_bits - 1) * 2 ** (w_bits - 1)
    return largest.bit_length() + 1


def input_bits(nodes: dict[str, Node], n: Node) -> int:
    """Bits per input row of a layer's read: 1 for spikes, else ``FP_BITS`` (bit-serial)."""
    return 1 if nodes[n.value_operands()[0]].type.kind == Kind.SPIKE else FP_BITS


def _check_accumulators(nodes: dict[str, Node], n: Node, lm: LayerMap, hw: HwConfig) -> None:
    """Sets ``lm.acc_bits`` and fails when the hardware's accumulators are narrower."""
    if lm.kind == "digital":
        return
    in_bits = input_bits(nodes, n)
    lm.acc_bits = accumulator_bits(lm.K, in_bits, 1 if lm.kind == "binary" else FP_BITS)
    if lm.acc_bits > hw.accumulator_bits:
        raise BsnncError(
            f"layer {n.loc or '%' + n.result}: its partial sums need {lm.acc_bits}-bit "
            f"accumulators (K = {lm.K}, {in_bits}-bit inputs), but {hw.name} has "
            f"accumulator_bits = {hw.accumulator_bits}"
        )


def pack(blocks: list[Block], hw: HwConfig, enabled: bool) -> int:
    """Give every block an array; returns the number of arrays.

    Full blocks get an array each. With packing, partial blocks go first-fit-decreasing into
    shared arrays, block-diagonally (a block fits while the array's used rows + its height ≤ R
    and used columns + its width ≤ C)."""
    n_arrays = 0
    shared: list[list[int]] = []  # per shared array: [index, used rows, used columns]
    partial = [b for b in blocks if b.height < hw.rows or b.width < hw.columns] if enabled else []
    ids = {id(b) for b in partial}
    for b in blocks:
        if id(b) not in ids:
            b.array, n_arrays = n_arrays, n_arrays + 1
    for b in sorted(partial, key=lambda b: (-b.height * b.width, b.layer, b.r0, b.c0)):
        for s in shared:
            if s[1] + b.height <= hw.rows and s[2] + b.width <= hw.columns:
                b.array, b.row_offset, b.col_offset = s[0], s[1], s[2]
                s[1] += b.height
                s[2] += b.width
                break
        else:
            b.array = n_arrays
            shared.append([n_arrays, b.height, b.width])
            n_arrays += 1
    return n_arrays


def duplicate(layers: list[LayerMap], budget: int) -> None:
    """Give layers extra copies while the total stays within ``budget`` arrays.

    A layer's arrays serve ``positions`` MVMs per image and timestep, shared round-robin by
    its copies, so its stage time in the pipeline is ∝ positions / copies. Greedily, the
    current bottleneck gets one more copy as long as it fits; when it no longer fits, the
    bottleneck (hence the pipeline's throughput) cannot improve and duplication stops."""
    onchip = [lm for lm in layers if lm.kind != "digital" and lm.bound > 0]
    total = sum(lm.bound for lm in onchip)
    while onchip:
        worst = max(onchip, key=lambda lm: (lm.positions / lm.copies, -lm.bound))
        if total + worst.bound > budget:
            return
        worst.copies += 1
        total += worst.bound


def partition(
    g: Graph,
    hw: HwConfig,
    *,
    pack_layers: bool = False,
    fp_layers: str = "digital",
    rho: int | None = None,
    duplicate_factor: float = 1.0,
) -> Mapping:
    """Map every conv2d/dense of ``g`` onto arrays of ``hw``; with ``duplicate_factor`` > 1,
    up to that many times the unduplicated arrays may be spent on copies of the bottleneck
    layers (:func:`duplicate`)."""
    rho = hw.rows_per_input if rho is None else rho
    layers: list[LayerMap] = []
    per_layer: list[list[Block]] = []
    nodes = g.node_map()
    for n in g.nodes:
        if has_trait(n.op, Trait.WEIGHTED):
            lm, bl = layer_map(g, n, hw, fp_layers, rho)
            _check_accumulators(nodes, n, lm, hw)
            lm.positions = (
                int(np.prod([int(d or 1) for d in n.type.shape[2:]])) if n.op == "conv2d" else 1
            )
            layers.append(lm)
            per_layer.append(bl)
    if duplicate_factor > 1:
        duplicate(layers, int(duplicate_factor * sum(lm.bound for lm in layers)))
    blocks = [
        Block(b.layer, b.r0, b.r1, b.c0, b.c1, copy=k)
        for lm, bl in zip(layers, per_layer, strict=True)
        for k in range(lm.copies)
        for b in bl
    ]
    n_arrays = pack(blocks, hw, pack_layers)
    by_layer: dict[str, list[int]] = {}
    for b in blocks:
        by_layer.setdefault(b.layer, []).append(b.array)
    for lm in layers:
        lm.arrays = sorted(set(by_layer.get(lm.node, [])))
    return Mapping(hw, layers, blocks, n_arrays, pack_layers, fp_layers)
