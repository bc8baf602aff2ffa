"""Quantizers: QONNX (``Quant``, ``BipolarQuant``) and the QCDQ form of standard ONNX.

On constants (weights) a quantizer is evaluated at import, with QONNX's reference semantics::

    Quant(x, s, z, b)   = s · (clip(round(x / s + z), n_min, n_max) − z)
    BipolarQuant(x, s)  = s · (+1 if x ≥ 0 else −1)

where ``[n_min, n_max]`` is ``[0, 2^b − 1 − narrow]`` unsigned and ``[−2^(b−1) + narrow,
2^(b−1) − 1]`` signed, and ``round`` follows ``rounding_mode``. A ±1 weight times α then meets
the binary-weight detection of Conv/Gemm/MatMul like any ``sign(W)·α`` weight.

On activations only a rectified, zero-offset quantizer has a spiking form: a ``quant {step Δ,
levels L}`` node, ``Δ · clip(round(x / Δ), 0, L)`` with ties to even, which the conversion turns
into an IF layer of threshold L·Δ. Accepted are ``Quant`` with zero point 0 and
``rounding_mode=ROUND`` — unsigned (L = 2^b − 1 − narrow; it clips at 0 itself, so it may follow
a ReLU or stand for one) or signed after a ReLU (L = 2^(b−1) − 1) — and ``QuantizeLinear →
[Clip →] DequantizeLinear`` with one scale, zero point 0 and an integer range starting at or
below 0 (L = the range's top). ``BipolarQuant`` on activations (±1 activations: a BNN, not a
B-SNN), ``Trunc``, ``MultiThreshold`` and the other QONNX ops are refused by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from bsnnc.compiler.frontend.context import Ctx, node_label
from bsnnc.ir.ops import MAX_LEVELS

#: the domains QONNX ops are exported in (Brevitas ≥ 0.8, FINN, older Brevitas).
QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general", "onnx.brevitas")

_REFUSED = {
    "Trunc": "it truncates the low bits of an already quantized value (average-pool "
    "requantization); export the pooling without Trunc (e.g. a QuantReLU after the pool)",
    "MultiThreshold": "it is FINN's streamlined thresholding form; import the model before "
    "streamlining (the Quant/BipolarQuant export)",
}


def qonnx_refusal(node: onnx.NodeProto) -> str:
    """Why a QONNX op other than Quant and BipolarQuant is not imported."""
    why = _REFUSED.get(node.op_type, "only Quant and BipolarQuant are supported")
    return f"{node_label(node)}: QONNX op {node.op_type} is not supported: {why}"


def int_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """``(n_min, n_max)`` of a ``bits``-bit integer (QONNX's min_int / max_int)."""
    if signed:
        return -(1 << (bits - 1)) + int(narrow), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(narrow)


_ROUNDING: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ROUND": np.round,  # ties to even, as numpy and QONNX's reference
    "HALF_EVEN": np.round,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "ROUND_TO_ZERO": np.trunc,
}


@dataclass(frozen=True)
class QuantParams:
    """The constant operands and attributes of a QONNX ``Quant``."""

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    signed: bool
    narrow: bool
    rounding: str


def _quant_params(ctx: Ctx) -> QuantParams:
    ins = ctx.inputs()
    if len(ins) != 4:
        raise ctx.fail(f"Quant takes 4 inputs (x, scale, zero_point, bit_width), got {len(ins)}")
    scale = ctx.numeric(ins[1], "scale").astype(np.float32)
    zp = ctx.numeric(ins[2], "zero point").astype(np.float32)
    bw = ctx.numeric(ins[3], "bit width")
    if bw.size != 1 or float(bw.reshape(())) != round(float(bw.reshape(()))):
        raise ctx.fail(f"bit width must be one integer, got {bw.reshape(-1)[:4].tolist()}")
    bits = int(bw.reshape(()))
    if not 1 <= bits <= 16:
        raise ctx.fail(f"bit width {bits} is not supported (1..16)")
    if np.any(scale <= 0):
        raise ctx.fail(f"scale must be > 0, got {scale.reshape(-1)[:4].tolist()}")
    rounding = ctx.str_attr("rounding_mode", "ROUND").upper()
    if rounding not in _ROUNDING:
        raise ctx.fail(f"rounding_mode {rounding} is unknown (known: {', '.join(_ROUNDING)})")
    signed, narrow = bool(ctx.attr("signed", 1)), bool(ctx.attr("narrow", 0))
    return QuantParams(scale, zp, bits, signed, narrow, rounding)


