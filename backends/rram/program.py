"""The tile program: a textual instruction format for the RRAM accelerator, looped over
timesteps rather than unrolled.

::

    // bsnnc tile program v1
    program @digits hw "rram-128" {
      input %input                                // the network input (a constant current)
      array a0 tile 0 rows 128 cols 64            // an array, the tile it sits on, rows/cols used
      block %2 a0 rows 0:128 cols 0:64 at 0:0     // layer %2's matrix rows/cols → array, offset
      neuron %4 theta @%4.theta unit -20 reset subtract   // integer thresholds Θ·2^unit
      neuron %6 theta 1169900 unit -18 init 584950 reset subtract   // v(0) = I·2^unit
      once {                                      // time-invariant: once per image, then held
        digital %0 conv2d %input                  // a layer computed next to the arrays / host
      }
      loop timestep {
        fire %1 %0                                // IF update (thresholds from `neuron %1`)
        send %1 hops 1                            // spike packets to the consumers' tiles
        mvm %2 %1 a0 a1 a2                        // crossbar reads; skipped when no row spiked
        add %2 a0 a1 a2                           // partial sums across row blocks (digital)
        merge %9 %6 %7                            // a residual merge: %6 + %7 (digital adder)
        readout %13 %12                           // the final layer accumulates, no threshold
        barrier                                   // end of the timestep
      }
    }

The ``once`` block holds the loop-invariant instructions — those computed only from the
network input and constants (the first layer's currents, the same at every step): they run
once per image and their results are held for all timesteps, as the numpy reference does.

Bit-packed ±1 weights (1 = +1) per binary layer and integer thresholds live beside the text
in ``program.npz``. The text prints deterministically and ``print(parse(text)) == text``.

Bounds: :func:`parse_program` refuses, before lark sees it, a text of more than 16 MiB, more
than 1,000,000 lines, a line longer than 1 MiB, more than 2,000,000 tokens (about 400 MB
while parsing) or brackets nested deeper than 8 (:data:`LIMITS`); every integer must fit in
64 bits and every float be finite; strings take the JSON escapes only. The ranges each
statement's numbers must keep are checked by :func:`bsnnc.backends.rram.emit.check_program`,
the agreement with the graph by :func:`bsnnc.backends.rram.validate.validate_program`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from bsnnc.ir.diagnostics import (
    MAX_INT,
    TextLimits,
    TokenReader,
    check_text_limits,
    expected_terminals,
    format_diagnostic,
    short,
    syntax_position,
)
from bsnnc.ir.errors import IRParseError

HEADER = "// bsnnc tile program v1"
#: what :func:`parse_program` accepts (see the module docstring)
LIMITS = TextLimits("a tile program", 16 * 2**20, 1_000_000, 2**20, 2_000_000, 8)
#: the largest magnitude of an integer argument
Arg = str | int | float


@dataclass(frozen=True)
class Tok:
    """A bare argument: ``kind`` ∈ word (``rows``, ``subtract``), value (``%2``), array
    (``a0``), const (``@w``), range (``0:128``)."""

    kind: str
    text: str

    def __str__(self) -> str:
        return self.text


def word(text: str) -> Tok:
    """A keyword argument."""
    return Tok("word", text)


@dataclass
class Stmt:
    """One instruction: an opcode and its arguments (typed tokens)."""

    op: str
    args: list[Arg | Tok] = field(default_factory=list)
    pos: tuple[int, int] | None = field(default=None, compare=False)

    def text(self) -> str:
        """The statement as one line."""
        return " ".join([self.op, *(_fmt(a) for a in self.args)])


@dataclass
class Program:
    """Declarations (arrays, blocks, neurons), the loop-invariant instructions run once per
    image, and the per-timestep instruction loop."""

    name: str
    hw: str
    decls: list[Stmt] = field(default_factory=list)
    body: list[Stmt] = field(default_factory=list)
    once: list[Stmt] = field(default_factory=list)


def _value(a: Arg | Tok) -> str:
    """``%2`` → ``2``."""
    return str(a)[1:]


def _range(a: Arg | Tok) -> tuple[int, int]:
    """``0:128`` → (0, 128)."""
    lo, hi = str(a).split(":")
    return int(lo), int(hi)


def _int(a: Arg | Tok) -> int:
    if isinstance(a, bool) or not isinstance(a, int):
        raise TypeError(f"expected an integer argument, got {a!r}")
    return a


@dataclass(frozen=True)
class BlockDecl:
    """``block %L aA rows r0:r1 cols c0:c1 at R:C [copy K]``: rows r0..r1 and columns c0..c1
    of layer L's K × N matrix sit on array A at offset (R, C), in copy K of the layer."""

    layer: str
    array: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    at: tuple[int, int]
    copy: int

    @staticmethod
    def of(s: Stmt) -> BlockDecl:
        """The typed view of a checked ``block`` statement."""
        a = s.args
        copy = _int(a[9]) if len(a) > 9 else 0
        return BlockDecl(
            _value(a[0]), int(str(a[1])[1:]), _range(a[3]), _range(a[5]), _range(a[7]), copy
        )


