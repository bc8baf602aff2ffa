"""The numpy ANN reference: executes an IR graph as the original (non-spiking) network.

Each op has one function here (dispatch table ``ANN_KERNELS``); values are float32 (or float64
when the input is float64: every kernel computes in the float type of its first operand, and
0/1 spike inputs compute in float32), and ``i32`` values of exact integer products are kept as
float32 too (exact below 2^24).
Intermediate values are freed after their last use, so memory stays near the two largest
activations of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping

import numpy as np

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Attrs, Graph, Node, attr_float, attr_int, attr_ints
from bsnnc.ir.ops import if_levels, if_step
from bsnnc.runtime import kernels as K

Kernel = Callable[[list[np.ndarray], Attrs], np.ndarray]


def _pair(a: Attrs, key: str) -> tuple[int, int]:
    v = attr_ints(a, key)
    return v[0], v[1]


def _pads(a: Attrs) -> K.Pads:
    v = attr_ints(a, "pad")
    return v[0], v[1], v[2], v[3]


def _float(x: np.ndarray) -> type[np.floating]:
    """The float type an op computes in: float64 for float64 inputs, float32 otherwise."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _affine(xs: list[np.ndarray], a: Attrs, key: str, add: bool) -> np.ndarray:
    """``x + value [+ b[c]]`` or ``x · factor [· s[c]]``: the attribute applies per tensor,
    the optional constant per channel along ``axis``."""
    dt = _float(xs[0])
    x = xs[0].astype(dt, copy=False)
    p = np.full((), attr_float(a, key), dtype=dt)
    if len(xs) > 1:
        c = K.channel_broadcast(xs[1].astype(dt), x.ndim, attr_int(a, "axis"))
        p = (p + c) if add else (p * c)
    return np.asarray((x + p) if add else (x * p), dtype=dt)


ANN_KERNELS: dict[str, Kernel] = {
    "conv2d": lambda xs, a: _conv2d(xs, a, winograd=False),
    "dense": lambda xs, a: K.dense(xs[0].astype(_float(xs[0]), copy=False), xs[1]),
    "avgpool": lambda xs, a: K.avgpool(
        xs[0],
        _pair(a, "kernel"),
        _pair(a, "stride"),
        _pads(a),
        bool(a["ceil_mode"]),
        bool(a["count_include_pad"]),
        _float(xs[0]),
    ),
    "maxpool": lambda xs, a: K.maxpool(
        xs[0],
        _pair(a, "kernel"),
        _pair(a, "stride"),
        _pads(a),
        _pair(a, "dilation"),
        bool(a["ceil_mode"]),
    ),
    "global_avgpool": lambda xs, a: K.global_avgpool(xs[0], _float(xs[0])),
    "flatten": lambda xs, a: xs[0].reshape(xs[0].shape[0], -1),
    "reshape": lambda xs, a: xs[0].reshape(xs[0].shape[0], *attr_ints(a, "shape")),
    "relu": lambda xs, a: np.maximum(xs[0], 0).astype(xs[0].dtype, copy=False),
    "quant": lambda xs, a: _quant(xs, a),
    "add": lambda xs, a: np.add(xs[0], xs[1], dtype=_float(xs[0])),
    "concat": lambda xs, a: np.concatenate(
        [xs[0].astype(_float(xs[0]), copy=False), xs[1].astype(_float(xs[0]), copy=False)], axis=1
    ),
    "scale": lambda xs, a: _affine(xs, a, "factor", add=False),
    "bias": lambda xs, a: _affine(xs, a, "value", add=True),
    "if": lambda xs, a: _if_rate(xs, a),
    "readout": lambda xs, a: xs[0].astype(_float(xs[0]), copy=False),
}


#: in calibration (:func:`kernels_for`), float64 3×3 stride-1 convolutions of at least this
#: many multiply-accumulates per image run as Winograd F(4×4, 3×3)
#: (:mod:`bsnnc.runtime.winograd`): the bulk of CIFAR- and ImageNet-sized networks (VGG-15
#: ImageNet: 3.4× less time in its convolutions). Smaller ones (the digits models: ≤ 5 M)
#: stay direct, and compiling them never loads numba (0.6 s, 70 MB).
WINOGRAD_MIN_MACS = 1 << 24
#: …when a whole run of them adds up to at least this many (images × per image): below it,
#: numba's start-up (0.6 s, 70 MB) costs more than Winograd saves (ResNet-18 with 16
#: calibration images: 27 G, 3.5 s either way)
WINOGRAD_MIN_RUN_MACS = 1 << 36


