"""dce: dead-code elimination.

Removes every node whose result cannot reach a graph output, and every constant no remaining
node reads. Inputs are always kept (they are the graph's signature).
Pre: a verified graph. Post: the same outputs; only live nodes and used constants remain.
"""

from __future__ import annotations

from bsnnc.compiler.passes.base import Pass, PassOptions, PassResult
from bsnnc.ir.graph import Graph


def dce(g: Graph, options: PassOptions | None = None) -> PassResult:
    """Keep the inputs and the nodes that outputs depend on, then the constants those read."""
    nodes = g.node_map()
    live: set[str] = set()
    stack = list(g.outputs)
    while stack:
        v = stack.pop()
        if v in live:
            continue
        live.add(v)
        stack.extend(nodes[v].value_operands())
    kept = [n for n in g.nodes if n.result in live or n.op == "input"]
    used = {c for n in kept for c in n.const_operands()}
    consts = {k: c for k, c in g.constants.items() if k in used}
    if len(kept) == len(g.nodes) and len(consts) == len(g.constants):
        return PassResult(g, changed=False)
    return PassResult.of(g, Graph(g.name, kept, consts, list(g.outputs)))


PASS = Pass("dce", "remove nodes and constants that no output depends on", dce)
