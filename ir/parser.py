"""Parse IR text (grammar: ``grammar.lark``) back into a :class:`Graph`.

Syntax errors and semantic errors found while building the graph (unknown op, unknown
attribute, wrong attribute kind, a malformed inline constant) are reported as
``source:line:column: message`` with the offending line and a caret
(:func:`bsnnc.ir.diagnostics.format_diagnostic`). Type and shape checks are left to
:mod:`bsnnc.ir.verifier`, which also names the line of each node.

Constants are declared either with a content hash (``const @w : bipolar[64,32,3,3]
#0123456789abcdef``; the data is attached later from the .npz beside the text, see
:meth:`Graph.attach_weights`) or, when small, with their data inline::

    const @w0 : bipolar[2,3] = [[1,-1,1],[-1,1,1]]   // nested lists that mirror the shape
    const @w0 : bipolar[2,3] = [1,-1,1,-1,1,1]       // or one flat list, row-major
    const @s : f32[3] = [0.5,-2.0,inf]

The literal must hold exactly as many elements as the declared (static) shape, at most
:data:`MAX_INLINE_ELEMENTS`; ``f32`` takes floats or ints (``nan``, ``inf``, ``-inf`` allowed,
finite values must fit in float32), ``bipolar`` takes ``1``/``-1``, ``spike`` ``0``/``1`` and
``i32`` ints in the int32 range. An inline constant comes back with its data and the content
hash of that data.

Bounds. Before lark sees the text (lark keeps a few hundred bytes per token of a valid prefix,
and the builder recurses over nested lists), :func:`parse` refuses, at ``source:line:column``
and naming the limit: more than :data:`MAX_CHARS` characters (8 MiB), more than
:data:`MAX_LINES` lines (100,000), a line longer than :data:`MAX_LINE_CHARS` (2 MiB: an inline
constant of 65,536 elements is at most about 1 MiB), more than :data:`MAX_TOKENS` tokens
(1,000,000; about 215 MB while parsing), or brackets nested deeper than :data:`MAX_DEPTH` (32;
an inline constant of rank r nests r + 1 deep). Integers (dimensions, attributes) must fit in
64 bits, dimensions in 0..2^31−1; strings (``loc("…")``, string attributes) take the JSON
escapes only (:func:`bsnnc.ir.diagnostics.decode_string`).
"""

from __future__ import annotations

import math
from functools import cache
from importlib import resources

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from bsnnc.ir.diagnostics import (
    TextLimits,
    TokenReader,
    check_text_limits,
    expected_terminals,
    format_diagnostic,
    short,
    syntax_position,
)
from bsnnc.ir.errors import IRParseError
from bsnnc.ir.graph import AttrValue, Constant, Graph, Node, digest_array
from bsnnc.ir.ops import OPS, AttrSpec, coerce_attr, normalize_attrs
from bsnnc.ir.types import STORAGE_DTYPE, Dim, Kind, TensorType

#: the largest constant (in elements) that may be written inline in IR text.
MAX_INLINE_ELEMENTS = 65_536
#: the most characters IR text may have
MAX_CHARS = 8 * 2**20
#: the most lines IR text may have
MAX_LINES = 100_000
#: the longest line IR text may have, in characters
MAX_LINE_CHARS = 2 * 2**20
#: the most tokens IR text may have
MAX_TOKENS = 1_000_000
#: the deepest nesting of brackets (``[``, ``(``, ``{``) IR text may have
MAX_DEPTH = 32
#: the largest dimension of a type
MAX_DIM = 2**31 - 1
#: the largest magnitude of an integer attribute

LIMITS = TextLimits("IR text", MAX_CHARS, MAX_LINES, MAX_LINE_CHARS, MAX_TOKENS, MAX_DEPTH)

_READABLE = {
    "VALUE_NAME": "a value name like %0",
    "CONST_NAME": "a constant name like @w0",
    "OP_NAME": "an op name",
    "KEY": "an attribute name",
    "KIND": "an element kind (f32, spike, bipolar, i32)",
    "DIGEST": "a content hash like #0123456789abcdef",
    "INT": "an integer",
    "FLOAT": "a float",
    "STRING": 'a "string"',
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "QMARK": "'?'",
    "RETURN": "'return'",
    "CONST": "'const'",
    "GRAPH": "'graph'",
    "LOC": "'loc'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "$END": "end of input",
}


@cache
def _lark() -> Lark:
    text = resources.files("bsnnc.ir").joinpath("grammar.lark").read_text(encoding="utf-8")
    return Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _error(source: str, text: str, line: int, column: int, msg: str) -> IRParseError:
    return IRParseError(format_diagnostic(source, text, line, column, msg))


def _syntax_error(source: str, text: str, e: UnexpectedInput) -> IRParseError:
    if isinstance(e, UnexpectedToken):
        got = "end of input" if e.token.type == "$END" else repr(str(e.token))
    elif isinstance(e, UnexpectedCharacters):
        got = repr(e.char)
    elif isinstance(e, UnexpectedEOF):
        got = "end of input"
    else:  # pragma: no cover - lark has no other subclasses
        got = "input"
    expected = sorted({_READABLE.get(t, t) for t in expected_terminals(e)})
    want = f"; expected {' or '.join(expected)}" if expected else ""
    line, col = syntax_position(e, text)
    return _error(source, text, line, col, f"unexpected {got}{want}")