def winograd_ok(
    kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...], macs: int
) -> bool:
    """Whether calibration runs a convolution as Winograd: 3×3, stride 1, dilation 1 and at
    least :data:`WINOGRAD_MIN_MACS` multiply-accumulates (``macs``) per image."""
    square = tuple(kernel) == (3, 3) and tuple(stride) == tuple(dilation) == (1, 1)
    return square and macs >= WINOGRAD_MIN_MACS


def node_winograd_macs(g: Graph, n: Node) -> int:
    """Per image, the multiply-accumulates of conv2d ``n`` if calibration runs it as
    Winograd (:func:`winograd_ok`), else 0."""
    w = [int(d or 1) for d in g.constants[n.const_operands()[0]].type.shape]
    macs = int(n.type.shape[2] or 1) * int(n.type.shape[3] or 1) * math.prod(w)
    ok = winograd_ok(
        tuple(w[2:]), attr_ints(n.attrs, "stride"), attr_ints(n.attrs, "dilation"), macs
    )
    return macs if ok else 0


def winograd_macs(g: Graph) -> int:
    """Per image, the multiply-accumulates of ``g``'s convolutions that calibration runs as
    Winograd (:func:`node_winograd_macs`)."""
    return sum(node_winograd_macs(g, n) for n in g.nodes if n.op == "conv2d")


def _conv2d(xs: list[np.ndarray], a: Attrs, winograd: bool) -> np.ndarray:
    """``conv2d`` in the float type of its input: in float64 (and with ``winograd``), a
    convolution :func:`winograd_ok` accepts by Winograd, the others by im2col and one GEMM
    (:func:`bsnnc.runtime.kernels.conv2d`). Only calibration asks for Winograd
    (:func:`kernels_for`); :data:`ANN_KERNELS`, which the spiking runtime also calls, is
    direct."""
    x, w = xs[0].astype(_float(xs[0]), copy=False), xs[1]
    stride, dilation, pads = _pair(a, "stride"), _pair(a, "dilation"), _pads(a)
    if winograd and x.dtype == np.float64:
        oh, ow = x.shape[2] + pads[0] + pads[2] - 2, x.shape[3] + pads[1] + pads[3] - 2
        if winograd_ok(w.shape[2:], stride, dilation, oh * ow * math.prod(w.shape)):
            from bsnnc.runtime import winograd as wg  # numba compiles it: loaded only when used

            return wg.conv3x3(x, wg.filter_transform(w), pads)
    return K.conv2d(x, w, stride, pads, dilation)


def kernels_for(images: int, g: Graph) -> Mapping[str, Kernel]:
    """The ANN kernels for a float64 run of ``g`` on ``images`` images (calibration):
    Winograd for its large 3×3 layers when they add up to :data:`WINOGRAD_MIN_RUN_MACS`,
    else :data:`ANN_KERNELS` (all direct)."""
    if images * winograd_macs(g) >= WINOGRAD_MIN_RUN_MACS:
        return {**ANN_KERNELS, "conv2d": lambda xs, a: _conv2d(xs, a, winograd=True)}
    return ANN_KERNELS


def quantize(x: np.ndarray, step: np.ndarray | float, levels: int) -> np.ndarray:
    """``clip(round(x / step), 0, levels)``, ties to even (QONNX's ``ROUND``, ONNX's
    QuantizeLinear), computed in the float type of ``x`` / ``step``."""
    return np.clip(np.rint(x / step), 0, levels)


def _quant(xs: list[np.ndarray], a: Attrs) -> np.ndarray:
    """``quant``: ``Δ · clip(round(x / Δ), 0, L)`` in the input's float type (as QONNX's Quant
    and ONNX's Quantize/DequantizeLinear compute it)."""
    dt = _float(xs[0])
    step = np.asarray(attr_float(a, "step"), dtype=dt)
    return np.asarray(quantize(xs[0].astype(dt, copy=False), step, attr_int(a, "levels")) * step)


