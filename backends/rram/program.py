"""The tile program: a textual instruction format for the RRAM accelerator, looped over
timesteps rather than unrolled.

::

    // bsnnc tile program v1
    program @digits hw "rram-128" {
      input %input                                // the network input (a constant current)
      array a0 tile 0 rows 128 cols 64            // an array, the tile it sits on, rows/cols used
      block %2 a0 rows 0:128 cols 0:64 at 0:0     // layer %2's matrix rows/cols → array, offset
      neuron %4 theta @%4.theta unit -20 reset subtract   // integer thresholds Θ·2^unit
      once {                                      // time-invariant: once per image, then held
        digital %0 conv2d %input                  // a layer computed next to the arrays / host
      }
      loop timestep {
        fire %1 %0                                // IF update (thresholds from `neuron %1`)
        send %1 hops 1                            // spike packets to the consumers' tiles
        mvm %2 %1 a0 a1 a2                        // crossbar reads; skipped when no row spiked
        add %2 a0 a1 a2                           // partial sums across row blocks (digital)
        readout %13 %12                           // the final layer accumulates, no threshold
        barrier                                   // end of the timestep
      }
    }

The ``once`` block holds the loop-invariant instructions — those computed only from the
network input and constants (the first layer's currents, the same at every step): they run
once per image and their results are held for all timesteps, as the numpy reference does.

Bit-packed ±1 weights (1 = +1) per binary layer and integer thresholds live beside the text
in ``program.npz``. The text prints deterministically and ``print(parse(text)) == text``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from bsnnc.ir.diagnostics import expected_terminals, format_diagnostic, syntax_position
from bsnnc.ir.errors import IRParseError

HEADER = "// bsnnc tile program v1"
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
    """Parse tile-program text; syntax errors name ``source:line:column``."""
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
    p = Program(str(name)[1:], json.loads(str(hw)))
    for child in rest:
        assert isinstance(child, Tree)
        if child.data == "stmt":
            p.decls.append(_stmt(child))
        elif child.data == "once":
            p.once = [_stmt(s) for s in child.children if isinstance(s, Tree)]
        else:
            p.body = [_stmt(s) for s in child.children if isinstance(s, Tree)]
    return p


def _stmt(t: Tree[Token]) -> Stmt:
    op, *args = t.children
    assert isinstance(op, Token)
    return Stmt(
        str(op), [_arg(a) for a in args if isinstance(a, Tree)], (t.meta.line, t.meta.column)
    )


def _arg(t: Tree[Token]) -> Arg | Tok:
    tok = str(t.children[0])
    if t.data == "int":
        return int(tok)
    if t.data == "float":
        return float(tok)
    if t.data == "string":
        return str(json.loads(tok))
    return Tok(str(t.data), tok)
