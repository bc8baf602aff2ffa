"""Per-layer facts of a graph: which weighted layers are binary, their α, op counts.

Op counts follow the paper: a convolution costs ``nIP·kH·kW·nOP·oH·oW`` operations and a linear
layer ``iS·oS`` (per image).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bsnnc.ir.graph import Graph, Node, attr_float
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


def layer_ops(g: Graph, n: Node) -> int:
    """Operations per image of a conv2d/dense node (the paper's formulas)."""
    w = g.constants[n.const_operands()[0]].type.shape
    if n.op == "conv2d":
        cin, kh, kw, cout = int(w[1] or 0), int(w[2] or 0), int(w[3] or 0), int(w[0] or 0)
        oh, ow = int(n.type.shape[2] or 0), int(n.type.shape[3] or 0)
        return cin * kh * kw * cout * oh * ow
    return int(w[0] or 0) * int(w[1] or 0)


def _alpha(g: Graph, n: Node, users: dict[str, list[Node]]) -> str:
    """α of a binary layer: the factor of the ``scale`` that reads it directly."""
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
    return "folded" if n.type.kind == Kind.I32 else "1"


def layer_table(g: Graph) -> list[LayerRow]:
    """Every conv2d/dense node in graph order."""
    users = g.users()
    types = {n.result: n.type for n in g.nodes}
    rows: list[LayerRow] = []
    for n in g.nodes:
        if n.op not in ("conv2d", "dense"):
            continue
        wc = g.constants[n.const_operands()[0]]
        binary = wc.type.kind == Kind.BIPOLAR
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
