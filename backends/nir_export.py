"""Export a spiking graph to NIR, the Neuromorphic Intermediate Representation (``nir`` 1.0).

NIR describes continuous-time dynamics; with dt = 1 its ``IF`` is bsnnc's discrete neuron
(``v += z``, spike, reset) and its ``I`` is the readout (``V += z``). One NIR node per IR node:

=================  ===========================================================================
IR                 NIR
=================  ===========================================================================
input              ``Input`` (per-sample shape [C, H, W])
conv2d             ``Conv2d`` (±1 weights as ±1.0; ``bias`` = the constant current of a
                   ``bias`` node that alone reads it, else zeros)
dense              ``Affine`` (same for ``bias``)
bias (other)       a 1×1 identity ``Conv2d`` / identity ``Affine`` carrying the bias
scale              ``Scale`` (the factor per element)
avgpool            ``AvgPool2d``; ``global_avgpool`` an ``AvgPool2d`` over the whole map;
                   with ``sum_pools`` (for importers without ``AvgPool2d``) a ``SumPool2d``
                   and the reading IF's θ times the window size k = kh·kw: Σx ≥ k·θ ⇔
                   Σx/k ≥ θ, exact in floating point for k a power of two (others refused)
maxpool (spikes)   ``SumPool2d`` then ``Threshold`` 0.5: the OR of 0/1 spikes, exactly
flatten            ``Flatten`` (per-sample dims)
if                 ``IF`` (r = 1, θ per neuron, v_reset = 0)
add                no node: both operands feed the reader (NIR sums a node's inputs)
readout            ``I`` (r = 1), then ``Output``
=================  ===========================================================================

NIR 1.0 cannot say everything bsnnc means; these are exported as the closest NIR and the exact
bsnnc semantics go into the node's ``metadata["bsnnc"]`` (a JSON string: the IR op,
attributes, loc and constant names of every IR node it stands for), and each is reported as
a warning:

* subtractive reset (``v -= θ``): NIR's ``IF`` resets to ``v_reset`` — exported as
  ``v_reset = 0``;
* the initial membrane ``init·θ`` (the half-threshold start): NIR has no initial state;
* firing at ``v ≥ θ`` (bsnnc) where NIR's text says ``v > θ``;
* average pools with padding not counted in the divisor; pools with ``ceil_mode`` or
  asymmetric padding whose output size NIR's pool reproduces.

Refused (an error naming the node): ``concat`` and ``reshape`` (no NIR node), max pooling of
currents, asymmetric convolution padding, pools whose ``ceil_mode`` or asymmetric padding
changes their output size (NIR has neither).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph, Node, attr_ints, channel_param
from bsnnc.ir.ops import if_init, if_levels
from bsnnc.ir.types import Kind

#: the NIR package version bsnnc writes and reads (the ``nir`` extra pins it)
NIR_VERSION = "1.0"


def _nir() -> Any:
    try:
        import nir
    except ImportError:
        raise BsnncError(
            "NIR export needs the nir package: pip install 'bsnnc[nir]' (or pip install nir)"
        ) from None
    return nir


@dataclass
class NirExport:
    """A NIR graph and the approximations made writing it."""

    graph: Any
    warnings: list[str] = field(default_factory=list)


def _describe(g: Graph, n: Node) -> dict[str, Any]:
    """The IR node as metadata: op, attributes (JSON), loc, result and constant names."""
    return {
        "op": n.op,
        "result": n.result,
        "attrs": json.dumps(n.attrs, sort_keys=True, default=list),
        "loc": n.loc or "",
        "consts": list(n.const_operands()),
        "kinds": [g.constants[c].type.kind.value for c in n.const_operands()],
    }


def _sym_pad(n: Node, what: str) -> tuple[int, int]:
    t, left, b, r = attr_ints(n.attrs, "pad")
    if (t, left) != (b, r):
        raise BsnncError(
            f"NIR export: {n.where()}: asymmetric padding {[t, left, b, r]} of a {what} "
            "cannot be expressed in NIR (its padding is one value per side pair)"
        )
    return t, left


class _Exporter:
    def __init__(self, g: Graph, sum_pools: bool) -> None:
        self.g, self.nir, self.sum_pools = g, _nir(), sum_pools
        #: IF result → the window size of the sum pool that feeds it (θ multiplied by it)
        self.theta_factor: dict[str, int] = {}
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        #: IR value → the NIR nodes whose outputs sum to it
        self.sources: dict[str, list[str]] = {}
        self.warnings: list[str] = []
        self.users = g.users()
        self.by_result = g.node_map()
        self.folded_bias: set[str] = set()
        #: IR value of a merge → the ``add`` nodes it stands for (recorded on its reader)
        self.merges: dict[str, list[dict[str, Any]]] = {}

    def shape(self, value: str) -> tuple[int, ...]:
        t = self.by_result[value].type
        return tuple(int(d or 0) for d in t.shape[1:])

    def add(self, n: Node, name: str, node: Any, stands_for: list[Node], **extra: Any) -> None:
        """Add ``node`` for IR node ``n`` (and the IR nodes it absorbed) with its edges."""
        facts = {"nodes": [_describe(self.g, m) for m in stands_for], **extra}
        merges = [d for v in n.value_operands() for d in self.merges.get(v, [])]
        if merges:  # the adds whose sum this node reads, innermost first
            facts["merges"] = merges
        node.metadata = {"bsnnc": json.dumps(facts, sort_keys=True)}
        self.nodes[name] = node
        for v in n.value_operands():
            self.edges += [(s, name) for s in self.sources[v]]
        self.sources[n.result] = [name]

    def warn(self, n: Node, msg: str) -> None:
        self.warnings.append(f"{n.loc or '%' + n.result} ({n.op}): {msg}")

    def bias_of(self, n: Node) -> tuple[np.ndarray, list[Node]]:
        """The constant current of a ``bias`` that alone reads ``n`` (folded into its node)."""
        readers = self.users.get(n.result, [])
        channels = int(n.type.shape[1] or 0)
        if len(readers) == 1 and readers[0].op == "bias" and n.result not in self.g.outputs:
            b = readers[0]
            self.folded_bias.add(b.result)
            value = np.broadcast_to(channel_param(self.g, b, "value"), (channels,))
            return np.asarray(value, np.float32), [b]
        return np.zeros(channels, np.float32), []

    def run(self) -> NirExport:
        nir = self.nir
        for n in self.g.nodes:
            if n.result in self.folded_bias:
                self.sources[n.result] = self.sources[n.value_operands()[0]]
                continue
            getattr(self, f"op_{n.op}", self.unsupported)(n)
        self.nodes["output"] = nir.Output(
            output_type={"output": np.array(self.shape(self.g.outputs[0]))}
        )
        self.edges += [(s, "output") for s in self.sources[self.g.outputs[0]]]
        graph = nir.NIRGraph(
            nodes=self.nodes,
            edges=self.edges,
            metadata={"bsnnc": json.dumps({"graph": self.g.name, "nir": NIR_VERSION})},
            type_check=False,
        )
        return NirExport(graph, self.warnings)

    def unsupported(self, n: Node) -> None:
        raise BsnncError(f"NIR export: {n.where()}: NIR 1.0 has no node for {n.op}")

    def name(self, n: Node) -> str:
        return f"{n.op}_{n.result}"

    def op_input(self, n: Node) -> None:
        node = self.nir.Input(input_type={"input": np.array(self.shape(n.result))})
        node.metadata = {"bsnnc": json.dumps({"nodes": [_describe(self.g, n)]})}
        self.nodes["input"] = node
        self.sources[n.result] = ["input"]

    def _weight(self, n: Node) -> np.ndarray:
        c = self.g.constants[n.const_operands()[0]]
        return np.asarray(c.array(), np.float32)

    def op_conv2d(self, n: Node) -> None:
        x = self.shape(n.value_operands()[0])
        bias, folded = self.bias_of(n)
        node = self.nir.Conv2d(
            input_shape=(x[1], x[2]),
            weight=self._weight(n),
            stride=tuple(attr_ints(n.attrs, "stride")),
            padding=_sym_pad(n, "convolution"),
            dilation=tuple(attr_ints(n.attrs, "dilation")),
            groups=1,
            bias=bias,
        )
        self.add(n, self.name(n), node, [n, *folded])

    def op_dense(self, n: Node) -> None:
        bias, folded = self.bias_of(n)
        self.add(n, self.name(n), self.nir.Affine(weight=self._weight(n), bias=bias), [n, *folded])

    def op_bias(self, n: Node) -> None:
        shape = self.shape(n.result)
        c = shape[0]
        value = np.asarray(np.broadcast_to(channel_param(self.g, n, "value"), (c,)), np.float32)
        if len(shape) == 1:
            node = self.nir.Affine(weight=np.eye(c, dtype=np.float32), bias=value)
        else:
            eye = np.eye(c, dtype=np.float32).reshape(c, c, 1, 1)
            node = self.nir.Conv2d(
                input_shape=shape[1:3],
                weight=eye,
                stride=1,
                padding=0,
                dilation=1,
                groups=1,
                bias=value,
            )
        self.add(n, self.name(n), node, [n])

    def op_scale(self, n: Node) -> None:
        shape = self.shape(n.result)
        f = np.asarray(channel_param(self.g, n, "factor"), np.float32).reshape(-1)
        per = f.reshape((-1,) + (1,) * (len(shape) - 1)) if f.size > 1 else f.reshape(())
        full = np.ascontiguousarray(np.broadcast_to(per, shape), np.float32)
        self.add(n, self.name(n), self.nir.Scale(scale=full), [n])

    def _pool_checks(self, n: Node) -> tuple[int, int]:
        """The symmetric padding NIR gets; an error when NIR's pool (floor mode, that
        padding on both sides) would not make the IR's output size."""
        t, left, b, r = attr_ints(n.attrs, "pad")
        x = self.by_result[n.value_operands()[0]].type.shape
        k, st = attr_ints(n.attrs, "kernel"), attr_ints(n.attrs, "stride")
        size = [int(x[2 + i] or 0) + 2 * (t, left)[i] for i in range(2)]
        floor = tuple((size[i] - k[i]) // st[i] + 1 for i in range(2))
        if floor != tuple(int(d or 0) for d in n.type.shape[2:]):
            raise BsnncError(
                f"NIR export: {n.where()}: NIR's pool (floor mode, padding {[t, left]} on both "
                f"sides) would make {list(floor)}, this one makes {list(n.type.shape[2:])} "
                "(ceil_mode or asymmetric padding)"
            )
        if (t, left) != (b, r):
            self.warn(n, f"asymmetric padding {[t, left, b, r]} exported as {[t, left]}")
        if n.attrs.get("ceil_mode"):
            self.warn(n, "ceil_mode exported as floor mode (the same output size here)")
        return t, left

    def _sum_pool(self, n: Node, kernel: tuple[int, int], pad: tuple[int, int]) -> bool:
        """With ``sum_pools``: the average pool as ``SumPool2d``, 1/(kh·kw) folded into the θ
        of the IF that alone reads it (exact: the window size is a power of two)."""
        if not self.sum_pools:
            return False
        readers = self.users.get(n.result, [])
        size = kernel[0] * kernel[1]
        if len(readers) != 1 or readers[0].op != "if" or n.result in self.g.outputs:
            raise BsnncError(
                f"NIR export: {n.where()}: --sum-pools folds an average pool's 1/(kh·kw) into "
                "the θ of the IF layer that alone reads it; this pool has no such reader"
            )
        if size & (size - 1):
            raise BsnncError(
                f"NIR export: {n.where()}: --sum-pools needs a power-of-two window (θ·{size} "
                f"is not exact for a {kernel[0]}×{kernel[1]} window)"
            )
        if any(pad) and not n.attrs.get("count_include_pad", True):
            raise BsnncError(
                f"NIR export: {n.where()}: --sum-pools: padding not counted in the divisor "
                "makes the divisor vary at the border"
            )
        stride = kernel if n.op == "global_avgpool" else attr_ints(n.attrs, "stride")
        node = self.nir.SumPool2d(
            kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(pad)
        )
        self.add(n, self.name(n), node, [n])
        self.theta_factor[readers[0].result] = size
        return True

    def op_avgpool(self, n: Node) -> None:
        pad = self._pool_checks(n)
        k = attr_ints(n.attrs, "kernel")
        if self._sum_pool(n, (k[0], k[1]), pad):
            return
        if any(pad) and not n.attrs.get("count_include_pad"):
            self.warn(n, "padding not counted in the divisor: NIR's AvgPool2d counts it")
        node = self.nir.AvgPool2d(
            kernel_size=np.array(attr_ints(n.attrs, "kernel")),
            stride=np.array(attr_ints(n.attrs, "stride")),
            padding=np.array(pad),
        )
        self.add(n, self.name(n), node, [n])

    def op_global_avgpool(self, n: Node) -> None:
        hw = np.array(self.shape(n.value_operands()[0])[1:3])
        if self._sum_pool(n, (int(hw[0]), int(hw[1])), (0, 0)):
            return
        node = self.nir.AvgPool2d(kernel_size=hw, stride=hw, padding=np.array([0, 0]))
        self.add(n, self.name(n), node, [n])

    def op_maxpool(self, n: Node) -> None:
        src = self.by_result[n.value_operands()[0]]
        if src.type.kind != Kind.SPIKE:
            raise BsnncError(
                f"NIR export: {n.where()}: max pooling of currents has no NIR node (max "
                "pooling of spikes is exported as SumPool2d then Threshold)"
            )
        if attr_ints(n.attrs, "dilation") != (1, 1):
            raise BsnncError(f"NIR export: {n.where()}: dilated max pooling has no NIR node")
        pad = self._pool_checks(n)
        pool = self.nir.SumPool2d(
            kernel_size=np.array(attr_ints(n.attrs, "kernel")),
            stride=np.array(attr_ints(n.attrs, "stride")),
            padding=np.array(pad),
        )
        self.add(n, self.name(n), pool, [n])
        name = self.name(n) + "_or"
        fire = self.nir.Threshold(threshold=np.full(self.shape(n.result), 0.5, np.float32))
        fire.metadata = {"bsnnc": json.dumps({"nodes": [], "part_of": self.name(n)})}
        self.nodes[name] = fire
        self.edges.append((self.name(n), name))
        self.sources[n.result] = [name]

    def op_flatten(self, n: Node) -> None:
        shape = np.array(self.shape(n.value_operands()[0]))
        node = self.nir.Flatten(input_type={"input": shape}, start_dim=0, end_dim=-1)
        self.add(n, self.name(n), node, [n])

    def op_if(self, n: Node) -> None:
        shape = self.shape(n.result)
        theta = np.asarray(channel_param(self.g, n, "theta"), np.float64).reshape(-1)
        per = theta.reshape((-1,) + (1,) * (len(shape) - 1)) if theta.size > 1 else theta
        factor = self.theta_factor.get(n.result, 1)
        full = np.ascontiguousarray(np.broadcast_to((per * factor).astype(np.float32), shape))
        node = self.nir.IF(
            r=np.ones(shape, np.float32), v_threshold=full, v_reset=np.zeros(shape, np.float32)
        )
        semantics: dict[str, Any] = {
            "reset": str(n.attrs["reset"]),
            "init": if_init(n.attrs),
            "fires": "v >= theta",
            "levels": if_levels(n.attrs),
        }
        if factor != 1:  # the sum pool before it: θ·(kh·kw) in NIR, θ in bsnnc
            semantics["theta_factor"] = factor
        self.add(n, self.name(n), node, [n], semantics=semantics)
        if np.any(theta.astype(np.float32).astype(np.float64) != theta):
            self.warn(n, "θ rounded to float32 (NIR stores float32 parameters here)")
        if n.attrs["reset"] == "subtract":
            self.warn(n, "subtractive reset (v -= θ) exported as v_reset = 0 (NIR has no flag)")
        if if_init(n.attrs):
            self.warn(n, f"membranes start at {if_init(n.attrs):g}·θ; NIR has no initial state")

    def op_add(self, n: Node) -> None:
        # NIR sums every input of a node: the merge is the reader's two incoming edges
        a, b = n.value_operands()
        self.sources[n.result] = [*self.sources[a], *self.sources[b]]
        inner = [*self.merges.get(a, []), *self.merges.get(b, [])]
        self.merges[n.result] = [*inner, _describe(self.g, n)]

    def op_readout(self, n: Node) -> None:
        shape = self.shape(n.result)
        self.add(n, self.name(n), self.nir.I(r=np.ones(shape, np.float32)), [n])


def to_nir(g: Graph, sum_pools: bool = False) -> NirExport:
    """The NIR graph of a spiking graph ``g`` (see the module docstring); raises
    :class:`BsnncError` naming the node for what NIR cannot express. Every approximation is
    listed in the result's ``warnings``; bsnnc's firing rule (v ≥ θ, NIR's text: v > θ) is
    always the first."""
    if not any(n.op == "readout" for n in g.nodes):
        raise BsnncError("NIR export needs a spiking graph (compile the model first)")
    out = _Exporter(g, sum_pools).run()
    out.warnings.insert(
        0,
        "bsnnc fires at v ≥ θ; NIR's IF text says v > θ (the same unless a membrane lands "
        "exactly on θ)",
    )
    return out
