"""insert-if-around-pooling: make every binary layer's input a spike tensor.

Pre: lower-relu-to-if ran. Post (checked by :func:`bsnnc.ir.verifier.verify_spiking`): every
``conv2d``/``dense`` with ``bipolar`` weights reads ``spike`` values. The paper's four pooling
arrangements:

* avg-pool *before* ReLU (``W → avgpool → if``): pools input currents, one IF — unchanged.
* avg-pool *after* ReLU (``if → avgpool → W``): the pooled rates are not binary, so an IF is
  inserted after the pool. As an ANN this is ``relu`` of a non-negative value: the identity.
* max-pool *before* ReLU (``W → maxpool → [scale → bias →] if``): the IF moves in front of the
  pool (``W → [scale → bias →] if → maxpool``), which then pools spikes. As an ANN:
  ``relu(s·max(x) + b) = max(relu(s·x + b))`` for s > 0 (fold-scales guarantees it).
  Without this IF the authors saw accuracy collapse (33 %).
* max-pool *after* ReLU (``if → maxpool → W``): max of spikes is a spike — unchanged.
* global average pooling after an IF is treated like avg-pool after ReLU.
"""

from __future__ import annotations

from bsnnc.compiler.passes.base import Pass, PassOptions, PassResult
from bsnnc.ir.builder import Rewriter
from bsnnc.ir.graph import Attrs, Graph, Node
from bsnnc.ir.ops import Trait, has_trait, is_binary_layer
from bsnnc.ir.types import Kind
from bsnnc.ir.verifier import verify_spiking


def _hoist_if_over_maxpool(g: Graph, notes: list[str]) -> Graph:
    """``maxpool → [scale] → [bias] → if``  ⇒  ``[scale] → [bias] → if → maxpool``."""
    nodes, users = g.node_map(), g.users()
    moves: dict[str, list[Node]] = {}  # if result → [maxpool, affine ops...] in order
    for n in g.nodes:
        if n.op != "if":
            continue
        chain: list[Node] = []
        cur = nodes[n.value_operands()[0]]
        while cur.op in ("scale", "bias") and len(users[cur.result]) == 1:
            chain.append(cur)
            cur = nodes[cur.value_operands()[0]]
        if cur.op == "maxpool" and len(users[cur.result]) == 1 and cur.type.kind != Kind.SPIKE:
            moves[n.result] = [cur, *reversed(chain)]
    if not moves:
        return g
    skip = {m.result for chain in moves.values() for m in chain}
    rw = Rewriter(g)
    for n in g.nodes:
        if n.result in skip:
            continue
        if n.result not in moves:
            rw.copy(n)
            continue
        pool, *affine = moves[n.result]
        x = rw.operand(pool.operands[0])
        for a in affine:
            x = rw.add(a.op, [x, *a.operands[1:]], a.attrs, loc=a.loc)
        x = rw.add("if", [x, *n.operands[1:]], n.attrs, loc=n.loc)
        rw.env[n.result] = rw.add("maxpool", [x], pool.attrs, loc=pool.loc)
        notes.append(
            f"insert-if-around-pooling: IF moved before max pool {pool.loc or pool.result}"
        )
    return rw.finish_from_source()


def _insert_after_pools(g: Graph, reset: str, v_init: float, notes: list[str]) -> Graph:
    """Insert ``if`` after average/global pools (and shape ops) that feed binary layers."""
    nodes = g.node_map()
    need: set[str] = set()
    for n in g.nodes:
        if not is_binary_layer(g, n):
            continue
        cur = nodes[n.value_operands()[0]]
        while has_trait(cur.op, Trait.SHAPE):
            cur = nodes[cur.value_operands()[0]]
        # an average pool of spikes is no longer 0/1 (a max pool is: it passes spikes through)
        linear = has_trait(cur.op, Trait.LINEAR_POOL)
        pooled = nodes[cur.value_operands()[0]] if linear else None
        if pooled is not None and pooled.type.kind == Kind.SPIKE and cur.type.kind != Kind.SPIKE:
            need.add(cur.result)
    if not need:
        return g
    rw = Rewriter(g)
    for n in g.nodes:
        new = rw.copy(n)
        if n.result in need:
            attrs: Attrs = {"theta": 1.0, "reset": reset, "init": v_init}
            rw.env[n.result] = rw.add("if", [new], attrs, loc=f"{n.loc or n.result}.if")
            notes.append(f"insert-if-around-pooling: IF inserted after {n.loc or n.result}")
    return rw.finish_from_source()


def insert_if_around_pooling(g: Graph, options: PassOptions) -> PassResult:
    """See the module docstring."""
    notes: list[str] = []
    out = _insert_after_pools(
        _hoist_if_over_maxpool(g, notes), options.reset, options.v_init, notes
    )
    verify_spiking(out)
    return PassResult.of(g, out, notes)


PASS = Pass(
    "insert-if-around-pooling",
    "add IF neurons so that every binary layer reads spikes",
    insert_if_around_pooling,
)