def fold_quant(ctx: Ctx) -> None:
    """``Quant`` on a constant: QONNX's reference computation, in float32."""
    p = _quant_params(ctx)
    x = ctx.numeric(ctx.inputs()[0], "quantized constant").astype(np.float32)
    lo, hi = int_range(p.bits, p.signed, p.narrow)
    y = np.clip(x / p.scale + p.zero_point, lo, hi)
    ctx.consts[_out(ctx)] = np.asarray(
        (_ROUNDING[p.rounding](y) - p.zero_point) * p.scale, dtype=np.float32
    )


def fold_bipolar(ctx: Ctx) -> None:
    """``BipolarQuant`` on a constant: ``s · (x ≥ 0 ? +1 : −1)``."""
    ins = ctx.inputs()
    x = ctx.numeric(ins[0], "bipolar-quantized constant").astype(np.float32)
    s = ctx.numeric(ins[1], "scale").astype(np.float32)
    if np.any(s <= 0):
        raise ctx.fail(f"scale must be > 0, got {s.reshape(-1)[:4].tolist()}")
    ctx.consts[_out(ctx)] = np.where(x >= 0, np.float32(1), np.float32(-1)) * s


def _out(ctx: Ctx) -> str:
    assert ctx.node is not None
    return str(ctx.node.output[0])


def _one_step(ctx: Ctx, scale: np.ndarray) -> float:
    """The single step of an activation quantizer (per-channel steps have no one threshold)."""
    flat = np.unique(scale.reshape(-1))
    if flat.size != 1:
        raise ctx.fail(
            f"per-channel activation scales ({scale.size} values, {flat.min():.4g}.."
            f"{flat.max():.4g}) are not supported: an IF layer's input current has one scale; "
            "quantize the activation per tensor"
        )
    return float(flat[0])


def _levels(ctx: Ctx, levels: int) -> int:
    if not 1 <= levels <= MAX_LEVELS:
        raise ctx.fail(
            f"an activation quantizer with {levels} levels is not supported: an IF layer "
            f"reproduces 1..{MAX_LEVELS} levels (about one time step per level)"
        )
    return levels


def _rectified(ctx: Ctx, x: str) -> bool:
    """Whether the value ``x`` is known to be ≥ 0 (a ReLU's or a quantizer's output)."""
    return ctx.builder.producer(x).op in ("relu", "quant")


def conv_quant(ctx: Ctx) -> None:
    """``Quant`` on an activation → ``quant {step, levels}`` (see the module docstring)."""
    p = _quant_params(ctx)
    x = ctx.value(ctx.inputs()[0])
    if np.any(p.zero_point != 0):
        raise ctx.fail(
            f"zero point {p.zero_point.reshape(-1)[:4].tolist()} is not supported on "
            "activations: spike counts start at 0 (export with zero_point 0, e.g. Brevitas "
            "QuantReLU)"
        )
    if p.rounding != "ROUND":
        raise ctx.fail(
            f"rounding_mode {p.rounding} is not supported on activations: the half-threshold "
            "IF start reproduces round-to-nearest (export with rounding_mode ROUND)"
        )
    if p.signed and not _rectified(ctx, x):
        raise ctx.fail(
            "a signed quantizer on a value that no ReLU rectified (a quantizer before the "
            "ReLU?): negative levels cannot be spikes; quantize after the ReLU (QuantReLU) "
            "or with signed=0"
        )
    lo, hi = int_range(p.bits, p.signed, p.narrow)
    if hi < 1 or lo > 0:
        raise ctx.fail(f"{p.bits}-bit quantizer has no positive levels (range [{lo}, {hi}])")
    step = _one_step(ctx, p.scale)
    ctx.bind(0, ctx.emit("quant", [x], {"step": step, "levels": _levels(ctx, hi)}))


def conv_bipolar(ctx: Ctx) -> None:
    """``BipolarQuant`` on an activation: refused (±1 activations are a BNN's, not spikes)."""
    raise ctx.fail(
        "BipolarQuant on an activation makes ±1 activations (a binary neural network, not a "
        "binary-weight spiking one); use it on weights only, with ReLU + Quant activations"
    )


