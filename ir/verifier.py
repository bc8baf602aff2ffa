"""The IR verifier: every invariant a pass may rely on.

Checks, in order: the graph has at least one ``input`` and one output; names are unique;
every op is in the op table with the right operand slots (``%`` values vs ``@`` constants);
attributes match their schema; every operand is defined *above* its use (so the node order is
a topological order and the graph is acyclic); each node's declared type equals the type its
op infers; constants' data (when loaded) match their declared type and content hash; every
``if`` neuron's threshold θ (its ``theta`` attribute times its per-channel constant, when that
is loaded) is finite and > 0 — a NaN or infinite θ would silently never (or always) fire.
"""

from __future__ import annotations

import math

import numpy as np

from bsnnc.ir.errors import VerifyError
from bsnnc.ir.graph import Constant, Graph, Node, channel_param, digest_array
from bsnnc.ir.ops import OPS, OpDef, is_binary_layer, normalize_attrs
from bsnnc.ir.types import STORAGE_DTYPE, Kind, TensorType


def verify(
    g: Graph,
    *,
    check_data: bool = True,
    checked: dict[int, Checked] | None = None,
) -> None:
    """Raise :class:`VerifyError` naming the first broken invariant and its node.

    ``checked`` (id → (constant, its data, digest and type when checked)) lets a sequence of
    calls hash each constant's data once: a constant found there (the same object, holding the
    same array under the same digest and type) is not hashed again, and every constant checked
    is added (the dict holds them, so no id is reused meanwhile). What it cannot see is an
    array changed in place — no pass does that: they build new constants.
    A pass pipeline passes one dict through all its passes: most constants pass through
    unchanged, and VGG-15's 122 M weights took 0.1 s to hash after each pass."""
    _verify_constants(g, check_data, checked)
    defined: dict[str, TensorType] = {}
    for n in g.nodes:
        if n.result in defined:
            raise VerifyError(f"{n.where()}: value %{n.result} defined twice")
        defined[n.result] = _verify_node(g, n, defined)
    if not g.inputs():
        raise VerifyError(f"graph @{g.name} has no input")
    if not g.outputs:
        raise VerifyError(f"graph @{g.name} returns nothing")
    for o in g.outputs:
        if o not in defined:
            raise VerifyError(f"graph @{g.name} returns %{o}, which is not defined")


#: a constant as :func:`verify` hashed it: (the constant, its data, digest and type then)
Checked = tuple[Constant, np.ndarray, str, TensorType]


def _verify_constants(g: Graph, check_data: bool, checked: dict[int, Checked] | None) -> None:
    for name, c in g.constants.items():
        if name != c.name:
            raise VerifyError(f"constant key {name!r} holds @{c.name}")
        if check_data and c.data is not None:
            now = (c, c.data, c.digest, c.type)
            seen = checked.get(id(c)) if checked is not None else None
            if seen and seen[0] is c and seen[1] is c.data and seen[2:] == now[2:]:
                continue
            _verify_constant_data(c)
            if checked is not None:
                checked[id(c)] = now


def _verify_constant_data(c: Constant) -> None:
    data = c.array()
    if tuple(data.shape) != c.type.shape or data.dtype != STORAGE_DTYPE[c.type.kind]:
        raise VerifyError(
            f"constant @{c.name}: data is {data.dtype}{list(data.shape)}, declared {c.type}"
        )
    actual = digest_array(c.type.kind, data)
    if actual != c.digest:
        raise VerifyError(
            f"constant @{c.name}: content hash #{actual} does not match the declared #{c.digest}"
            " (the weights file does not belong to this IR)"
        )


def _verify_node(g: Graph, n: Node, defined: dict[str, TensorType]) -> TensorType:
    op = OPS.get(n.op)
    if op is None:
        raise VerifyError(f"{n.where()}: unknown op (known: {', '.join(sorted(OPS))})")
    _verify_attrs(n, op)
    types = _operand_types(g, n, op, defined)
    if op.infer is None:
        if n.operands:
            raise VerifyError(f"{n.where()}: takes no operands")
        return n.type
    try:
        inferred = op.infer(types, n.attrs)
    except VerifyError as e:
        raise VerifyError(f"{n.where()}: {e.message}") from None
    if inferred != n.type:
        raise VerifyError(f"{n.where()}: declared type {n.type}, but the op infers {inferred}")
    if n.op == "if":
        _verify_threshold(g, n)
    return n.type


def _verify_threshold(g: Graph, n: Node) -> None:
    """θ of an ``if`` node is finite and > 0 on every channel (the constant part is checked
    when its data is loaded)."""
    theta = n.attrs.get("theta")
    if not isinstance(theta, int | float) or not math.isfinite(theta) or theta <= 0:
        raise VerifyError(f"{n.where()}: if threshold must be finite and > 0, got {theta}")
    consts = n.const_operands()
    if not consts or g.constants[consts[0]].data is None:
        return
    with np.errstate(all="ignore"):
        values = np.asarray(channel_param(g, n, "theta"), np.float64)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.argmax(bad.reshape(-1)))
        raise VerifyError(
            f"{n.where()}: if threshold must be finite and > 0 on every channel, but "
            f"θ[{i}] = {values.reshape(-1)[i]} (theta × @{consts[0]})"
        )


def _verify_attrs(n: Node, op: OpDef) -> None:
    unknown = sorted(set(n.attrs) - set(op.attrs))
    if unknown:
        raise VerifyError(f"{n.where()}: unknown attribute(s) {', '.join(unknown)}")
    if normalize_attrs(op, n.attrs) != n.attrs:
        raise VerifyError(f"{n.where()}: attributes are not normalized (missing defaults?)")


def _operand_types(
    g: Graph, n: Node, op: OpDef, defined: dict[str, TensorType]
) -> list[TensorType]:
    slots = op.operands
    required = sum(1 for s in slots if not s.endswith("?"))
    if not required <= len(n.operands) <= len(slots):
        raise VerifyError(f"{n.where()}: expects {_arity(slots)} operands, got {len(n.operands)}")
    types: list[TensorType] = []
    for slot, operand in zip(slots, n.operands, strict=False):
        want_const = slot.startswith("const")
        if operand.startswith("@") != want_const:
            kind = "a constant @name" if want_const else "a value %name"
            raise VerifyError(f"{n.where()}: operand {operand} must be {kind}")
        if want_const:
            if operand[1:] not in g.constants:
                raise VerifyError(f"{n.where()}: constant {operand} is not declared")
            types.append(g.constants[operand[1:]].type)
        else:
            if operand[1:] not in defined:
                raise VerifyError(f"{n.where()}: {operand} is used before it is defined")
            types.append(defined[operand[1:]])
    return types


def _arity(slots: tuple[str, ...]) -> str:
    required = sum(1 for s in slots if not s.endswith("?"))
    return str(required) if required == len(slots) else f"{required}..{len(slots)}"


def verify_spiking(g: Graph) -> None:
    """The spiking-form invariant: every binary layer (``bipolar`` weights) reads ``spike``s."""
    verify(g, check_data=False)
    types = {n.result: n.type for n in g.nodes}
    for n in g.nodes:
        if not is_binary_layer(g, n):
            continue
        x = types[n.value_operands()[0]]
        if x.kind != Kind.SPIKE:
            raise VerifyError(
                f"{n.where()}: a binary layer must read spikes, but its input is {x} "
                "(run insert-if-around-pooling; a binary first layer is not supported: keep the "
                "first layer full precision)"
            )
