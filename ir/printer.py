"""Text form of the IR: one op per line, MLIR-like, deterministic.

Example::

    // bsnnc IR v1
    graph @digits {
      const @conv2.w : bipolar[64,32,3,3] #5c0b0a6e41d3f2a9
      %input = input() : f32[?,1,8,8]
      %0 = conv2d(%input, @conv1.w) {dilation=[1,1], pad=[1,1,1,1], stride=[1,1]} : f32[?,32,8,8]
      return %9
    }

Constants are declared with their type and a content hash (their bytes live beside the text);
with ``print_graph(g, inline_max=N)`` constants of at most N elements whose data is loaded are
written inline instead (``const @w : bipolar[2,3] = [[1,-1,1],[-1,1,1]]``: nested lists that
mirror the shape, f32 values in the shortest text that reads back to the same float32).
Attributes are printed sorted by key with every default filled in, floats in shortest
round-trip form, so ``print(parse(print(g))) == print(g)`` for either form of constants.
"""

from __future__ import annotations

import json
import math

import numpy as np

from bsnnc.ir.graph import AttrValue, Constant, Graph, Node
from bsnnc.ir.parser import MAX_INLINE_ELEMENTS
from bsnnc.ir.types import Kind

HEADER = "// bsnnc IR v1"


def format_attr(value: AttrValue) -> str:
    """One attribute value in text form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ",".join(format_attr(v) for v in value) + "]"


def format_float(x: float) -> str:
    """Shortest text that reads back to the same float, always with a '.', 'e', inf or nan."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def format_const(c: Constant, inline_max: int = 0) -> str:
    """``const @name : type #digest``, or ``const @name : type = [...]`` when the constant has
    data and at most ``inline_max`` elements."""
    if c.data is not None and c.type.is_static() and c.data.size <= inline_max:
        return f"const @{c.name} : {c.type} = {format_array(c.type.kind, c.data)}"
    return f"const @{c.name} : {c.type} #{c.digest}"


def format_array(kind: Kind, data: np.ndarray) -> str:
    """An inline constant's data: nested lists that mirror the shape (``[x]`` for rank 0)."""
    if data.ndim == 0:
        return f"[{_format_element(kind, data.item())}]"
    if data.ndim == 1:
        return "[" + ",".join(_format_element(kind, x) for x in data.tolist()) + "]"
    return "[" + ",".join(format_array(kind, row) for row in data) + "]"


def _format_element(kind: Kind, x: float | int) -> str:
    """One element: ints as ints; f32 as the shortest text that reads back to the same
    float32 (numpy's ``str`` of a float32 is that text), always float-looking."""
    if kind != Kind.F32:
        return str(int(x))
    return format_float(float(str(np.float32(x))))


def format_node(n: Node) -> str:
    """``%r = op(operands) {attrs} : type loc("...")``."""
    text = f"%{n.result} = {n.op}({', '.join(n.operands)})"
    if n.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items()) + "}"
    text += f" : {n.type}"
    if n.loc is not None:
        text += f" loc({json.dumps(n.loc)})"
    return text


def print_graph(g: Graph, *, inline_max: int = 0) -> str:
    """The whole graph as text (ends with a newline). Constants with loaded data and at most
    ``inline_max`` elements (0 to :data:`MAX_INLINE_ELEMENTS`) are written inline, the others
    as their content hash."""
    if not 0 <= inline_max <= MAX_INLINE_ELEMENTS:
        raise ValueError(f"inline_max must be between 0 and {MAX_INLINE_ELEMENTS}")
    lines = [HEADER, f"graph @{g.name} {{"]
    lines += [f"  {format_const(g.constants[k], inline_max)}" for k in g.constants]
    lines += [f"  {format_node(n)}" for n in g.nodes]
    lines.append("  return " + ", ".join(f"%{o}" for o in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
