"""canonicalize: deterministic names and order.

Renumbers node results %0, %1, ... in graph order (inputs keep their names) and orders the
constant declarations by first use, so that two graphs that mean the same print the same.
Pre: a verified graph. Post: the same graph up to renaming.
"""

from __future__ import annotations

from dataclasses import replace

from bsnnc.compiler.passes.base import Pass, PassOptions, PassResult
from bsnnc.ir.graph import Graph


def canonicalize(g: Graph, options: PassOptions | None = None) -> PassResult:
    """Rename results to their index among non-input nodes; constants in order of first use."""
    rename: dict[str, str] = {}
    counter = 0
    for n in g.nodes:
        if n.op == "input":
            rename[n.result] = n.result
        else:
            rename[n.result] = str(counter)
            counter += 1
    nodes = [
        replace(
            n,
            result=rename[n.result],
            operands=tuple("%" + rename[o[1:]] if o.startswith("%") else o for o in n.operands),
        )
        for n in g.nodes
    ]
    order = [c for n in g.nodes for c in n.const_operands()]
    consts = {k: g.constants[k] for k in dict.fromkeys(order)}
    consts.update({k: c for k, c in g.constants.items() if k not in consts})
    return PassResult.of(g, Graph(g.name, nodes, consts, [rename[o] for o in g.outputs]))


PASS = Pass("canonicalize", "renumber values and order constants deterministically", canonicalize)
