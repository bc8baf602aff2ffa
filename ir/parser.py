"""Parse IR text (grammar: ``grammar.lark``) back into a :class:`Graph`.

Syntax errors and semantic errors found while building the graph (unknown op, unknown
attribute, wrong attribute kind) are reported as ``source:line:column: message`` with the
offending line and a caret. Type and shape checks are left to :mod:`bsnnc.ir.verifier`,
which also names the line of each node.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from bsnnc.ir.errors import IRParseError
from bsnnc.ir.graph import AttrValue, Constant, Graph, Node
from bsnnc.ir.ops import OPS, AttrSpec, coerce_attr, normalize_attrs
from bsnnc.ir.types import Dim, Kind, TensorType

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


def _context(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    return f"\n  {src}\n  {' ' * (column - 1)}^"


def _error(source: str, text: str, line: int, column: int, msg: str) -> IRParseError:
    return IRParseError(f"{source}:{line}:{column}: {msg}{_context(text, line, column)}")


def _syntax_error(source: str, text: str, e: UnexpectedInput) -> IRParseError:
    expected = sorted({_READABLE.get(t, t) for t in (e.expected if hasattr(e, "expected") else [])})
    if isinstance(e, UnexpectedToken):
        got = "end of input" if e.token.type == "$END" else repr(str(e.token))
        exp = getattr(e, "accepts", None) or e.expected
        expected = sorted({_READABLE.get(t, t) for t in exp})
    elif isinstance(e, UnexpectedCharacters):
        got = repr(e.char)
        expected = sorted({_READABLE.get(t, t) for t in e.allowed})
    elif isinstance(e, UnexpectedEOF):
        got = "end of input"
    else:  # pragma: no cover - lark has no other subclasses
        got = "input"
    want = f"; expected {' or '.join(expected)}" if expected else ""
    line = e.line if e.line and e.line > 0 else len(text.splitlines())
    col = e.column if e.column and e.column > 0 else 1
    return _error(source, text, line, col, f"unexpected {got}{want}")


def parse(text: str, source: str = "<ir>") -> Graph:
    """Parse IR text. Constants come back without data (see :meth:`Graph.attach_weights`)."""
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as e:
        raise _syntax_error(source, text, e) from None
    root = tree.children[0]
    assert isinstance(root, Tree)
    return _Builder(source, text).graph(root)


class _Builder:
    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def err(self, tok: Token | Tree[Token], msg: str) -> IRParseError:
        line = tok.line if isinstance(tok, Token) else tok.meta.line
        col = tok.column if isinstance(tok, Token) else tok.meta.column
        return _error(self.source, self.text, int(line or 1), int(col or 1), msg)

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
        name, ty, digest = t.children
        assert isinstance(name, Token) and isinstance(ty, Tree) and isinstance(digest, Token)
        return Constant(str(name)[1:], self.type(ty), str(digest)[1:])

    def type(self, t: Tree[Token]) -> TensorType:
        kind = t.children[0]
        dims: list[Dim] = []
        for d in t.children[1:]:
            if d is None:
                continue
            assert isinstance(d, Tree)
            dims.append(None if d.data == "dynamic" else int(str(d.children[0])))
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
            loc = json.loads(str(loc_tree.children[0]))
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
        tok = str(t.children[0])
        if kind == "int":
            return int(tok)
        if kind == "float":
            return float(tok)
        return str(json.loads(tok))

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
