"""Validating an artifact's tile program against its graph, its arrays and the hardware.

The tile simulator executes ``program.txt`` with the bit-packed weights and integer
thresholds of ``program.npz``, but takes shapes and digital layers from ``graph.ir``; the
reference backend runs ``graph.ir`` alone. So one artifact has one meaning only if the two
agree. :func:`validate_program` checks, after :func:`~bsnnc.backends.rram.emit.check_program`
(statement forms and number ranges):

* the program's ``input`` values are the graph's inputs;
* every ``array`` fits the hardware (rows ≤ ``rows``, cols ≤ ``columns``);
* every ``block`` belongs to a weighted layer of the graph; its rows and columns are
  increasing ranges inside the layer's matrix — ρK × N for a binary layer (ρ =
  ``rows_per_input``), K × b·N for a bit-sliced one (b = ``FP_BITS``) — and, at its offset,
  inside its array's declared rows × cols; blocks that share an array use disjoint rows and
  disjoint columns (block-diagonal packing);
* per copy of a layer, its blocks cut the matrix into a grid: row ranges that partition the
  rows, column ranges that partition the columns, every (row range, column range) once — the
  same grid for every copy;
* every ``mvm``/``fire``/``readout``/``digital`` computes a node of the graph with that
  operation and those operands, in graph order within its block; every node but the inputs is
  computed exactly once (so every graph output has its ``readout``); a binary layer runs on the
  arrays (``mvm``), an ``mvm`` reads exactly its layer's arrays and an ``add`` follows it with
  the same arrays when (and only when) the layer has more than one row block; every ``fire``
  is followed right away by its one ``send``;
* every ``if`` node has exactly one ``neuron`` and every ``neuron`` names an ``if`` node;
  its θ = Θ·2^unit equals the graph's θ (attribute times per-channel constant) exactly, its
  initial membrane I·2^unit (0 without ``init``) equals the graph's init·θ exactly, and its
  reset is the graph's;
* the packed weights ``%L.w`` of every binary layer are uint8 with exactly ⌈K·N/8⌉ bytes
  and unpack to the sign pattern of the graph's bipolar weights (rows in
  :func:`~bsnnc.backends.rram.emit.unrolled` order); threshold and initial-membrane arrays
  are integer or float vectors of one value per channel; ``program.npz`` holds nothing else.

Errors name ``FILE[program.txt]:line:column`` for a statement, ``FILE[program.txt]`` for
something missing, and ``FILE[program.npz]:array`` for an array.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Mapping

import numpy as np

from bsnnc.backends.rram.cost import MappingFile, load_mapping
from bsnnc.backends.rram.emit import check_program, load_program, positive
from bsnnc.backends.rram.hw import HwConfig, load_hw
from bsnnc.backends.rram.mapping import FP_BITS
from bsnnc.backends.rram.program import BlockDecl, Instruction, NeuronDecl, Program, Stmt
from bsnnc.ir.errors import ArtifactError, BsnncError
from bsnnc.ir.graph import Graph, Node, channel_param
from bsnnc.ir.io import read_npz
from bsnnc.ir.ops import Trait, has_trait, if_init, is_binary_layer, ops_with
from bsnnc.runtime.artifact import Artifact

#: the graph ops an instruction may compute (``digital`` names its op)
_OPS_OF = {
    "fire": ("if",),
    "readout": ("readout",),
    "mvm": ops_with(Trait.WEIGHTED),
    "merge": ("add",),
}
#: the instructions that compute a value
_COMPUTE = ("mvm", "fire", "readout", "digital", "merge")

Range = tuple[int, int]


def validate_program(
    program: Program,
    graph: Graph,
    arrays: Mapping[str, np.ndarray],
    hw: HwConfig,
    source: str,
) -> None:
    """Raise :class:`BsnncError` at the first disagreement between ``program`` (an artifact's
    ``program.txt``), its ``arrays`` (``program.npz``), the verified ``graph`` (``graph.ir``
    with weights) and the hardware ``hw`` it was compiled for (see the module docstring).
    ``source`` is the artifact's path."""
    check_program(program, f"{source}[program.txt]")
    _Validator(program, graph, arrays, hw, source).run()


def check_artifact(art: Artifact, path: str) -> Program | None:
    """One artifact, one meaning: when ``art`` carries a tile program, parse it and validate it
    against ``graph.ir`` (thresholds, shapes, blocks, weights), so that the numpy reference
    and the crossbar backend cannot run two different networks from one file. Returns the
    program (None for an artifact without one)."""
    if "program.txt" not in art.extra:
        return None
    program = load_program(path, art.extra)
    validate_artifact_program(program, art.graph, art.extra, None, path)
    return program


