"""Placing arrays on a 2-D mesh of tiles, and the producer → consumer graph between them.

Arrays are numbered layer by layer; tiles hold ``arrays_per_tile`` consecutive arrays and are
laid out on a near-square mesh in boustrophedon (snake) order, so consecutive layers sit on
neighbouring tiles. The networkx graph has a vertex per tile and an edge for every pair of
tiles between which spikes flow (a producer layer's tiles → its consumer layer's tiles), with
the Manhattan distance as ``hops``.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

from bsnnc.backends.rram.mapping import Mapping
from bsnnc.ir.graph import Graph

if TYPE_CHECKING:
    import networkx as nx


def mesh_position(tile: int, width: int) -> tuple[int, int]:
    """(x, y) of a tile in snake order on a mesh ``width`` tiles wide."""
    y, x = divmod(tile, width)
    return (width - 1 - x if y % 2 else x), y


def tile_graph(g: Graph, m: Mapping) -> tuple[nx.DiGraph, int]:
    """The tile mesh as a networkx graph, and its width."""
    per = m.hw.arrays_per_tile
    n_tiles = max(1, math.ceil(m.n_arrays / per))
    width = math.ceil(math.sqrt(n_tiles))
    tiles_of = {lm.node: sorted({a // per for a in lm.arrays}) for lm in m.layers}
    import networkx as nx  # loaded on first use: keeps `bsnnc --help` fast

    dg = nx.DiGraph()
    for t in range(n_tiles):
        dg.add_node(t, pos=mesh_position(t, width))
    layers = [lm.node for lm in m.layers if lm.arrays]
    for src, dst in itertools.pairwise(layers):
        for a in tiles_of[src]:
            for b in tiles_of[dst]:
                (xa, ya), (xb, yb) = dg.nodes[a]["pos"], dg.nodes[b]["pos"]
                dg.add_edge(a, b, hops=abs(xa - xb) + abs(ya - yb))
    return dg, width


def place(g: Graph, m: Mapping) -> dict[str, Any]:
    """Placement facts for the report: tiles, mesh size, hops between consecutive layers."""
    dg, width = tile_graph(g, m)
    hops = [d["hops"] for _, _, d in dg.edges(data=True)]
    return {
        "tiles": dg.number_of_nodes(),
        "mesh": [width, math.ceil(dg.number_of_nodes() / width)],
        "links": dg.number_of_edges(),
        "max_hops": max(hops, default=0),
        "mean_hops": sum(hops) / len(hops) if hops else 0.0,
    }
