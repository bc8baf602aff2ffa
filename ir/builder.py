"""Build graphs op by op with type inference and deterministic names (%0, %1, ...)."""

from __future__ import annotations

import re

import numpy as np

from bsnnc.ir.errors import VerifyError
from bsnnc.ir.graph import Attrs, Constant, Graph, Node
from bsnnc.ir.ops import OPS, normalize_attrs
from bsnnc.ir.types import Kind, TensorType

_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")


def sanitize(name: str) -> str:
    """A legal IR identifier for an arbitrary (e.g. ONNX) name: runs of other chars → '_'."""
    clean = _BAD.sub("_", name).strip("_.-") or "v"
    return clean if clean[0].isalnum() or clean[0] == "_" else "_" + clean


class GraphBuilder:
    """Appends nodes to a graph, inferring each result's type from the op table."""

    def __init__(self, name: str) -> None:
        self.graph = Graph(sanitize(name))
        self._types: dict[str, TensorType] = {}
        self._counter = 0

    def input(self, name: str, type_: TensorType) -> str:
        """Declare a graph input; returns its operand (``%name``)."""
        result = sanitize(name)
        if result in self._types or result.isdigit():
            result = f"in_{result}"
        self.graph.nodes.append(Node("input", result, type_))
        self._types[result] = type_
        return "%" + result

    def const(self, name: str, kind: Kind, data: np.ndarray) -> str:
        """Add a constant under a unique sanitized name; returns its operand (``@name``)."""
        base = sanitize(name)
        unique, i = base, 1
        while unique in self.graph.constants:
            unique, i = f"{base}.{i}", i + 1
        self.graph.constants[unique] = Constant.from_array(unique, kind, data)
        return "@" + unique

    def type_of(self, operand: str) -> TensorType:
        """Type of a value or constant operand."""
        if operand.startswith("@"):
            return self.graph.constants[operand[1:]].type
        return self._types[operand[1:]]

    def producer(self, operand: str) -> Node:
        """The node whose result a value operand (``%name``) is."""
        name = operand[1:]
        for n in reversed(self.graph.nodes):
            if n.result == name:
                return n
        raise KeyError(operand)

    def add(
        self, op: str, operands: list[str], attrs: Attrs | None = None, loc: str | None = None
    ) -> str:
        """Append ``op(operands) {attrs}``; :class:`VerifyError` if it does not type-check."""
        opdef = OPS[op]
        full = normalize_attrs(opdef, attrs or {})
        assert opdef.infer is not None, "use input() for graph inputs"
        try:
            ty = opdef.infer([self.type_of(o) for o in operands], full)
        except VerifyError as e:
            where = f" (from {loc})" if loc else ""
            raise VerifyError(f"{op}{where}: {e.message}") from None
        result = str(self._counter)
        self._counter += 1
        self.graph.nodes.append(Node(op, result, ty, tuple(operands), full, loc))
        self._types[result] = ty
        return "%" + result

    def finish(self, outputs: list[str]) -> Graph:
        """Set the outputs (operands) and return the graph."""
        self.graph.outputs = [o[1:] for o in outputs]
        return self.graph


class Rewriter(GraphBuilder):
    """Rebuilds a graph node by node: copies constants and inputs, maps old values to new
    operands (``env``), and re-infers every type."""

    def __init__(self, g: Graph) -> None:
        super().__init__(g.name)
        self.source = g
        self.graph.constants = dict(g.constants)
        self.env: dict[str, str] = {}

    def operand(self, old: str) -> str:
        """The new operand for an old one (constants map to themselves)."""
        return self.env[old[1:]] if old.startswith("%") else old

    def copy(self, n: Node, operands: list[str] | None = None) -> str:
        """Re-emit ``n`` (inputs keep their names) and map its result."""
        if n.op == "input":
            self.graph.nodes.append(n)
            self._types[n.result] = n.type
            new = "%" + n.result
        else:
            ops = operands if operands is not None else [self.operand(o) for o in n.operands]
            new = self.add(n.op, ops, n.attrs, loc=n.loc)
        self.env[n.result] = new
        return new

    def finish_from_source(self) -> Graph:
        """Outputs mapped from the source graph; unused constants dropped."""
        g = self.finish([self.env[o] for o in self.source.outputs])
        used = {c for n in g.nodes for c in n.const_operands()}
        g.constants = {k: c for k, c in g.constants.items() if k in used}
        return g
