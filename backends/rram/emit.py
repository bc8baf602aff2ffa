"""Emitting the tile program (and its bit-packed weights and integer thresholds) from a
spiking graph and its crossbar mapping, and checking a parsed program.

Integer thresholds: after fold-threshold-normalization every θ is dyadic with 20 significant
bits, θ = Θ·2^unit with Θ an integer, ``unit = ⌊log2 min θ⌋ − 20`` per layer. A threshold that
is not (a hand-edited IR) is kept as a float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bsnnc.backends.rram.mapping import Mapping
from bsnnc.backends.rram.placement import mesh_position
from bsnnc.backends.rram.program import Program, Stmt, Tok, word
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph, Node, channel_param
from bsnnc.ir.ops import INIT_BITS, Trait, has_trait, if_init, threshold_unit


def _v(name: str) -> Tok:
    return Tok("value", f"%{name}")


def _a(i: int) -> Tok:
    return Tok("array", f"a{i}")


def _r(lo: int, hi: int) -> Tok:
    return Tok("range", f"{lo}:{hi}")


def integer_thresholds(theta: np.ndarray, init: float = 0.0) -> tuple[np.ndarray, int] | None:
    """(Θ, unit) with θ = Θ·2^unit exactly and the initial membrane init·Θ an integer too
    (init = m/2^INIT_BITS: the unit drops by the fewest bits, at most INIT_BITS, that make
    m·Θ/2^INIT_BITS whole), or None."""
    unit = threshold_unit(theta)
    big = np.asarray(theta, np.float64) / 2.0**unit
    if not (np.all(big == np.round(big)) and np.max(big) < 2**53):
        return None
    for shift in range(INIT_BITS + 1):
        scaled = big * 2.0**shift
        v0 = scaled * init
        if np.max(scaled) >= 2**53:
            return None
        if np.all(v0 == np.round(v0)):
            return scaled.astype(np.int64), unit - shift
    return None


def pack_signs(g: Graph, n: Node) -> np.ndarray:
    """The layer's K × N ±1 matrix, bit-packed (1 = +1), rows in :func:`unrolled` order."""
    return np.packbits(positive(g.constants[n.const_operands()[0]].array()), axis=None)


def unrolled(w: np.ndarray) -> np.ndarray:
    """Weights [N, Cin, kH, kW] (or [N, K]) as the K × N crossbar matrix. Conv rows are ordered
    channels-fastest: row k = (ky·kW + kx)·Cin + c, so that the rows one input pixel drives are
    contiguous and im2col copies whole channel runs."""
    if w.ndim == 4:
        w = w.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


def positive(w: np.ndarray, block: int = 64) -> np.ndarray:
    """``unrolled(w) > 0`` (the K × N matrix of +1 signs), transposed ``block`` rows of K at
    a time: a cache-friendly copy, 2.4× faster than the whole-matrix transpose on a 100 M
    weight layer."""
    rows = (w.transpose(0, 2, 3, 1) if w.ndim == 4 else w).reshape(w.shape[0], -1)
    out = np.empty((rows.shape[1], rows.shape[0]), bool)
    for k in range(0, rows.shape[1], block):
        out[k : k + block] = (rows[:, k : k + block] > 0).T
    return out