def validate_artifact_program(
    program: Program,
    graph: Graph,
    members: Mapping[str, bytes],
    hw: HwConfig | None,
    path: str,
) -> tuple[dict[str, np.ndarray], MappingFile | None]:
    """:func:`validate_program` for an artifact's members: reads ``program.npz`` (a missing or
    unreadable one is an :class:`ArtifactError`) and validates against the hardware recorded
    in ``mapping.json``, else ``hw``, else the preset the program names. Returns what it read
    (the program's arrays and the mapping), so callers need not decode them again."""
    try:
        data = members["program.npz"]
    except KeyError:
        raise ArtifactError(f"{path}: member program.npz is missing") from None
    where = f"{path}[program.npz]"
    try:
        arrays = read_npz(io.BytesIO(data))  # its own errors are BsnncErrors
    except BsnncError as e:
        raise ArtifactError(f"{where}: {e.message}") from None
    mapping = load_mapping(dict(members), path)
    compiled = mapping.hw if mapping is not None else None
    validate_program(program, graph, arrays, compiled or hw or load_hw(program.hw), path)
    return arrays, mapping


class _Validator:
    """One validation (see :func:`validate_program`); each method checks one rule."""

    def __init__(
        self,
        p: Program,
        g: Graph,
        arrays: Mapping[str, np.ndarray],
        hw: HwConfig,
        source: str,
    ) -> None:
        self.p, self.g, self.arrays, self.hw = p, g, arrays, hw
        self.txt, self.npz = f"{source}[program.txt]", f"{source}[program.npz]"
        self.nodes = g.node_map()
        #: array name → (rows, cols)
        self.array_size: dict[str, tuple[int, int]] = {}
        #: layer → its blocks with their statements
        self.blocks: dict[str, list[tuple[BlockDecl, Stmt]]] = {}
        #: value → the instruction that computes it
        self.computed: dict[str, Stmt] = {}
        #: the program.npz arrays the program refers to
        self.used: set[str] = set()

    def at(self, s: Stmt, msg: str) -> BsnncError:
        """An error at statement ``s``."""
        where = f"{self.txt}:{s.pos[0]}:{s.pos[1]}" if s.pos else self.txt
        return BsnncError(f"{where}: {s.op}: {msg}")

    def member(self, name: str, msg: str) -> BsnncError:
        """An error about array ``name`` of program.npz."""
        return BsnncError(f"{self.npz}:{name}: {msg}")

    def run(self) -> None:
        """Every rule, in the order of the module docstring."""
        self.inputs()
        self.declared_arrays()
        for s in self.p.decls:
            if s.op == "block":
                self.block(s)
        for layer, blocks in self.blocks.items():
            self.grid(layer, blocks)
        self.shared_arrays()
        self.instructions()
        self.neurons()
        self.packed_weights()
        self.unused_arrays()

    def inputs(self) -> None:
        """The program's inputs are the graph's."""
        want = sorted(n.result for n in self.g.inputs())
        got = sorted(str(s.args[0])[1:] for s in self.p.decls if s.op == "input")
        if got != want:
            names = ", ".join(f"%{v}" for v in want)
            raise BsnncError(f"{self.txt}: the program's inputs must be graph.ir's ({names})")

    def declared_arrays(self) -> None:
        """Every array fits the hardware's geometry."""
        for s in self.p.decls:
            if s.op != "array":
                continue
            rows, cols = int(str(s.args[4])), int(str(s.args[6]))
            if rows > self.hw.rows or cols > self.hw.columns:
                raise self.at(
                    s,
                    f"{s.args[0]} uses {rows} rows × {cols} cols, but the arrays of "
                    f"{self.hw.name} have {self.hw.rows} × {self.hw.columns}",
                )
            self.array_size[str(s.args[0])] = (rows, cols)

    def matrix(self, n: Node) -> tuple[int, int]:
        """The rows × columns a weighted layer occupies on the arrays."""
        w = self.g.constants[n.const_operands()[0]].type.shape
        k, cols = math.prod(int(d or 1) for d in w[1:]), int(w[0] or 0)
        if is_binary_layer(self.g, n):
            return self.hw.rows_per_input * k, cols
        return k, FP_BITS * cols

    def block(self, s: Stmt) -> None:
        """A block of a weighted layer, inside the layer's matrix and its array."""
        b = BlockDecl.of(s)
        n = self.nodes.get(b.layer)
        if n is None or not has_trait(n.op, Trait.WEIGHTED):
            what = "not a value of graph.ir" if n is None else f"a {n.op}, not a weighted layer"
            raise self.at(s, f"%{b.layer} is {what}")
        mr, mc = self.matrix(n)
        for (lo, hi), size, what in ((b.rows, mr, "rows"), (b.cols, mc, "cols")):
            if hi > size:
                raise self.at(
                    s,
                    f"{what} {lo}:{hi} lie outside layer %{b.layer}'s {mr} × {mc} matrix "
                    f"({what} 0:{size})",
                )
        name = f"a{b.array}"
        rows, cols = self.array_size[name]
        r, c = b.at
        if r + b.rows[1] - b.rows[0] > rows or c + b.cols[1] - b.cols[0] > cols:
            raise self.at(
                s,
                f"the block ({b.rows[1] - b.rows[0]} × {b.cols[1] - b.cols[0]} at {r}:{c}) "
                f"does not fit in {name} ({rows} rows × {cols} cols)",
            )
        self.blocks.setdefault(b.layer, []).append((b, s))

    def grid(self, layer: str, blocks: list[tuple[BlockDecl, Stmt]]) -> None:
        """Per copy, the blocks cut the layer's matrix into one grid, the same for every copy
        (copies numbered 0, 1, …)."""
        mr, mc = self.matrix(self.nodes[layer])
        copies = sorted({b.copy for b, _ in blocks})
        first = blocks[0][1]
        if copies != list(range(len(copies))):
            raise self.at(first, f"the copies of %{layer} must be numbered 0 to {len(copies) - 1}")
        grids = []
        for k in copies:
            mine = [(b, s) for b, s in blocks if b.copy == k]
            rows = _partition(sorted({b.rows for b, _ in mine}), mr)
            cols = _partition(sorted({b.cols for b, _ in mine}), mc)
            if rows is not None or cols is not None:
                bad, size, what = (rows, mr, "rows") if rows is not None else (cols, mc, "cols")
                raise self.at(
                    first,
                    f"the blocks of %{layer} (copy {k}) do not cut its {what} 0:{size} into "
                    f"consecutive ranges ({bad})",
                )
            cells = [(b.rows, b.cols) for b, _ in mine]
            if len(set(cells)) != len(cells) or len(cells) != len({c[0] for c in cells}) * len(
                {c[1] for c in cells}
            ):
                raise self.at(
                    first,
                    f"the blocks of %{layer} (copy {k}) do not cover its {mr} × {mc} matrix "
                    "exactly once (every row range with every column range)",
                )
            grids.append(sorted(cells))
        if any(grid != grids[0] for grid in grids):
            raise self.at(first, f"the copies of %{layer} are cut into different blocks")

    def shared_arrays(self) -> None:
        """Blocks that share an array use disjoint rows and disjoint columns."""
        per_array: dict[int, list[tuple[BlockDecl, Stmt]]] = {}
        for blocks in self.blocks.values():
            for b, s in blocks:
                per_array.setdefault(b.array, []).append((b, s))
        for array, blocks in per_array.items():
            for axis, what in ((0, "rows"), (1, "cols")):
                spans = sorted(
                    ((b.at[axis], _length(b, axis), s) for b, s in blocks),
                    key=lambda span: (span[0], span[1]),
                )
                for (start, length, _), (nxt, _, s) in itertools.pairwise(spans):
                    if nxt < start + length:
                        raise self.at(
                            s,
                            f"overlaps another block's {what} in a{array} (blocks sharing an "
                            "array use disjoint rows and disjoint columns)",
                        )

    def instructions(self) -> None:
        """Instructions compute the graph's nodes, in graph order, each exactly once."""
        order = {n.result: i for i, n in enumerate(self.g.nodes)}
        sends: dict[str, int] = {}
        for block in (self.p.once, self.p.body):
            last: Stmt | None = None
            for s in block:
                if s.op == "send":
                    layer = str(s.args[0])[1:]
                    sends[layer] = sends.get(layer, 0) + 1
                if s.op not in _COMPUTE:
                    continue
                n = self.instruction(s)
                if last is not None and order[n.result] < order[Instruction.of(last).result]:
                    raise self.at(
                        s,
                        f"%{n.result} comes after %{Instruction.of(last).result}, but graph.ir "
                        "computes it before (instructions keep the graph's order)",
                    )
                last = s
                self.computed[n.result] = s
        for n in self.g.nodes:
            if n.op == "input" or n.result in self.computed:
                continue
            if n.result in self.g.outputs:
                raise BsnncError(f"{self.txt}: no readout for graph.ir's output %{n.result}")
            raise BsnncError(f"{self.txt}: no instruction computes graph.ir's %{n.result} ({n.op})")
        for block in (self.p.once, self.p.body):
            for i, s in enumerate(block):
                if s.op != "fire":
                    continue
                nxt = block[i + 1] if i + 1 < len(block) else None
                result = str(s.args[0])[1:]
                follows = nxt is not None and nxt.op == "send" and str(nxt.args[0]) == f"%{result}"
                if not follows or sends.get(result, 0) != 1:
                    raise self.at(
                        s,
                        f"%{result} needs exactly one send, right after its fire (the spikes "
                        "leave before anything else reads them)",
                    )
        adds: dict[str, int] = {}
        for s in [*self.p.once, *self.p.body]:
            if s.op == "add":
                self.add(s)
                adds[str(s.args[0])[1:]] = adds.get(str(s.args[0])[1:], 0) + 1
        for result, s in self.computed.items():
            want = int(len({b.rows for b, _ in self.blocks.get(result, [])}) > 1)
            if s.op == "mvm" and adds.get(result, 0) != want:
                raise self.at(
                    s,
                    f"%{result} needs {want} add of its partial sums (one per layer with more "
                    f"than one row block), has {adds.get(result, 0)}",
                )

    def instruction(self, s: Stmt) -> Node:
        """One computing instruction agrees with its graph node (and an mvm with its arrays)."""
        ins = Instruction.of(s)
        n = self.nodes.get(ins.result)
        if n is None:
            raise self.at(s, f"%{ins.result} is not a value of graph.ir")
        ops = _OPS_OF.get(s.op, (str(ins.ir_op),))
        if n.op not in ops or list(ins.operands) != n.value_operands():
            want = " ".join(f"%{v}" for v in n.value_operands())
            raise self.at(s, f"graph.ir computes %{n.result} as {n.op} of {want}")
        blocks = self.blocks.get(n.result, [])
        if s.op == "digital" and (blocks or is_binary_layer(self.g, n)):
            raise self.at(s, f"%{n.result} is mapped on arrays; compute it with mvm")
        if s.op == "mvm":
            want_arrays = sorted({b.array for b, _ in blocks})
            got = [int(a[1:]) for a in ins.arrays]
            if got != want_arrays:
                names = " ".join(f"a{a}" for a in want_arrays) or "none"
                raise self.at(s, f"%{n.result} reads the arrays of its blocks ({names})")
        return n

    def add(self, s: Stmt) -> None:
        """An ``add`` names a layer with more than one row block and that layer's arrays."""
        ins = Instruction.of(s)
        blocks = self.blocks.get(ins.result, [])
        if len({b.rows for b, _ in blocks}) < 2:
            raise self.at(s, f"%{ins.result} has one row block: there are no partial sums to add")
        mvm = Instruction.of(self.computed[ins.result])
        if ins.arrays != mvm.arrays:
            raise self.at(s, f"adds the partial sums of {' '.join(mvm.arrays)}, the mvm's arrays")

    def neurons(self) -> None:
        """One neuron per ``if`` node, with the graph's θ and reset."""
        ifs = {n.result: n for n in self.g.nodes if n.op == "if"}
        seen: set[str] = set()
        for s in self.p.decls:
            if s.op != "neuron":
                continue
            d = NeuronDecl.of(s)
            n = ifs.get(d.layer)
            if n is None:
                raise self.at(s, f"%{d.layer} is not an if node of graph.ir")
            seen.add(d.layer)
            self.threshold(s, d, n)
        for name in ifs:
            if name not in seen:
                raise BsnncError(f"{self.txt}: graph.ir's if node %{name} has no neuron")

    def threshold(self, s: Stmt, d: NeuronDecl, n: Node) -> None:
        """θ = Θ·2^unit equals the graph's θ on every channel; the reset is the graph's."""
        channels = int(n.type.shape[1] or 1) if n.type.rank > 1 else 1
        want = np.broadcast_to(
            np.asarray(channel_param(self.g, n, "theta"), np.float64), (channels,)
        )
        theta = self.vector(d.theta, d.theta_array, channels, d.unit)
        self.equal(s, n, "θ", "Θ·2^unit", theta, want)
        v0 = self.vector(d.init, d.init_array, channels, d.unit)
        self.equal(s, n, "v(0)", "I·2^unit", v0, if_init(n.attrs) * want)
        if d.reset != n.attrs.get("reset"):
            raise self.at(
                s, f"reset {d.reset}, but graph.ir's %{n.result} resets by {n.attrs.get('reset')}"
            )

    def vector(
        self, number: float | None, array: str | None, channels: int, unit: int
    ) -> np.ndarray:
        """A neuron's number or per-channel array, times 2^unit, one value per channel."""
        if array is None:
            big = np.full(channels, float(number or 0.0))
        else:
            big = self.channel_array(array, channels)
        with np.errstate(all="ignore"):
            return big * 2.0**unit

    def equal(
        self, s: Stmt, n: Node, name: str, formula: str, got: np.ndarray, want: np.ndarray
    ) -> None:
        """``name`` = ``formula`` = ``got`` (from the program) equals ``want`` (from the graph)
        on every channel."""
        if not np.array_equal(got, want):
            i = int(np.argmax(got != want))
            raise self.at(
                s,
                f"{name} = {formula} = {float(got[i])!r} on channel {i}, but graph.ir's "
                f"%{n.result} has {name} = {float(want[i])!r}",
            )

    def channel_array(self, name: str, channels: int) -> np.ndarray:
        """The per-channel Θ or I of array ``name``: one finite number per channel."""
        self.used.add(name)
        if name not in self.arrays:
            raise self.member(name, "missing (a neuron of program.txt refers to it)")
        a = self.arrays[name]
        if a.dtype.kind not in "iuf" or a.shape != (channels,):
            raise self.member(
                name, f"is {a.dtype}{list(a.shape)}, expected {channels} integers or floats"
            )
        values = a.astype(np.float64)
        if not np.all(np.isfinite(values)) or (a.dtype.kind in "iu" and np.any(np.abs(a) > 2**53)):
            raise self.member(name, "holds a value that is not finite (or not exact in float64)")
        return values

    def packed_weights(self) -> None:
        """Every binary layer on the arrays has its packed signs, equal to the graph's."""
        for result, s in self.computed.items():
            n = self.nodes[result]
            if s.op != "mvm" or not is_binary_layer(self.g, n):
                continue
            name = f"%{result}.w"
            self.used.add(name)
            if name not in self.arrays:
                raise self.member(name, f"missing (the packed weights of layer %{result})")
            w = self.g.constants[n.const_operands()[0]].array()
            matrix = positive(w)
            k, cols = matrix.shape
            a = self.arrays[name]
            nbytes = -(-k * cols // 8)
            if a.dtype != np.uint8 or a.shape != (nbytes,):
                raise self.member(
                    name,
                    f"is {a.dtype}{list(a.shape)}, expected uint8[{nbytes}] "
                    f"(⌈K·N/8⌉ bytes for K = {k}, N = {cols})",
                )
            if np.array_equal(a, np.packbits(matrix, axis=None)):
                continue  # as the compiler packs them (the slow path below allows pad bits)
            bits = np.unpackbits(a)[: k * cols].reshape(k, cols).astype(bool)
            if not np.array_equal(bits, matrix):
                r, c = (int(i) for i in np.argwhere(bits != matrix)[0])
                raise self.member(
                    name,
                    f"row {r}, column {c} holds {'+1' if bits[r, c] else '-1'}, but the "
                    f"graph's weight @{n.const_operands()[0]} there is "
                    f"{'+1' if matrix[r, c] else '-1'}",
                )

    def unused_arrays(self) -> None:
        """program.npz holds only arrays the program uses."""
        for name in sorted(set(self.arrays) - self.used):
            raise self.member(name, "is not used by program.txt")


def _length(b: BlockDecl, axis: int) -> int:
    """A block's height (axis 0) or width (axis 1)."""
    lo, hi = b.rows if axis == 0 else b.cols
    return hi - lo


def _partition(ranges: list[Range], size: int) -> str | None:
    """None when the sorted ``ranges`` are consecutive and cover 0..size exactly, else what is
    wrong."""
    pos = 0
    for lo, hi in ranges:
        if lo != pos:
            return f"{lo}:{hi} follows {pos}" if lo > pos else f"{lo}:{hi} overlaps 0:{pos}"
        pos = hi
    return None if pos == size else f"they end at {pos}"
