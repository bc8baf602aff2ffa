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
attributes are printed sorted by key with every default filled in, floats in shortest
round-trip form, so ``print(parse(print(g))) == print(g)``.
"""

from __future__ import annotations

import json
import math

from bsnnc.ir.graph import AttrValue, Constant, Graph, Node

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


def format_const(c: Constant) -> str:
    """``const @name : type #digest``."""
    return f"const @{c.name} : {c.type} #{c.digest}"


def format_node(n: Node) -> str:
    """``%r = op(operands) {attrs} : type loc("...")``."""
    text = f"%{n.result} = {n.op}({', '.join(n.operands)})"
    if n.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items()) + "}"
    text += f" : {n.type}"
    if n.loc is not None:
        text += f" loc({json.dumps(n.loc)})"
    return text


def print_graph(g: Graph) -> str:
    """The whole graph as text (ends with a newline)."""
    lines = [HEADER, f"graph @{g.name} {{"]
    lines += [f"  {format_const(g.constants[k])}" for k in g.constants]
    lines += [f"  {format_node(n)}" for n in g.nodes]
    lines.append("  return " + ", ".join(f"%{o}" for o in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