def parse(text: str, source: str = "<ir>") -> Graph:
    """Parse IR text. Constants declared with a hash come back without data (see
    :meth:`Graph.attach_weights`); inline constants come back with theirs. Text beyond the
    bounds of the module docstring is refused before it is parsed."""
    check_text_limits(text, source, LIMITS)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(source, text, e) from None
    root = tree.children[0]
    assert isinstance(root, Tree)
    return _Builder(source, text).graph(root)


class _Builder(TokenReader):
    def err(self, tok: Token | Tree[Token], msg: str) -> IRParseError:
        """An error at a token or at the start of a tree."""
        if isinstance(tok, Token):
            return super().err(tok, msg)
        return self.err_at(int(tok.meta.line or 1), int(tok.meta.column or 1), msg)

    def graph(self, t: Tree[Token]) -> Graph:
        name_tok = t.children[0]
        assert isinstance(name_tok, Token)
        g = Graph(name=str(name_tok)[1:])
        for child in t.children[1:]:
            assert isinstance(child, Tree)
            if child.data == "const":
                c = self.const(child)
                if c.name in g.constants:
                    raise self.err(child, f"constant @{c.name} declared twice")
                g.constants[c.name] = c
            elif child.data == "node":
                g.nodes.append(self.node(child))
            else:
                g.outputs = [str(tok)[1:] for tok in child.children]
        return g

    def const(self, t: Tree[Token]) -> Constant:
        name, ty, body = t.children
        assert isinstance(name, Token) and isinstance(ty, Tree)
        ctype = self.type(ty)
        if isinstance(body, Token):
            return Constant(str(name)[1:], ctype, str(body)[1:])
        assert isinstance(body, Tree)
        data = self.inline_data(str(name), ctype, body)
        # not Constant.from_array: np.ascontiguousarray would make a rank-0 array rank 1
        return Constant(str(name)[1:], ctype, digest_array(ctype.kind, data), data)

    def inline_data(self, name: str, ctype: TensorType, t: Tree[Token]) -> np.ndarray:
        """The array an inline literal spells, checked against the declared type."""
        if not ctype.is_static():
            raise self.err(t, f"constant {name}: an inline constant needs a static shape")
        shape = tuple(int(d or 0) for d in ctype.shape)
        count = math.prod(shape)
        if count > MAX_INLINE_ELEMENTS:
            raise self.err(
                t,
                f"constant {name}: {ctype} has {count} elements, too many to write inline (at "
                f"most {MAX_INLINE_ELEMENTS}); declare it with its hash and keep its data in "
                "the .npz beside the IR",
            )
        items = _items(t)
        if all(isinstance(x, Token) for x in items):  # one flat list, row-major
            tokens = [x for x in items if isinstance(x, Token)]
        else:
            tokens = self.nested(name, ctype, t, 0)
        if len(tokens) != count:
            raise self.err(
                t,
                f"constant {name}: {ctype} has {count} elements, the literal has {len(tokens)}",
            )
        values = [self.element(name, ctype.kind, tok) for tok in tokens]
        return np.array(values, dtype=STORAGE_DTYPE[ctype.kind]).reshape(shape)

    def nested(self, name: str, ctype: TensorType, t: Tree[Token], axis: int) -> list[Token]:
        """The number tokens of nested lists that mirror the shape from ``axis`` on, in
        row-major order; each list must have the length of its dimension."""
        items = _items(t)
        inner = axis + 1 < ctype.rank
        for x in items:
            if isinstance(x, Tree) != inner:
                want = "a list" if inner else "a number"
                raise self.err(x, f"constant {name}: expected {want} here (the type is {ctype})")
        if len(items) != ctype.shape[axis]:  # axis < rank: a rank-0 literal is flat
            raise self.err(
                t,
                f"constant {name}: this list has {len(items)} elements, dimension {axis} of "
                f"{ctype} is {ctype.shape[axis]}",
            )
        out: list[Token] = []
        for x in items:
            out += self.nested(name, ctype, x, axis + 1) if isinstance(x, Tree) else [x]
        return out

    def element(self, name: str, kind: Kind, tok: Token) -> float | int:
        """One number of an inline constant, checked against the element kind."""
        text = str(tok)
        if kind == Kind.F32:
            v = float(text)
            with np.errstate(over="ignore"):
                overflows = not math.isfinite(float(np.float32(v)))
            if overflows and (tok.type == "INT" or math.isfinite(v)):
                raise self.err(tok, f"constant {name}: {short(text)} does not fit in f32")
            return v
        allowed = {Kind.BIPOLAR: "1 or -1", Kind.SPIKE: "0 or 1", Kind.I32: "an integer"}[kind]
        if tok.type != "INT":
            raise self.err(
                tok, f"constant {name}: {kind} values must be {allowed}, got {short(text)}"
            )
        v = int(text) if len(text) <= 12 else 2**63  # int() refuses over 4300 digits
        ok = {
            Kind.BIPOLAR: v in (1, -1),
            Kind.SPIKE: v in (0, 1),
            Kind.I32: -(2**31) <= v < 2**31,
        }[kind]
        if not ok:
            why = "out of the i32 range" if kind == Kind.I32 else f"must be {allowed}"
            raise self.err(tok, f"constant {name}: {kind} value {short(text)} {why}")
        return v

    def type(self, t: Tree[Token]) -> TensorType:
        kind = t.children[0]
        dims: list[Dim] = []
        for d in t.children[1:]:
            if d is None:
                continue
            assert isinstance(d, Tree)
            if d.data == "dynamic":
                dims.append(None)
                continue
            tok = d.children[0]
            assert isinstance(tok, Token)
            dim = self.integer(tok, "a dimension")
            if not 0 <= dim <= MAX_DIM:
                raise self.err(tok, f"dimension {short(str(tok))} is out of range (0 to {MAX_DIM})")
            dims.append(dim)
        return TensorType(Kind(str(kind)), tuple(dims))

    def node(self, t: Tree[Token]) -> Node:
        result, op_tok, *rest = t.children
        assert isinstance(result, Token) and isinstance(op_tok, Token)
        op = OPS.get(str(op_tok))
        if op is None:
            raise self.err(op_tok, f"unknown op '{op_tok}'; known ops: {', '.join(sorted(OPS))}")
        loc_tree, ty_tree, attrs_tree = rest[-1], rest[-2], rest[-3]
        operands = tuple(str(o) for o in rest[:-3] if o is not None)
        attrs = self.attrs(op.name, attrs_tree) if isinstance(attrs_tree, Tree) else {}
        loc = None
        if isinstance(loc_tree, Tree):
            tok = loc_tree.children[0]
            assert isinstance(tok, Token)
            loc = self.string(tok)
        assert isinstance(ty_tree, Tree)
        node = Node(op.name, str(result)[1:], self.type(ty_tree), operands, attrs, loc)
        node.attrs = normalize_attrs(op, attrs)
        node.pos = (int(t.meta.line), int(t.meta.column))
        return node

    def attrs(self, op: str, t: Tree[Token]) -> dict[str, AttrValue]:
        out: dict[str, AttrValue] = {}
        for a in t.children:
            if a is None:
                continue
            assert isinstance(a, Tree)
            key_tok, value_tree = a.children
            assert isinstance(key_tok, Token) and isinstance(value_tree, Tree)
            key = str(key_tok)
            spec = OPS[op].attrs.get(key)
            if spec is None:
                known = ", ".join(OPS[op].attrs) or "none"
                raise self.err(key_tok, f"{op} has no attribute '{key}' (attributes: {known})")
            if key in out:
                raise self.err(key_tok, f"attribute '{key}' given twice")
            value = self.value(value_tree)
            self.check_attr(key_tok, op, key, spec, value)
            out[key] = coerce_attr(spec, value)
        return out

    def value(self, t: Tree[Token]) -> AttrValue:
        kind = t.data
        if kind == "list":
            items = [self.value(c) for c in t.children if isinstance(c, Tree)]
            if all(type(v) is int for v in items):
                return tuple(int(v) for v in items)  # type: ignore[arg-type]
            if all(type(v) in (int, float) for v in items):
                return tuple(float(v) for v in items)  # type: ignore[arg-type]
            return tuple(items)  # type: ignore[return-value]  # mixed: check_attr rejects it
        if kind in ("true", "false"):
            return kind == "true"
        tok = t.children[0]
        assert isinstance(tok, Token)
        if kind == "int":
            return self.integer(tok, "an integer attribute")
        if kind == "float":
            return float(str(tok))
        return self.string(tok)

    def integer(self, tok: Token, what: str) -> int:
        """An INT token as an int; its magnitude must be at most :data:`MAX_INT`."""
        return self.int64(tok, str(tok), what)

    def check_attr(self, tok: Token, op: str, key: str, spec: AttrSpec, v: AttrValue) -> None:
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, int | float) and not isinstance(v, bool),
            "bool": isinstance(v, bool),
            "str": isinstance(v, str),
            "ints": isinstance(v, tuple) and all(type(x) is int for x in v),
            "floats": isinstance(v, tuple) and all(type(x) in (int, float) for x in v),
        }[spec.kind]
        if ok and spec.length is not None and isinstance(v, tuple) and len(v) != spec.length:
            ok = False
        if ok and spec.choices is not None and v not in spec.choices:
            raise self.err(tok, f"{op}.{key} must be one of {', '.join(spec.choices)}")
        if not ok:
            n = f" of length {spec.length}" if spec.length else ""
            raise self.err(tok, f"{op}.{key} must be {spec.kind}{n}")


def _items(t: Tree[Token]) -> list[Token | Tree[Token]]:
    """The elements of one ``[...]`` literal (an empty list has none)."""
    return [x for x in t.children if x is not None]
