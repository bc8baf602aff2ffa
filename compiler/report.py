"""Per-layer facts of a graph: which weighted layers are binary, their α, op counts.

Op counts follow the paper: a convolution costs ``nIP·kH·kW·nOP·oH·oW`` operations and a linear
layer ``iS·oS`` (per image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bsnnc.ir.graph import Graph, Node, attr_float
from bsnnc.ir.ops import Trait, has_trait, is_binary_layer, layer_ops, weight_of
from bsnnc.ir.types import Kind


@dataclass
class LayerRow:
    """One weighted layer (conv2d or dense)."""

    index: int
    value: str
    loc: str
    op: str
    input: str
    output: str
    weight: str
    binary: bool
    alpha: str
    ops: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _alpha(g: Graph, n: Node, users: dict[str, list[Node]]) -> str:
    """α of a binary layer: the factor of the ``scale`` that reads it directly (in a spiking
    graph, whose binary layers sum integers, α is folded: a ``scale`` there is a merge's
    branch factor)."""
    if n.type.kind == Kind.I32:
        return "folded"
    for u in users.get(n.result, []):
        if u.op != "scale":
            continue
        consts = u.const_operands()
        if not consts:
            return f"{attr_float(u.attrs, 'factor'):.6g}"
        data = g.constants[consts[0]].data
        if data is None:
            return "per-channel"
        return f"per-channel {np.min(data):.4g}..{np.max(data):.4g}"
    return "1"


def layer_table(g: Graph) -> list[LayerRow]:
    """Every conv2d/dense node in graph order."""
    users = g.users()
    types = {n.result: n.type for n in g.nodes}
    rows: list[LayerRow] = []
    for n in g.nodes:
        if not has_trait(n.op, Trait.WEIGHTED):
            continue
        wc = weight_of(g, n)
        binary = is_binary_layer(g, n)
        rows.append(
            LayerRow(
                index=len(rows),
                value=f"%{n.result}",
                loc=n.loc or "",
                op=n.op,
                input=str(types[n.value_operands()[0]]),
                output=str(n.type),
                weight=str(wc.type),
                binary=binary,
                alpha=_alpha(g, n, users) if binary else "",
                ops=layer_ops(g, n),
            )
        )
    return rows