@dataclass(frozen=True)
class NeuronDecl:
    """``neuron %L theta T|@%L.theta [unit U] [init I|@%L.init] reset R``: θ = T·2^U and the
    membranes start at v(0) = I·2^U (0 without ``init``): numbers, or the per-channel values
    of arrays ``theta_array``/``init_array`` in program.npz."""

    layer: str
    theta: float | None
    theta_array: str | None
    unit: int
    reset: str
    init: float | None = 0.0
    init_array: str | None = None

    @staticmethod
    def of(s: Stmt) -> NeuronDecl:
        """The typed view of a checked ``neuron`` statement."""
        a = s.args
        keys = {str(a[i]): a[i + 1] for i in range(1, len(a) - 1, 2)}
        theta, array = _number_or_array(keys["theta"])
        init, init_array = _number_or_array(keys.get("init", 0.0))
        unit = _int(keys["unit"]) if "unit" in keys else 0
        return NeuronDecl(_value(a[0]), theta, array, unit, str(a[-1]), init, init_array)


def _number_or_array(raw: object) -> tuple[float | None, str | None]:
    """(the number, None) or (None, the array ``%L.key``) of an argument ``N`` or ``@L.key``."""
    if isinstance(raw, Tok):
        return None, "%" + str(raw)[1:]
    assert isinstance(raw, int | float)
    return float(raw), None


@dataclass(frozen=True)
class SendStmt:
    """``send %L hops H``: layer L's spike packets travel H hops to its consumers' tiles."""

    layer: str
    hops: int

    @staticmethod
    def of(s: Stmt) -> SendStmt:
        """The typed view of a checked ``send`` statement."""
        return SendStmt(_value(s.args[0]), _int(s.args[2]))


@dataclass(frozen=True)
class Instruction:
    """``mvm|fire|readout|digital|merge|add %R …``: the value it computes (or, for ``add``, the
    layer whose partial sums it adds), its value operands and the arrays it reads."""

    op: str
    result: str
    operands: tuple[str, ...]
    arrays: tuple[str, ...]
    #: the IR op of a ``digital`` instruction
    ir_op: str | None = None

    @staticmethod
    def of(s: Stmt) -> Instruction:
        """The typed view of a checked instruction."""
        values = [_value(a) for a in s.args if isinstance(a, Tok) and a.kind == "value"]
        arrays = tuple(str(a) for a in s.args if isinstance(a, Tok) and a.kind == "array")
        ir_op = str(s.args[1]) if s.op == "digital" else None
        return Instruction(s.op, values[0], tuple(values[1:]), arrays, ir_op)


def _fmt(a: Arg | Tok) -> str:
    if isinstance(a, Tok):
        return a.text
    if isinstance(a, float):
        return repr(a)
    if isinstance(a, int):
        return str(a)
    return json.dumps(a)


