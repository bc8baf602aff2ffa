"""A networkx view of a graph (for graph algorithms; the IR itself stays the storage)."""

from __future__ import annotations

import networkx as nx

from bsnnc.ir.graph import Graph


def to_nx(g: Graph) -> nx.MultiDiGraph:
    """Nodes are result names (attribute ``node``); an edge u→v per operand, with its ``index``.

    Constants are not vertices: they are attributes of their users (``node.const_operands()``).
    """
    dg = nx.MultiDiGraph(name=g.name)
    for n in g.nodes:
        dg.add_node(n.result, node=n)
    for n in g.nodes:
        for i, operand in enumerate(n.operands):
            if operand.startswith("%"):
                dg.add_edge(operand[1:], n.result, index=i)
    return dg


def is_acyclic(g: Graph) -> bool:
    """True when the data-flow graph has no cycle."""
    return bool(nx.is_directed_acyclic_graph(to_nx(g)))
