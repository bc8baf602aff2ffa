"""One small converter per supported ONNX op (the table ``CONVERTERS``).

Binary-weight detection (XNOR-Net form ``W = α·sign(W)``): a weight whose magnitudes all equal
their mean α — per tensor, or per output channel — within a relative tolerance of 1e-5 is stored
as a ``bipolar`` constant of signs followed by ``scale`` by α, so that crossbar weights stay
exactly ±1 and α can later be folded into thresholds.

BatchNormalization ``y = γ·(x−μ)/√(σ²+ε) + β`` becomes ``scale(s) → bias(β − μ·s)`` with
``s = γ/√(σ²+ε)``, to be folded by later passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bsnnc.compiler.frontend import quantizers as Q
from bsnnc.compiler.frontend.context import BATCH, Ctx
from bsnnc.ir.types import Kind

Converter = Callable[[Ctx], None]
BINARY_RTOL = 1e-5


def _row_stats(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output channel: min, max and mean of |w| (in chunks: no full-size temporaries)."""
    rows = w.reshape(w.shape[0], -1)
    lo, hi, mean = (np.empty(rows.shape[0], np.float64) for _ in range(3))
    step = max(1, (1 << 22) // max(rows.shape[1], 1))
    for s in range(0, rows.shape[0], step):
        a = np.abs(rows[s : s + step])
        lo[s : s + step], hi[s : s + step] = a.min(axis=1), a.max(axis=1)
        mean[s : s + step] = a.mean(axis=1, dtype=np.float64)
    return lo, hi, mean


def detect_binary(w: np.ndarray) -> tuple[np.ndarray, float | np.ndarray] | None:
    """Signs (int8 ±1) and α (float, or per-output-channel array) if ``w = α·sign(w)``.

    ``|w|`` must lie within ``α·(1 ± 1e-5)`` everywhere, with α = mean|w| of the tensor (or of
    each output channel); no weight may be zero.
    """
    if w.size // max(w.shape[0], 1) < 2:
        return None
    lo, hi, mean = _row_stats(w)
    if not np.all(lo > 0):
        return None
    alpha: float | np.ndarray
    alpha = float(mean.mean())  # every row has the same length, so this is mean|w|
    if hi.max() > alpha * (1 + BINARY_RTOL) or lo.min() < alpha * (1 - BINARY_RTOL):
        if np.any(hi > mean * (1 + BINARY_RTOL)) or np.any(lo < mean * (1 - BINARY_RTOL)):
            return None
        alpha = mean.astype(np.float32)
    signs = (w > 0).astype(np.int8)
    signs *= 2
    signs -= 1
    return signs, alpha


def _weighted(ctx: Ctx, op: str, x: str, w: np.ndarray, wname: str, attrs: dict[str, Any]) -> str:
    """Emit conv2d/dense with weight ``w`` [out, ...]; binary weights become signs + scale."""
    b = ctx.builder
    found = detect_binary(w)
    if found is None:
        return ctx.emit(op, [x, b.const(wname, Kind.F32, w)], attrs)
    signs, alpha = found
    y = ctx.emit(op, [x, b.const(wname, Kind.BIPOLAR, signs)], attrs)
    if isinstance(alpha, float):
        return ctx.emit("scale", [y], {"factor": alpha})
    return ctx.emit("scale", [y, b.const(wname + ".alpha", Kind.F32, alpha)], {"axis": 1})


def _channel_vector(ctx: Ctx, c: np.ndarray, x: str, what: str) -> tuple[float, np.ndarray | None]:
    """A broadcast constant as a scalar, or as a per-channel vector along axis 1 of ``x``.

    ONNX broadcasting right-aligns shapes, so ``c`` is per-channel iff, padded with leading 1s
    to the rank of ``x``, its only non-1 dimension is axis 1 (e.g. [C] on [N,C], [C,1,1] on
    [N,C,H,W]).
    """
    c = np.asarray(c, dtype=np.float32)
    if c.size == 1:
        return float(c.reshape(())), None
    xt = ctx.type_of(x)
    padded = (1,) * (xt.rank - c.ndim) + tuple(c.shape)
    others = [d for i, d in enumerate(padded) if i != 1]
    if c.ndim <= xt.rank and xt.rank >= 2 and padded[1] == xt.shape[1] and set(others) <= {1}:
        return 0.0, c.reshape(-1)
    raise ctx.fail(
        f"{what} by a constant of shape {list(c.shape)} is supported only as a scalar or a "
        f"per-channel vector along axis 1 of {xt}"
    )


def _affine(ctx: Ctx, x: str, c: np.ndarray, op: str) -> str:
    """``scale``/``bias`` by an ONNX-broadcast constant (scalar or per channel)."""
    scalar, vec = _channel_vector(ctx, c, x, "Add" if op == "bias" else "Mul")
    if vec is None:
        return ctx.emit(op, [x], {"value" if op == "bias" else "factor": scalar})
    return _per_channel(ctx, x, vec, op)


def _per_channel(ctx: Ctx, x: str, vec: np.ndarray, op: str) -> str:
    """``scale``/``bias`` by a per-channel vector [C] along axis 1."""
    const = ctx.builder.const(f"{ctx.loc}.{op}", Kind.F32, vec.astype(np.float32).reshape(-1))
    return ctx.emit(op, [x, const], {"axis": 1})


def _split_binary(ctx: Ctx) -> tuple[str, np.ndarray]:
    """(value operand, constant) of a binary elementwise op with one constant side."""
    a, b = ctx.inputs()[:2]
    if ctx.is_const(a) and not ctx.is_const(b):
        return ctx.value(b), ctx.numeric(a, "constant operand")
    if ctx.is_const(b) and not ctx.is_const(a):
        return ctx.value(a), ctx.numeric(b, "constant operand")
    raise ctx.fail("only elementwise ops with one constant operand are supported here")


def conv_add(ctx: Ctx) -> None:
    """Add(x, c) → bias; Add(x, y) of two computed tensors (a residual merge) → add."""
    a, b = ctx.inputs()[:2]
    if not ctx.is_const(a) and not ctx.is_const(b):
        ctx.bind(0, _merge(ctx, [a, b]))
        return
    x, c = _split_binary(ctx)
    ctx.bind(0, _affine(ctx, x, c, "bias"))


def conv_sum(ctx: Ctx) -> None:
    """Sum(x₁, …, x_k) of computed tensors → a chain of add."""
    names = [i for i in ctx.inputs() if i]
    if any(ctx.is_const(i) for i in names):
        raise ctx.fail("Sum with a constant operand is not supported; use Add for a bias")
    ctx.bind(0, _merge(ctx, names) if len(names) > 1 else ctx.value(names[0]))


def conv_concat(ctx: Ctx) -> None:
    """Concat of computed tensors along the channels (axis 1) → a chain of concat."""
    names = [i for i in ctx.inputs() if i]
    if any(ctx.is_const(i) for i in names):
        raise ctx.fail("Concat with a constant operand is not supported")
    values = [ctx.value(n) for n in names]
    rank = ctx.type_of(values[0]).rank
    axis = int(ctx.attr("axis", 1))
    if axis % rank != 1 or rank < 2:
        raise ctx.fail(f"Concat is supported along the channels (axis 1) only, got axis={axis}")
    ctx.bind(0, _chain(ctx, "concat", values))


def _merge(ctx: Ctx, names: list[str]) -> str:
    """``add`` of computed tensors of one shape (no broadcasting between them)."""
    values = [ctx.value(n) for n in names]
    shapes = {ctx.type_of(v).shape for v in values}
    if len(shapes) > 1:
        got = ", ".join(f"'{n}' {ctx.type_of(v)}" for n, v in zip(names, values, strict=True))
        raise ctx.fail(
            f"a merge of computed tensors must have one shape (no broadcasting), got {got}"
        )
    return _chain(ctx, "add", values)


def _chain(ctx: Ctx, op: str, values: list[str]) -> str:
    """``op`` (a binary merge) over ``values`` left to right: ``op(op(v₀, v₁), v₂) …``."""
    y = values[0]
    for v in values[1:]:
        y = ctx.emit(op, [y, v])
    return y


def conv_sub(ctx: Ctx) -> None:
    """Sub(x, c) → bias(−c)."""
    a, b = ctx.inputs()[:2]
    if ctx.is_const(a):
        raise ctx.fail("Sub with a constant minuend (c − x) is not supported; use x − c")
    ctx.bind(0, _affine(ctx, ctx.value(a), -ctx.numeric(b, "subtrahend"), "bias"))


def conv_mul(ctx: Ctx) -> None:
    """Mul(x, c) → scale."""
    x, c = _split_binary(ctx)
    ctx.bind(0, _affine(ctx, x, c, "scale"))


def conv_div(ctx: Ctx) -> None:
    """Div(x, c) → scale(1/c)."""
    a, b = ctx.inputs()[:2]
    if ctx.is_const(a):
        raise ctx.fail("Div with a constant dividend (c / x) is not supported")
    c = ctx.numeric(b, "divisor").astype(np.float64)
    ctx.bind(0, _affine(ctx, ctx.value(a), (1.0 / c).astype(np.float32), "scale"))


def conv_identity(ctx: Ctx) -> None:
    """Identity and inference-mode Dropout are removed (an Identity of a constant — the
    classic exporter's deduplicated initializers — names the same constant)."""
    assert ctx.node is not None
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise ctx.fail("the Dropout mask output is used; export the model in eval mode")
    x = ctx.inputs()[0]
    if ctx.is_const(x):
        ctx.consts[ctx.node.output[0]] = ctx.consts[x]
        return
    ctx.bind(0, ctx.value(x))


def conv_relu(ctx: Ctx) -> None:
    """Relu → relu (of an unsigned quantizer's output, ≥ 0 already: nothing)."""
    x = ctx.value(ctx.inputs()[0])
    ctx.bind(0, x if ctx.builder.producer(x).op == "quant" else ctx.emit("relu", [x]))


def _same_pads(ctx: Ctx, x: str, k: list[int], s: list[int], d: list[int]) -> list[int]:
    mode = ctx.str_attr("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        pads = list(ctx.attr("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise ctx.fail(f"expected 4 pads for a 2-D window, got {pads}")
        return pads
    if mode == "VALID":
        return [0, 0, 0, 0]
    hw = ctx.type_of(x).shape[2:]
    begin, end = [], []
    for size, kk, ss, dd in zip(hw, k, s, d, strict=True):
        assert size is not None
        total = max((-(-size // ss) - 1) * ss + (kk - 1) * dd + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return [begin[0], begin[1], end[0], end[1]]


def _need_4d(ctx: Ctx, x: str) -> None:
    t = ctx.type_of(x)
    if t.rank != 4:
        raise ctx.fail(f"only 2-D (NCHW) inputs are supported, got {t}")


def conv_conv(ctx: Ctx) -> None:
    """Conv (group 1, 2-D) → conv2d [+ scale α] [+ bias]."""
    ins = ctx.inputs()
    x = ctx.value(ins[0])
    _need_4d(ctx, x)
    w = ctx.numeric(ins[1], "weight").astype(np.float32, copy=False)
    group = int(ctx.attr("group", 1))
    if group != 1:
        kind = "depthwise" if w.shape[1] == 1 else "grouped"  # one input channel per group
        raise ctx.fail(
            f"{kind} convolution (group={group}) is not supported: a crossbar layer maps a "
            "dense K×N matrix; replace it with a group=1 convolution"
        )
    k = [int(v) for v in w.shape[2:]]
    s = list(ctx.attr("strides", [1, 1]))
    d = list(ctx.attr("dilations", [1, 1]))
    attrs = {"stride": tuple(s), "dilation": tuple(d), "pad": tuple(_same_pads(ctx, x, k, s, d))}
    y = _weighted(ctx, "conv2d", x, w, ins[1], attrs)
    if len(ins) > 2 and ins[2]:
        y = _per_channel(ctx, y, ctx.numeric(ins[2], "bias"), "bias")
    ctx.bind(0, y)


def conv_gemm(ctx: Ctx) -> None:
    """Gemm(A, B, C) with constant B → dense [+ scale] [+ bias]."""
    ins = ctx.inputs()
    if int(ctx.attr("transA", 0)):
        raise ctx.fail("Gemm with transA=1 is not supported")
    x = ctx.value(ins[0])
    b = ctx.numeric(ins[1], "weight B").astype(np.float32, copy=False)
    w = b if int(ctx.attr("transB", 0)) else b.T
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    y = _weighted(ctx, "dense", x, np.ascontiguousarray(w), ins[1], {})
    if alpha != 1.0:
        y = ctx.emit("scale", [y], {"factor": alpha})
    if len(ins) > 2 and ins[2]:
        y = _affine(ctx, y, beta * ctx.numeric(ins[2], "bias C"), "bias")
    ctx.bind(0, y)


def conv_matmul(ctx: Ctx) -> None:
    """MatMul(A [N,in], B [in,out] constant) → dense with W = Bᵀ."""
    ins = ctx.inputs()
    x = ctx.value(ins[0])
    if ctx.type_of(x).rank != 2:
        raise ctx.fail(f"MatMul is supported on 2-D inputs only, got {ctx.type_of(x)}")
    b = ctx.numeric(ins[1], "weight B").astype(np.float32, copy=False)
    if b.ndim != 2:
        raise ctx.fail(f"MatMul weight must be 2-D, got shape {list(b.shape)}")
    ctx.bind(0, _weighted(ctx, "dense", x, np.ascontiguousarray(b.T), ins[1], {}))


def conv_batchnorm(ctx: Ctx) -> None:
    """BatchNormalization (inference) → scale(γ/√(σ²+ε)) → bias(β − μ·s)."""
    assert ctx.node is not None
    if int(ctx.attr("training_mode", 0)) or len([o for o in ctx.node.output if o]) > 1:
        raise ctx.fail("BatchNormalization in training mode; export the model in eval mode")
    ins = ctx.inputs()
    x = ctx.value(ins[0])
    gamma, beta, mean, var = (
        ctx.numeric(n, "BatchNormalization parameter").astype(np.float64) for n in ins[1:5]
    )
    s = gamma / np.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
    y = _per_channel(ctx, x, s, "scale")
    ctx.bind(0, _per_channel(ctx, y, beta - mean * s, "bias"))


def _pool_attrs(ctx: Ctx, x: str, dilated: bool) -> dict[str, Any]:
    k = list(ctx.attr("kernel_shape", []))
    if len(k) != 2:
        raise ctx.fail(f"only 2-D pooling is supported, kernel_shape={k}")
    s = list(ctx.attr("strides", [1, 1]))
    d = list(ctx.attr("dilations", [1, 1]))
    if not dilated and d != [1, 1]:
        raise ctx.fail(f"dilated average pooling (dilations={d}) is not supported")
    attrs: dict[str, Any] = {
        "kernel": tuple(k),
        "stride": tuple(s),
        "pad": tuple(_same_pads(ctx, x, k, s, d)),
        "ceil_mode": bool(ctx.attr("ceil_mode", 0)),
    }
    if dilated:
        attrs["dilation"] = tuple(d)
    return attrs


def conv_avgpool(ctx: Ctx) -> None:
    """AveragePool → avgpool."""
    x = ctx.value(ctx.inputs()[0])
    _need_4d(ctx, x)
    attrs = _pool_attrs(ctx, x, dilated=False)
    attrs["count_include_pad"] = bool(ctx.attr("count_include_pad", 0))
    ctx.bind(0, ctx.emit("avgpool", [x], attrs))


def conv_maxpool(ctx: Ctx) -> None:
    """MaxPool → maxpool (the Indices output must be unused)."""
    assert ctx.node is not None
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise ctx.fail("MaxPool's Indices output is not supported")
    x = ctx.value(ctx.inputs()[0])
    _need_4d(ctx, x)
    ctx.bind(0, ctx.emit("maxpool", [x], _pool_attrs(ctx, x, dilated=True)))


def conv_global_avgpool(ctx: Ctx) -> None:
    """GlobalAveragePool → global_avgpool."""
    x = ctx.value(ctx.inputs()[0])
    _need_4d(ctx, x)
    ctx.bind(0, ctx.emit("global_avgpool", [x]))


def conv_flatten(ctx: Ctx) -> None:
    """Flatten(axis=1) → flatten."""
    x = ctx.value(ctx.inputs()[0])
    rank = ctx.type_of(x).rank
    axis = int(ctx.attr("axis", 1))
    if axis not in (1, 1 - rank) and not (rank == 1 + 0 and axis == 0):
        raise ctx.fail(f"Flatten with axis={axis} is not supported (only axis=1 keeps the batch)")
    ctx.bind(0, ctx.emit("flatten", [x]))


def conv_reshape(ctx: Ctx) -> None:
    """Reshape that keeps the batch axis → flatten (2-D target) or reshape."""
    ins = ctx.inputs()
    x = ctx.value(ins[0])
    xt = ctx.type_of(x)
    per_sample = xt.numel_per_sample()
    if ctx.is_const(ins[1]):
        target = [int(v) for v in ctx.consts[ins[1]].reshape(-1)]
        rest = _reshape_rest(ctx, target, per_sample)
    else:
        assert ctx.node is not None
        inferred = ctx.shapes.get(ctx.node.output[0])
        if inferred is None or len(inferred) != 2:
            raise ctx.fail(
                "Reshape with a shape computed at run time is supported only when ONNX "
                "shape inference shows a 2-D result [batch, features]"
            )
        rest = [per_sample]
    if len(rest) == 1:
        ctx.bind(0, ctx.emit("flatten", [x]))
    else:
        ctx.bind(0, ctx.emit("reshape", [x], {"shape": tuple(rest)}))


def _reshape_rest(ctx: Ctx, target: list[int], per_sample: int) -> list[int]:
    """Per-sample dims of a Reshape target whose first entry is the batch: 0 (copy), −1, the
    symbolic batch of a computed shape, or the model's fixed batch size."""
    if not target or target[0] not in (0, -1, BATCH, *ctx.fixed_batch):
        raise ctx.fail(f"Reshape target {target} does not keep the batch axis first")
    rest = target[1:]
    if rest.count(-1) > 1 or 0 in rest or BATCH in rest or min(rest, default=1) < -1:
        raise ctx.fail(f"Reshape target {target} is not supported (it must keep the batch axis)")
    known = int(np.prod([d for d in rest if d != -1])) if rest else 1
    if -1 in rest:
        rest = [per_sample // known if d == -1 else d for d in rest]
    if int(np.prod(rest)) != per_sample:
        raise ctx.fail(
            f"Reshape target {target} mixes the batch axis with features ({per_sample} per "
            "sample); only reshapes that keep the batch axis are supported"
        )
    return rest


def conv_reducemean(ctx: Ctx) -> None:
    """ReduceMean over H and W (how exporters write adaptive average pooling to 1×1)."""
    ins = ctx.inputs()
    x = ctx.value(ins[0])
    rank = ctx.type_of(x).rank
    axes = ctx.attr("axes", None)
    if len(ins) > 1 and ins[1]:
        axes = [int(a) for a in ctx.const(ins[1], "axes").reshape(-1)]
    if axes is None or sorted(a % rank for a in axes) != [2, 3] or rank != 4:
        raise ctx.fail(f"ReduceMean is supported only over axes [2, 3] of a 4-D tensor, got {axes}")
    y = ctx.emit("global_avgpool", [x])
    ctx.bind(0, y if int(ctx.attr("keepdims", 1)) else ctx.emit("flatten", [y]))


CONVERTERS: dict[str, Converter] = {
    "Add": conv_add,
    "Clip": Q.conv_clip,
    "Concat": conv_concat,
    "DequantizeLinear": Q.conv_dequantize_linear,
    "QuantizeLinear": Q.conv_quantize_linear,
    "AveragePool": conv_avgpool,
    "BatchNormalization": conv_batchnorm,
    "Conv": conv_conv,
    "Div": conv_div,
    "Dropout": conv_identity,
    "Flatten": conv_flatten,
    "Gemm": conv_gemm,
    "GlobalAveragePool": conv_global_avgpool,
    "Identity": conv_identity,
    "MatMul": conv_matmul,
    "MaxPool": conv_maxpool,
    "Mul": conv_mul,
    "Relu": conv_relu,
    "ReduceMean": conv_reducemean,
    "Reshape": conv_reshape,
    "Sub": conv_sub,
    "Sum": conv_sum,
}