class _Emitter:
    def __init__(self, g: Graph, m: Mapping) -> None:
        self.g, self.m = g, m
        self.p = Program(g.name, m.hw.name)
        self.arrays: dict[str, np.ndarray] = {}
        self.layer_of = {lm.node: lm for lm in m.layers}
        self.tile = {b.array: b.array // m.hw.arrays_per_tile for b in m.blocks}
        self.copies = {lm.node: lm.copies for lm in m.layers}

    def declarations(self) -> None:
        for n in self.g.inputs():
            self.p.decls.append(Stmt("input", [_v(n.result)]))
        used: dict[int, tuple[int, int]] = {}
        for b in self.m.blocks:
            r, c = used.get(b.array, (0, 0))
            used[b.array] = (max(r, b.row_offset + b.height), max(c, b.col_offset + b.width))
        for a, (r, c) in sorted(used.items()):
            self.p.decls.append(
                Stmt("array", [_a(a), word("tile"), self.tile[a], word("rows"), r, word("cols"), c])
            )
        for b in self.m.blocks:
            args = [
                _v(b.layer),
                _a(b.array),
                word("rows"),
                _r(b.r0, b.r1),
                word("cols"),
                _r(b.c0, b.c1),
            ]
            copy: list[Any] = [word("copy"), b.copy] if self.copies.get(b.layer, 1) > 1 else []
            self.p.decls.append(
                Stmt("block", [*args, word("at"), _r(b.row_offset, b.col_offset), *copy])
            )

    def neuron(self, n: Node) -> None:
        channels = int(n.type.shape[1] or 1)
        theta = np.broadcast_to(
            np.asarray(channel_param(self.g, n, "theta"), np.float64), (channels,)
        )
        init = if_init(n.attrs)
        found = integer_thresholds(theta, init)
        args: list[Any] = [_v(n.result), word("theta")]
        if found is None:
            args += [self._vector(n, "theta", theta)]
            if init:
                args += [word("init"), self._vector(n, "init", init * theta)]
        else:
            big, unit = found
            args += [self._vector(n, "theta", big), word("unit"), unit]
            if init:
                v0 = big * init  # an integer: integer_thresholds made it one
                args += [word("init"), self._vector(n, "init", v0.astype(np.int64))]
        self.p.decls.append(Stmt("neuron", [*args, word("reset"), word(str(n.attrs["reset"]))]))

    def _vector(self, n: Node, key: str, v: np.ndarray) -> Any:
        """One number when every channel has the same, else a per-channel array of program.npz."""
        if np.all(v == v[0]):
            return int(v[0]) if v.dtype.kind == "i" else float(v[0])
        return self._store(n, key, v)

    def _store(self, n: Node, key: str, data: np.ndarray) -> Tok:
        name = f"%{n.result}.{key}"
        self.arrays[name] = data
        return Tok("const", "@" + name[1:])

    def instruction(self, n: Node, out: list[Stmt]) -> None:
        """Appends ``n``'s instructions to ``out`` (the ``once`` block or the loop)."""
        ins = [_v(v) for v in n.value_operands()]
        lm = self.layer_of.get(n.result)
        if has_trait(n.op, Trait.WEIGHTED) and lm is not None and lm.arrays:
            arrays = [_a(a) for a in lm.arrays]
            out.append(Stmt("mvm", [_v(n.result), *ins, *arrays]))
            if lm.row_blocks > 1:
                out.append(Stmt("add", [_v(n.result), *arrays]))
            if lm.kind == "binary":
                self.arrays[f"%{n.result}.w"] = pack_signs(self.g, n)
        elif n.op == "if":
            self.neuron(n)
            out.append(Stmt("fire", [_v(n.result), *ins]))
            out.append(Stmt("send", [_v(n.result), word("hops"), self.hops(n)]))
        elif n.op == "readout":
            out.append(Stmt("readout", [_v(n.result), *ins]))
        elif n.op == "add":
            out.append(Stmt("merge", [_v(n.result), *ins]))
        else:
            out.append(Stmt("digital", [_v(n.result), word(n.op), *ins]))

    def tiles_of(self, node: str) -> list[int]:
        lm = self.layer_of.get(node)
        return sorted({self.tile[a] for a in lm.arrays}) if lm is not None else []

    def hops(self, n: Node) -> int:
        """Mesh distance from the tile where the neuron's input is summed to the tiles that
        consume its spikes (0 when either side is digital)."""
        width = math.ceil(math.sqrt(max(1, math.ceil(self.m.n_arrays / self.m.hw.arrays_per_tile))))
        src = self._producer_tiles(n)
        dst = [t for u in self._consumers(n.result) for t in self.tiles_of(u)]
        if not src or not dst:
            return 0
        s = mesh_position(src[0], width)
        return max(
            abs(s[0] - mesh_position(t, width)[0]) + abs(s[1] - mesh_position(t, width)[1])
            for t in dst
        )

    def _producer_tiles(self, n: Node) -> list[int]:
        nodes = self.g.node_map()
        cur = nodes[n.value_operands()[0]]
        while not (has_trait(cur.op, Trait.WEIGHTED) or cur.op in ("input", "if")):
            cur = nodes[cur.value_operands()[0]]
        return self.tiles_of(cur.result)

    def _consumers(self, value: str) -> list[str]:
        out: list[str] = []
        for u in self.g.users().get(value, []):
            through = has_trait(u.op, Trait.SPIKE_PASS_THROUGH)
            out += self._consumers(u.result) if through else [u.result]
        return out


def emit_program(g: Graph, m: Mapping) -> tuple[Program, dict[str, np.ndarray]]:
    """The tile program of ``g`` on mapping ``m``, and its arrays (packed weights, thresholds)."""
    e = _Emitter(g, m)
    e.declarations()
    # loop-invariant code motion: what depends only on the input and constants runs once
    invariant = {n.result for n in g.inputs()}
    for n in g.nodes:
        if n.op == "input":
            continue
        hoist = n.op not in _STATEFUL and all(v in invariant for v in n.value_operands())
        if hoist:
            invariant.add(n.result)
        e.instruction(n, e.p.once if hoist else e.p.body)
    e.p.body.append(Stmt("barrier"))
    return e.p, e.arrays


#: operations whose result changes from step to step even on a constant input
_STATEFUL = ("if", "readout")
#: what the ``once`` block may hold (no neuron state, no spikes to send)
_ONCE_OPS = ("digital", "mvm", "add", "merge")


_BLOCK = ("value", "array", "=rows", "range", "=cols", "range", "=at", "range")
#: the argument forms of each statement: per argument a kind (value, array, const, range, int,
#: num, word), a fixed word (``=tile``) or a choice (``theta``: int, num or const; ``reset``);
#: a trailing ``+`` repeats the last kind one or more times, ``*`` zero or more.
_FORMS: dict[str, list[tuple[str, ...]]] = {
    "input": [("value",)],
    "array": [("array", "=tile", "int", "=rows", "int", "=cols", "int")],
    "block": [_BLOCK, (*_BLOCK, "=copy", "int")],
    "neuron": [
        ("value", "=theta", "theta", "=unit", "int", "=reset", "reset"),
        ("value", "=theta", "theta", "=reset", "reset"),
        ("value", "=theta", "theta", "=unit", "int", "=init", "theta", "=reset", "reset"),
        ("value", "=theta", "theta", "=init", "theta", "=reset", "reset"),
    ],
    "fire": [("value", "value")],
    "readout": [("value", "value")],
    "mvm": [("value", "value", "array", "+")],
    "add": [("value", "array", "*")],
    "send": [("value", "=hops", "int")],
    "digital": [("value", "word", "value", "+")],
    "merge": [("value", "value", "value")],
    "barrier": [()],
}


def _fits(want: str, a: object) -> bool:
    if isinstance(a, Tok):
        if want.startswith("="):
            return a.kind == "word" and a.text == want[1:]
        if want == "reset":
            return a.text in ("subtract", "zero")
        return a.kind == want or (want == "theta" and a.kind == "const")
    if isinstance(a, bool) or not isinstance(a, int | float):
        return False
    return want in ("int", "theta") if isinstance(a, int) else want in ("num", "theta")


def _matches(form: tuple[str, ...], args: list[object]) -> bool:
    """Whether ``args`` follow one form (see ``_FORMS``)."""
    if form and form[-1] in ("+", "*"):
        rep, fixed = form[-2], form[:-2]
        least = len(fixed) + (form[-1] == "+")
        rest = args[len(fixed) :]
        return (
            len(args) >= least
            and _matches(fixed, args[: len(fixed)])
            and all(_fits(rep, a) for a in rest)
        )
    return len(args) == len(form) and all(_fits(w, a) for w, a in zip(form, args, strict=True))


#: the largest array index, tile, row, column or offset a program may name
MAX_GEOMETRY = 2**20
#: the largest number of NoC hops of a ``send``
MAX_HOPS = 10**6
#: the exponents of 2 a threshold's ``unit`` may take (2^unit is a finite, nonzero float64)
UNIT_RANGE = (-1074, 1023)
#: integer thresholds Θ are exact in float64 up to this
MAX_THETA = 2**53


def check_program(p: Program, source: str = "<program>") -> None:
    """Semantic checks: every statement's arguments follow its form and keep their ranges
    (:func:`_check_numbers`), arrays are declared once and before use, a layer's neuron is
    declared once, values are defined before use, the ``once`` block holds no stateful
    instruction, the loop ends with a barrier."""
    arrays: set[str] = set()
    defined: set[str] = set()
    neurons: set[str] = set()

    def fail(s: Stmt, msg: str) -> BsnncError:
        at = f"{s.pos[0]}:{s.pos[1]}: " if s.pos else ""
        return BsnncError(f"{source}:{at}{s.op}: {msg}")

    for s in [*p.decls, *p.once, *p.body]:
        if not any(_matches(f, list(s.args)) for f in _FORMS[s.op]):
            form = " ".join(w.lstrip("=") for w in _FORMS[s.op][0])
            raise fail(s, f"malformed arguments; expected: {s.op} {form}")
        _check_numbers(s, fail)
    for s in p.decls:
        if s.op == "input":
            defined.add(str(s.args[0]))
        elif s.op == "array":
            if str(s.args[0]) in arrays:
                raise fail(s, f"array {s.args[0]} is declared twice")
            arrays.add(str(s.args[0]))
        elif s.op == "neuron":
            if str(s.args[0]) in neurons:
                raise fail(s, f"the neuron of {s.args[0]} is declared twice")
            neurons.add(str(s.args[0]))
        elif s.op == "block" and str(s.args[1]) not in arrays:
            raise fail(s, f"array {s.args[1]} is not declared")
        elif s.op not in ("array", "block", "neuron"):
            raise fail(s, "only input, array, block and neuron declarations precede the loop")
    for s in p.once:
        if s.op not in _ONCE_OPS:
            raise fail(s, f"only {', '.join(_ONCE_OPS)} may run once (the rest runs every step)")
    producer: dict[str, str] = dict.fromkeys(defined, "input")
    for block in (p.once, p.body):
        here: set[str] = set()  # values defined in this block (add/send refer to these)
        for s in block:
            _check_instruction(s, arrays, producer, here, fail)
    if not p.body or p.body[-1].op != "barrier":
        raise BsnncError(f"{source}: the timestep loop must end with a barrier")


def _in(value: int, lo: int, hi: int) -> bool:
    return lo <= value <= hi


def _check_numbers(s: Stmt, fail: Callable[[Stmt, str], BsnncError]) -> None:
    """The numbers of a well-formed statement are in range: array indices, tiles, offsets and
    copies 0..2^20; array rows and columns 1..2^20; block rows and columns increasing ranges
    ``lo:hi`` with lo < hi ≤ 2^20; ``unit`` in -1074..1023; an integer θ in 1..2^53, a float
    θ finite and > 0; an integer ``init`` in 0..2^53, a float one finite and ≥ 0; ``hops`` in
    0..10^6."""
    g = MAX_GEOMETRY
    for t in s.args:
        if isinstance(t, Tok) and t.kind == "array" and not _in(int(t.text[1:]), 0, g):
            raise fail(s, f"array index {t.text[:12]} is out of range (a0 to a{g})")
    a = s.args
    if s.op == "array":
        for i, what, lo in ((2, "tile", 0), (4, "rows", 1), (6, "cols", 1)):
            if not _in(int(str(a[i])), lo, g):
                raise fail(s, f"{what} {a[i]} is out of range ({lo} to {g})")
    elif s.op == "block":
        for i, what in ((3, "rows"), (5, "cols")):
            lo, hi = (int(x) for x in str(a[i]).split(":"))
            if not lo < hi <= g:
                raise fail(s, f"{what} {a[i]}: a range lo:hi needs 0 ≤ lo < hi ≤ {g}")
        r, c = (int(x) for x in str(a[7]).split(":"))
        if not (_in(r, 0, g) and _in(c, 0, g)):
            raise fail(s, f"offset at {a[7]} is out of range (0 to {g})")
        if len(a) > 9 and not _in(int(str(a[9])), 0, g):
            raise fail(s, f"copy {a[9]} is out of range (0 to {g})")
    elif s.op == "neuron":
        theta = a[2]
        if isinstance(theta, int) and not _in(theta, 1, MAX_THETA):
            raise fail(s, f"theta {theta} is out of range (1 to 2^53)")
        if isinstance(theta, float) and not (math.isfinite(theta) and theta > 0):
            raise fail(s, f"theta {theta} must be finite and > 0")
        if str(a[3]) == "unit" and not _in(int(str(a[4])), *UNIT_RANGE):
            raise fail(s, f"unit {a[4]} is out of range ({UNIT_RANGE[0]} to {UNIT_RANGE[1]})")
        init = a[a.index(Tok("word", "init")) + 1] if Tok("word", "init") in a else 0
        if isinstance(init, int) and not _in(init, 0, MAX_THETA):
            raise fail(s, f"init {init} is out of range (0 to 2^53)")
        if isinstance(init, float) and not (math.isfinite(init) and init >= 0):
            raise fail(s, f"init {init} must be finite and ≥ 0")
    elif s.op == "send" and not _in(int(str(a[2])), 0, MAX_HOPS):
        raise fail(s, f"hops {a[2]} is out of range (0 to {MAX_HOPS:,})")


def _check_instruction(
    s: Stmt,
    arrays: set[str],
    producer: dict[str, str],
    here: set[str],
    fail: Callable[[Stmt, str], BsnncError],
) -> None:
    """One instruction of ``once`` or the loop: declared arrays, values defined once and
    before use; ``add`` follows its layer's ``mvm`` and ``send`` its ``fire`` in the same
    block."""
    if s.op in ("input", "array", "block", "neuron"):
        raise fail(s, "declarations belong before the loop")
    toks = [a for a in s.args if isinstance(a, Tok)]
    for t in toks:
        if t.kind == "array" and str(t) not in arrays:
            raise fail(s, f"array {t} is not declared")
    values = [str(t) for t in toks if t.kind == "value"]
    if s.op in ("mvm", "fire", "readout", "digital", "merge"):
        for v in values[1:]:
            if v not in producer:
                raise fail(s, f"{v} is used before it is defined")
        if values[0] in producer:
            raise fail(s, f"{values[0]} is defined twice")
        producer[values[0]] = s.op
        here.add(values[0])
    elif s.op in ("add", "send"):
        want = "mvm" if s.op == "add" else "fire"
        if values[0] not in here or producer[values[0]] != want:
            raise fail(s, f"{values[0]} is not the result of a {want} earlier in this block")


def load_program(path: str, members: dict[str, bytes]) -> Program:
    """Parse an artifact's ``program.txt``; errors name ``path[program.txt]``. Its callers go
    on to :func:`bsnnc.backends.rram.validate.validate_program`, which checks it (once)."""
    from bsnnc.backends.rram.program import parse_program

    source = f"{path}[program.txt]"
    try:
        text = members["program.txt"].decode("utf-8")
    except KeyError:
        raise BsnncError(f"{path}: member program.txt is missing (recompile the model)") from None
    except UnicodeDecodeError as e:
        raise BsnncError(f"{source}: not text ({e})") from None
    return parse_program(text, source)