def print_program(p: Program) -> str:
    """The program as text (ends with a newline)."""
    lines = [HEADER, f"program @{p.name} hw {json.dumps(p.hw)} {{"]
    lines += [f"  {s.text()}" for s in p.decls]
    if p.once:
        lines.append("  once {")
        lines += [f"    {s.text()}" for s in p.once]
        lines.append("  }")
    lines.append("  loop timestep {")
    lines += [f"    {s.text()}" for s in p.body]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


_READABLE = {
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "OPCODE": "an instruction",
    "VALUE": "a value like %2",
    "ARRAY": "an array like a0",
    "CONST": "a constant like @w",
    "RANGE": "a range like 0:128",
    "$END": "end of input",
}


@cache
def _lark() -> Lark:
    text = resources.files("bsnnc.backends.rram").joinpath("program.lark").read_text("utf-8")
    return Lark(text, parser="lalr", propagate_positions=True)


def parse_program(text: str, source: str = "<program>") -> Program:
    """Parse tile-program text; syntax errors, text beyond :data:`LIMITS`, integers beyond 64
    bits, non-finite floats and bad string escapes name ``source:line:column``.

    Text in the printer's canonical form (one statement per line, single spaces, whole-line
    comments) is read line by line (:func:`_parse_canonical`, ~10× faster than lark on an
    ImageNet VGG's program); anything else, including every error, goes through the lark
    grammar, which defines the language — the tests check that both agree."""
    check_text_limits(text, source, LIMITS)
    return _parse_canonical(text, source) or _parse_with_grammar(text, source)