@dataclass
class PendingQuantize:
    """A QuantizeLinear on an activation, waiting for its (Clip and) DequantizeLinear."""

    x: str
    scale: np.ndarray
    zero_point: np.ndarray
    lo: int
    hi: int
    label: str


_INT_RANGES: dict[int, tuple[int, int]] = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
}


def _zero_point_range(ctx: Ctx, zp: np.ndarray | None) -> tuple[int, int]:
    if zp is None:
        dtype = int(ctx.attr("output_dtype", onnx.TensorProto.UINT8) or onnx.TensorProto.UINT8)
    else:
        dtype = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
    if dtype not in _INT_RANGES:
        name = onnx.TensorProto.DataType.Name(dtype)
        raise ctx.fail(f"QuantizeLinear to {name} is not supported (8- or 16-bit integers only)")
    return _INT_RANGES[dtype]


def conv_quantize_linear(ctx: Ctx) -> None:
    """``QuantizeLinear`` on an activation: remembered until its DequantizeLinear."""
    ins = ctx.inputs()
    x = ctx.value(ins[0])
    if int(ctx.attr("block_size", 0) or 0):
        raise ctx.fail("blocked quantization (block_size) is not supported on activations")
    scale = ctx.numeric(ins[1], "scale").astype(np.float32)
    zp = ctx.const(ins[2], "zero point") if len(ins) > 2 and ins[2] else None
    lo, hi = _zero_point_range(ctx, zp)
    zero = np.zeros(1, np.int64) if zp is None else zp.astype(np.int64)
    assert ctx.node is not None
    ctx.pending[ctx.node.output[0]] = PendingQuantize(x, scale, zero, lo, hi, node_label(ctx.node))


def conv_clip(ctx: Ctx) -> None:
    """``Clip`` inside a QCDQ chain narrows the integer range; elsewhere it is refused."""
    ins = ctx.inputs()
    q = ctx.pending.get(ins[0])
    if q is None:
        raise ctx.fail(
            "Clip on activations is supported only between QuantizeLinear and "
            "DequantizeLinear (a QCDQ quantizer); use Relu for rectification"
        )
    bounds = []
    for i, default in ((1, q.lo), (2, q.hi)):
        if len(ins) > i and ins[i]:
            v = ctx.const(ins[i], "Clip bound").reshape(-1)
            if v.size != 1 or float(v[0]) != round(float(v[0])):
                raise ctx.fail(f"Clip bound '{ins[i]}' must be one integer, got {v[:4].tolist()}")
            bounds.append(int(v[0]))
        else:
            bounds.append(default)
    assert ctx.node is not None
    ctx.pending[ctx.node.output[0]] = PendingQuantize(
        q.x, q.scale, q.zero_point, max(q.lo, bounds[0]), min(q.hi, bounds[1]), q.label
    )


def conv_dequantize_linear(ctx: Ctx) -> None:
    """``DequantizeLinear`` closing a QCDQ chain → ``quant {step, levels}``."""
    ins = ctx.inputs()
    q = ctx.pending.get(ins[0])
    if q is None:
        raise ctx.fail(
            f"input '{ins[0]}' is not a QuantizeLinear output: DequantizeLinear is supported on "
            "activations only as the end of QuantizeLinear → [Clip →] DequantizeLinear"
        )
    scale = ctx.numeric(ins[1], "scale").astype(np.float32)
    zp = ctx.const(ins[2], "zero point").astype(np.int64) if len(ins) > 2 and ins[2] else None
    if not np.array_equal(scale, q.scale) or (zp is not None and np.any(zp != q.zero_point)):
        raise ctx.fail(f"scale and zero point must equal those of {q.label}")
    if np.any(q.zero_point != 0):
        raise ctx.fail(
            f"zero point {q.zero_point.reshape(-1)[:4].tolist()} of {q.label} is not supported "
            "on activations: spike counts start at 0 (quantize with zero point 0)"
        )
    if q.lo > 0 or q.hi < 1:
        raise ctx.fail(f"the integer range [{q.lo}, {q.hi}] of {q.label} has no zero level")
    if q.lo < 0 and not _rectified(ctx, q.x):
        raise ctx.fail(
            f"{q.label} quantizes a value that no ReLU rectified (a quantizer before the "
            "ReLU?) to a signed range: negative levels cannot be spikes"
        )
    step = _one_step(ctx, scale)
    ctx.bind(0, ctx.emit("quant", [q.x], {"step": step, "levels": _levels(ctx, q.hi)}))