def _if_rate(xs: list[np.ndarray], a: Attrs) -> np.ndarray:
    """The ANN reading of an IF neuron: its firing rate without the clip at 1, relu(x)/θ.

    With θ = 1 (before threshold normalization) it is exactly ``relu``; after normalization the
    graph read this way reproduces the original ANN (the folded network is equivalent).

    An IF that stands for a quantized activation (``levels`` L > 0) reads as
    ``Δ · clip(round(x / Δ), 0, L) / θ`` with Δ the ``step`` it carries before folding (θ = 1
    then: exactly the ``quant`` it replaced), θ / L after (the rate in multiples of 1/L).
    """
    dt = _float(xs[0])
    x = xs[0].astype(dt, copy=False)
    theta = np.full((), attr_float(a, "theta"), dtype=np.float64)
    if len(xs) > 1:
        theta = theta * K.channel_broadcast(xs[1].astype(np.float64), x.ndim, attr_int(a, "axis"))
    levels = if_levels(a)
    if levels:
        step = np.asarray(if_step(a) or theta / levels, dtype=dt)
        return np.asarray(quantize(x, step, levels) * (step / theta), dtype=dt)
    rate = np.maximum(x, 0).astype(dt, copy=False)
    return rate if len(xs) == 1 and theta == 1.0 else np.asarray(rate / theta, dtype=dt)


def last_uses(g: Graph, keep: Collection[str] = ()) -> dict[int, list[str]]:
    """Node index → the values whose last reader it is (outputs and ``keep`` are never freed)."""
    last: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.value_operands():
            last[v] = i
    out: dict[int, list[str]] = {}
    for v, i in last.items():
        if v not in g.outputs and v not in keep:
            out.setdefault(i, []).append(v)
    return out


def _operands(g: Graph, n: Node, env: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [env[o[1:]] if o.startswith("%") else g.constants[o[1:]].array() for o in n.operands]


def run_nodes(
    g: Graph,
    first: int,
    stop: int,
    env: dict[str, np.ndarray],
    frees: dict[int, list[str]],
    observe: Callable[[str, np.ndarray], None] | None = None,
    kernels: Mapping[str, Kernel] = ANN_KERNELS,
) -> None:
    """Execute nodes ``first`` ≤ i < ``stop`` of ``g`` on the values in ``env`` (updated in
    place) with ``kernels``, dropping each value after its last reader (``frees``, from
    :func:`last_uses`); ``observe(name, value)`` sees every value as it is computed."""
    for i in range(first, stop):
        n = g.nodes[i]
        if n.op == "input":
            continue
        kernel = kernels.get(n.op)
        if kernel is None:
            raise BsnncError(
                f"{n.where()}: op '{n.op}' has no ANN reference kernel "
                "(spiking ops run in the SNN runtime)"
            )
        env[n.result] = kernel(_operands(g, n, env), n.attrs)
        if observe is not None:
            observe(n.result, env[n.result])
        for v in frees.get(i, []):
            env.pop(v, None)


def check_input(g: Graph, x: np.ndarray) -> str:
    """The name of ``g``'s single input, after checking ``x``'s per-sample shape against it."""
    inputs = g.inputs()
    if len(inputs) != 1:
        raise BsnncError(f"the ANN reference needs exactly one input, graph has {len(inputs)}")
    expected = inputs[0].type.shape[1:]
    if tuple(x.shape[1:]) != expected:
        raise BsnncError(
            f"input batch has per-sample shape {list(x.shape[1:])}, "
            f"the model expects {list(expected)}"
        )
    return inputs[0].result


def run_ann(
    g: Graph, x: np.ndarray, keep: Collection[str] = (), dtype: type[np.floating] = np.float32
) -> dict[str, np.ndarray]:
    """Run ``g`` on the batch ``x`` (fed to its single input); returns output name → array,
    plus the values named in ``keep`` (e.g. every IF layer, for calibration). Every value is
    computed in ``dtype`` (float32, as onnxruntime does, or float64 for calibration)."""
    name = check_input(g, x)
    env: dict[str, np.ndarray] = {name: np.ascontiguousarray(x, dtype=dtype)}
    run_nodes(g, 0, len(g.nodes), env, last_uses(g, keep))
    return {o: env[o] for o in [*g.outputs, *keep]}


def run_ann_batched(g: Graph, x: np.ndarray, batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """:func:`run_ann` over ``x`` in chunks of ``batch`` images."""
    for start in range(0, x.shape[0], batch):
        yield run_ann(g, x[start : start + batch])