def _parse_with_grammar(text: str, source: str) -> Program:
    """:func:`parse_program` by the lark grammar (any layout; every error)."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        line, col = syntax_position(e, text)
        expected = sorted({_READABLE.get(t, t.lower()) for t in expected_terminals(e)})
        want = f"; expected {' or '.join(expected)}" if expected else ""
        raise IRParseError(
            format_diagnostic(source, text, line, col, f"syntax error{want}")
        ) from None
    name, hw, *rest = tree.children
    assert isinstance(name, Token) and isinstance(hw, Token)
    args = _Args(source, text)
    p = Program(str(name)[1:], args.string(hw))
    for child in rest:
        assert isinstance(child, Tree)
        if child.data == "stmt":
            p.decls.append(args.stmt(child))
        elif child.data == "once":
            p.once = [args.stmt(s) for s in child.children if isinstance(s, Tree)]
        else:
            p.body = [args.stmt(s) for s in child.children if isinstance(s, Tree)]
    return p


class _Args(TokenReader):
    """Statements and their arguments, with errors at ``source:line:column`` of ``text``."""

    def stmt(self, t: Tree[Token]) -> Stmt:
        """One statement."""
        op, *args = t.children
        assert isinstance(op, Token)
        return Stmt(
            str(op),
            [self.arg(a) for a in args if isinstance(a, Tree)],
            (t.meta.line, t.meta.column),
        )

    def arg(self, t: Tree[Token]) -> Arg | Tok:
        """One argument: integers within 64 bits, finite floats, checked strings; ranges
        (``lo:hi``) and array indices (``aN``) within 64 bits."""
        tok = t.children[0]
        assert isinstance(tok, Token)
        text = str(tok)
        if t.data == "int":
            return self.integer(tok, text)
        if t.data == "float":
            v = float(text)
            if not math.isfinite(v):
                raise self.err(tok, f"number {short(text)} is out of range (not a finite float)")
            return v
        if t.data == "string":
            return self.string(tok)
        if t.data == "range":
            for end in text.split(":"):
                self.integer(tok, end)
        if t.data == "array":
            self.integer(tok, text[1:])
        return Tok(str(t.data), text)

    def integer(self, tok: Token, text: str) -> int:
        """An integer whose magnitude is at most :data:`MAX_INT`."""
        return self.int64(tok, text, "integer")


#: one argument of a canonical line, by kind (the grammar's terminals; where two match, the
#: one lark's priorities pick comes first: range before int, array before word)
_ARG = re.compile(
    r"""(?P<value>%[A-Za-z0-9_][A-Za-z0-9_.\-]*)
    |(?P<const>@[A-Za-z0-9_][A-Za-z0-9_.\-]*)
    |(?P<range>[0-9]+:[0-9]+)
    |(?P<array>a[0-9]+)
    |(?P<float>-?(?:[0-9]+\.[0-9]*(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+))
    |(?P<int>-?[0-9]+)
    |(?P<string>"[^"\\\x00-\x20\ud800-\udfff]*")
    |(?P<word>[a-z_][a-z0-9_]*)""",
    re.VERBOSE,
)
#: the statements' opcodes (the grammar's OPCODE terminal)
OPCODES = ("input", "array", "block", "neuron", "digital", "mvm", "add", "merge", "fire",
           "send", "readout", "barrier")  # fmt: skip
#: words the grammar reads as keywords: never a canonical argument
_KEYWORDS = (*OPCODES, "program", "hw", "once", "loop", "timestep")
_ARRAY = re.compile(r"a[0-9]")


def _canonical_arg(tok: str) -> Arg | Tok | None:
    """One argument token's value, or None when lark might read it otherwise or reject it."""
    if 1 < len(tok) <= 10 and tok[0] == "a" and tok[1:].isascii() and tok[1:].isdigit():
        return Tok("array", tok)  # the common case, as the expression below reads it
    m = _ARG.fullmatch(tok)
    kind = m.lastgroup if m else None
    if kind is None or (kind == "word" and (tok.startswith(_KEYWORDS) or _ARRAY.match(tok))):
        # lark's lexer takes the highest-priority terminal matching a prefix: a keyword, or an
        # array like a2 in a2a3, would split the word
        return None
    if kind in ("int", "range", "array"):
        digits = tok[1:] if kind == "array" else tok
        if any(len(d.lstrip("-")) > 19 or abs(int(d)) > MAX_INT for d in digits.split(":")):
            return None
        if kind == "int":
            return int(tok)
    if kind == "float":
        v = float(tok)
        return v if math.isfinite(v) else None
    if kind == "string":
        return tok[1:-1]  # no escapes, no control characters
    return Tok(kind, tok)


def _parse_canonical(text: str, source: str) -> Program | None:
    """The program, when ``text`` is in canonical form; else None (the caller then parses it
    with the grammar, which also produces every error)."""
    program: Program | None = None
    #: each distinct argument token read once (arrays, ranges and words repeat; Tok is frozen)
    memo: dict[str, Arg | Tok | None] = {}
    # where statements go: decls until ``once {`` or ``loop timestep {``
    section: list[Stmt] | None = None
    state = "start"
    for number, line in enumerate(text.split("\n"), 1):
        body = line.lstrip(" ")
        if not body or body.startswith("//"):
            continue
        toks = body.split(" ")
        if "" in toks or "\t" in body or "\r" in body or "//" in body:
            return None
        if state == "start":
            if len(toks) != 5 or toks[0] != "program" or toks[2] != "hw" or toks[4] != "{":
                return None
            name, hw = _canonical_arg(toks[1]), _canonical_arg(toks[3])
            if not (isinstance(name, Tok) and name.kind == "const" and isinstance(hw, str)):
                return None
            program, state = Program(name.text[1:], hw), "decls"
            section = program.decls
            continue
        assert program is not None
        if toks == ["once", "{"] and state == "decls":
            state, section = "once", program.once
        elif toks == ["loop", "timestep", "{"] and state in ("decls", "after-once"):
            state, section = "loop", program.body
        elif toks == ["}"]:
            state = {"once": "after-once", "loop": "after-loop", "after-loop": "end"}.get(
                state, "bad"
            )
            section = None
        elif section is not None and toks[0] in OPCODES:
            args = [
                memo[t] if t in memo else memo.setdefault(t, _canonical_arg(t)) for t in toks[1:]
            ]
            if any(a is None for a in args):
                return None
            column = len(line) - len(body) + 1
            section.append(Stmt(toks[0], [a for a in args if a is not None], (number, column)))
        else:
            return None
        if state == "bad":
            return None
    return program if state == "end" else None
