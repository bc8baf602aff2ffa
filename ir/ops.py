"""The closed op table: each op's operands, attributes (with defaults) and type inference.

Shape arithmetic (per spatial axis, input size ``H``, kernel ``k``, stride ``s``, dilation ``d``,
pads ``p0`` before and ``p1`` after)::

    out = floor((H + p0 + p1 - d·(k-1) - 1) / s) + 1            (conv, pools, floor mode)
    out = ceil( (H + p0 + p1 - d·(k-1) - 1) / s) + 1            (pools, ceil_mode)
          minus 1 if the last window would start in the end padding: (out-1)·s ≥ H + p0

Element kinds: a conv/dense of ``spike`` inputs with ``bipolar`` weights is an exact ``i32``
sum; anything involving ``f32`` is ``f32``. An ``if`` neuron maps currents to ``spike``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from bsnnc.ir.errors import VerifyError
from bsnnc.ir.graph import Attrs, AttrValue, Constant, Graph, Node, attr_float, attr_int
from bsnnc.ir.types import Dim, Kind, TensorType

Infer = Callable[[Sequence[TensorType], Attrs], TensorType]


@dataclass(frozen=True)
class AttrSpec:
    """Schema of one attribute: ``kind`` ∈ int, float, str, bool, ints, floats."""

    kind: str
    default: AttrValue | None = None
    length: int | None = None
    choices: tuple[str, ...] | None = None
    #: absent means 0 (and 0 is normalized away), so graphs that do not use it print as before
    optional: bool = False

    @property
    def required(self) -> bool:
        """Attributes without a default must be given (unless optional)."""
        return self.default is None and not self.optional


class Trait(Enum):
    """Facts about an op that passes, runtimes and backends ask instead of listing op names."""

    #: ``y = x · W`` with a constant weight as the second operand (conv2d, dense): a crossbar
    #: layer when W is ``bipolar``.
    WEIGHTED = "weighted"
    #: a window over H and W (or all of them).
    POOL = "pool"
    #: a positive-homogeneous linear map of its input (f(c·x) = c·f(x), f(x + y) = f(x) + f(y)
    #: per window): average pools. Scales and biases commute with it channel by channel.
    LINEAR_POOL = "linear-pool"
    #: only moves elements (flatten, reshape).
    SHAPE = "shape"
    #: per-tensor/per-channel ``x·s`` or ``x + b`` (scale, bias).
    AFFINE = "affine"
    #: 0/1 spikes in give 0/1 spikes out, so the op passes spike trains through unchanged in
    #: meaning (maxpool of spikes, flatten, reshape).
    SPIKE_PASS_THROUGH = "spike-pass-through"


@dataclass(frozen=True)
class OpDef:
    """One op: operand slots (``value``, ``const`` or optional ``const?``), attributes, inference,
    traits.

    ``infer`` is ``None`` only for ``input``, whose type is declared.
    """

    name: str
    summary: str
    operands: tuple[str, ...]
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    infer: Infer | None = None
    traits: frozenset[Trait] = frozenset()


def _fail(msg: str) -> VerifyError:
    return VerifyError(msg)


def _need_rank(t: TensorType, rank: int, what: str) -> None:
    if t.rank != rank:
        raise _fail(f"{what} must have rank {rank}, got {t}")


def _need_kind(t: TensorType, kinds: Sequence[Kind], what: str) -> None:
    if t.kind not in kinds:
        allowed = ", ".join(k.value for k in kinds)
        raise _fail(f"{what} must be one of {allowed}, got {t}")


def window_out(size: int, k: int, s: int, d: int, p0: int, p1: int, ceil_mode: bool) -> int:
    """Output length of a sliding window (see the module docstring)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if span < 0:
        raise _fail(f"window {k} (dilation {d}) larger than padded input {size + p0 + p1}")
    if not ceil_mode:
        return span // s + 1
    out = -(-span // s) + 1
    if (out - 1) * s >= size + p0:
        out -= 1
    return out


def _ints(attrs: Attrs, key: str) -> tuple[int, ...]:
    v = attrs[key]
    assert isinstance(v, tuple)
    return tuple(int(x) for x in v)


def _spatial(x: TensorType, attrs: Attrs, kernel: tuple[int, int], ceil: bool) -> tuple[int, int]:
    stride, pad = _ints(attrs, "stride"), _ints(attrs, "pad")
    dil = _ints(attrs, "dilation") if "dilation" in attrs else (1, 1)
    h, w = x.shape[2], x.shape[3]
    if h is None or w is None:
        raise _fail(f"spatial dimensions must be static, got {x}")
    if min(stride) < 1 or min(dil) < 1 or min(pad) < 0 or min(kernel) < 1:
        raise _fail("kernel, stride and dilation must be ≥ 1 and pads ≥ 0")
    oh = window_out(h, kernel[0], stride[0], dil[0], pad[0], pad[2], ceil)
    ow = window_out(w, kernel[1], stride[1], dil[1], pad[1], pad[3], ceil)
    return oh, ow


def _mac_kind(x: TensorType, w: TensorType) -> Kind:
    return Kind.I32 if x.kind == Kind.SPIKE and w.kind == Kind.BIPOLAR else Kind.F32


def _infer_conv2d(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, w = ts[0], ts[1]
    _need_rank(x, 4, "conv2d input")
    _need_rank(w, 4, "conv2d weight")
    _need_kind(x, (Kind.F32, Kind.SPIKE), "conv2d input")
    _need_kind(w, (Kind.F32, Kind.BIPOLAR), "conv2d weight")
    if x.shape[1] != w.shape[1]:
        raise _fail(f"conv2d input has {x.shape[1]} channels but weight expects {w.shape[1]}")
    kh, kw = int(w.shape[2] or 0), int(w.shape[3] or 0)
    oh, ow = _spatial(x, attrs, (kh, kw), False)
    return TensorType(_mac_kind(x, w), (x.shape[0], w.shape[0], oh, ow))


def _infer_dense(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x, w = ts[0], ts[1]
    _need_rank(x, 2, "dense input")
    _need_rank(w, 2, "dense weight [out, in]")
    _need_kind(x, (Kind.F32, Kind.SPIKE), "dense input")
    _need_kind(w, (Kind.F32, Kind.BIPOLAR), "dense weight")
    if x.shape[1] != w.shape[1]:
        raise _fail(f"dense input has {x.shape[1]} features but weight expects {w.shape[1]}")
    return TensorType(_mac_kind(x, w), (x.shape[0], w.shape[0]))


def _infer_pool(out_kind: Kind | None) -> Infer:
    def infer(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        x = ts[0]
        _need_rank(x, 4, "pool input")
        _need_kind(x, (Kind.F32, Kind.SPIKE, Kind.I32), "pool input")
        k = _ints(attrs, "kernel")
        oh, ow = _spatial(x, attrs, (k[0], k[1]), bool(attrs["ceil_mode"]))
        return TensorType(out_kind or x.kind, (x.shape[0], x.shape[1], oh, ow))

    return infer


def _infer_global_avgpool(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = ts[0]
    _need_rank(x, 4, "global_avgpool input")
    _need_kind(x, (Kind.F32, Kind.SPIKE, Kind.I32), "global_avgpool input")
    return TensorType(Kind.F32, (x.shape[0], x.shape[1], 1, 1))


def _infer_flatten(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = ts[0]
    if x.rank < 2:
        raise _fail(f"flatten input must have rank ≥ 2, got {x}")
    return x.with_shape((x.shape[0], x.numel_per_sample()))


def _infer_reshape(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    x = ts[0]
    shape = _ints(attrs, "shape")
    if any(d < 1 for d in shape) or math.prod(shape) != x.numel_per_sample():
        raise _fail(f"reshape of {x} to per-sample shape {list(shape)} changes the element count")
    dims: tuple[Dim, ...] = (x.shape[0], *shape)
    return x.with_shape(dims)


def _infer_same(kinds: Sequence[Kind], out: Kind | None = None) -> Infer:
    def infer(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        _need_kind(ts[0], kinds, "input")
        return ts[0].with_kind(out) if out else ts[0]

    return infer


def _channel_param(ts: Sequence[TensorType], attrs: Attrs, what: str) -> None:
    """Check an optional per-channel constant (shape [C] along ``axis``)."""
    x = ts[0]
    axis = attr_int(attrs, "axis") if "axis" in attrs else 1
    if not 0 <= axis < x.rank:
        raise _fail(f"{what} axis {axis} out of range for {x}")
    if len(ts) > 1:
        p = ts[1]
        _need_kind(p, (Kind.F32,), f"{what} constant")
        if p.shape != (x.shape[axis],):
            raise _fail(f"{what} constant must have shape [{x.shape[axis]}], got {p}")


def _infer_affine(what: str) -> Infer:
    def infer(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
        _need_kind(ts[0], (Kind.F32, Kind.I32, Kind.SPIKE), f"{what} input")
        _channel_param(ts, attrs, what)
        return ts[0].with_kind(Kind.F32)

    return infer


def _infer_if(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    _need_kind(ts[0], (Kind.F32, Kind.I32), "if input current")
    _channel_param(ts, attrs, "if threshold")
    if attr_float(attrs, "theta") <= 0:
        raise _fail(f"if threshold must be > 0, got {attrs['theta']}")
    init = if_init(attrs)
    if not (0.0 <= init <= 1.0 and on_init_grid(init)):
        raise _fail(
            f"if init must be a multiple of 1/{1 << INIT_BITS} in [0, 1] (a fraction of θ), "
            f"got {init!r}"
        )
    levels, step = if_levels(attrs), if_step(attrs)
    if not 0 <= levels <= MAX_LEVELS:
        raise _fail(f"if levels must be in [0, {MAX_LEVELS}] (0: not quantized), got {levels}")
    if step < 0 or (step > 0 and levels == 0) or not math.isfinite(step):
        raise _fail(f"if step must be > 0 and only given with levels, got step={step!r}")
    return ts[0].with_kind(Kind.SPIKE)


def _infer_add(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    a, b = ts[0], ts[1]
    for t, what in ((a, "add first operand"), (b, "add second operand")):
        _need_kind(t, (Kind.F32, Kind.I32, Kind.SPIKE), what)
    if a.shape != b.shape:
        raise _fail(f"add operands must have the same shape, got {a} and {b}")
    return a.with_kind(Kind.F32)


def _infer_concat(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    a, b = ts[0], ts[1]
    for t, what in ((a, "concat first operand"), (b, "concat second operand")):
        _need_kind(t, (Kind.F32, Kind.I32, Kind.SPIKE), what)
    same = a.rank == b.rank >= 2 and a.shape[2:] == b.shape[2:]
    if not same or a.shape[1] is None or b.shape[1] is None:
        raise _fail(f"concat operands must differ only in their channels (axis 1), got {a} and {b}")
    kind = Kind.SPIKE if a.kind == b.kind == Kind.SPIKE else Kind.F32
    return TensorType(kind, (a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:]))


def _infer_quant(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    _need_kind(ts[0], (Kind.F32, Kind.I32), "quant input")
    step, levels = attr_float(attrs, "step"), attr_int(attrs, "levels")
    if not (step > 0 and math.isfinite(step)):
        raise _fail(f"quant step must be a finite number > 0, got {attrs['step']!r}")
    if not 1 <= levels <= MAX_LEVELS:
        raise _fail(f"quant levels must be in [1, {MAX_LEVELS}], got {levels}")
    return ts[0].with_kind(Kind.F32)


def _infer_readout(ts: Sequence[TensorType], attrs: Attrs) -> TensorType:
    _need_kind(ts[0], (Kind.F32, Kind.I32), "readout input")
    return ts[0].with_kind(Kind.F32)


_WIN = {
    "kernel": AttrSpec("ints", length=2),
    "stride": AttrSpec("ints", length=2),
    "pad": AttrSpec("ints", (0, 0, 0, 0), length=4),
    "ceil_mode": AttrSpec("bool", False),
}
_AXIS = AttrSpec("int", 1)

OPS: dict[str, OpDef] = {
    op.name: op
    for op in [
        OpDef("input", "graph input (declared type; batch dimension dynamic)", ()),
        OpDef(
            "conv2d",
            "2-D cross-correlation, group 1; pad = [top, left, bottom, right]",
            ("value", "const"),
            {
                "stride": AttrSpec("ints", (1, 1), length=2),
                "pad": AttrSpec("ints", (0, 0, 0, 0), length=4),
                "dilation": AttrSpec("ints", (1, 1), length=2),
            },
            _infer_conv2d,
            frozenset({Trait.WEIGHTED}),
        ),
        OpDef(
            "dense",
            "y = x · Wᵀ with W [out, in]",
            ("value", "const"),
            {},
            _infer_dense,
            frozenset({Trait.WEIGHTED}),
        ),
        OpDef(
            "avgpool",
            "average pooling (count_include_pad as in ONNX)",
            ("value",),
            {**_WIN, "count_include_pad": AttrSpec("bool", False)},
            _infer_pool(Kind.F32),
            frozenset({Trait.POOL, Trait.LINEAR_POOL}),
        ),
        OpDef(
            "maxpool",
            "max pooling (of currents, or of spikes: spikes stay spikes)",
            ("value",),
            {**_WIN, "dilation": AttrSpec("ints", (1, 1), length=2)},
            _infer_pool(None),
            frozenset({Trait.POOL, Trait.SPIKE_PASS_THROUGH}),
        ),
        OpDef(
            "global_avgpool",
            "mean over H and W",
            ("value",),
            {},
            _infer_global_avgpool,
            frozenset({Trait.POOL, Trait.LINEAR_POOL}),
        ),
        OpDef(
            "flatten",
            "[N, ...] → [N, Π ...]",
            ("value",),
            {},
            _infer_flatten,
            frozenset({Trait.SHAPE, Trait.SPIKE_PASS_THROUGH}),
        ),
        OpDef(
            "reshape",
            "[N, ...] → [N, *shape] (per-sample shape)",
            ("value",),
            {"shape": AttrSpec("ints")},
            _infer_reshape,
            frozenset({Trait.SHAPE, Trait.SPIKE_PASS_THROUGH}),
        ),
        OpDef("relu", "max(x, 0)", ("value",), {}, _infer_same((Kind.F32, Kind.I32))),
        OpDef("add", "a + b (a residual merge; same shapes)", ("value", "value"), {}, _infer_add),
        OpDef(
            "concat",
            "[a, b] along the channels (axis 1); spikes stay spikes",
            ("value", "value"),
            {},
            _infer_concat,
            frozenset({Trait.SPIKE_PASS_THROUGH}),
        ),
        OpDef(
            "quant",
            "unsigned uniform quantizer: step · clip(round(x / step), 0, levels), ties to even",
            ("value",),
            {"step": AttrSpec("float"), "levels": AttrSpec("int")},
            _infer_quant,
        ),
        OpDef(
            "scale",
            "y = x · factor [· s[c] along axis, with a per-channel constant]",
            ("value", "const?"),
            {"factor": AttrSpec("float", 1.0), "axis": _AXIS},
            _infer_affine("scale"),
            frozenset({Trait.AFFINE}),
        ),
        OpDef(
            "bias",
            "y = x + value [+ b[c] along axis, with a per-channel constant]",
            ("value", "const?"),
            {"value": AttrSpec("float", 0.0), "axis": _AXIS},
            _infer_affine("bias"),
            frozenset({Trait.AFFINE}),
        ),
        OpDef(
            "if",
            "integrate-and-fire: v(0) = init·θ; v += z; s = v ≥ θ; v -= θ (subtract) or v = 0 "
            "(zero); θ = theta [· θ[c]]; levels > 0: the ANN it stands for quantizes (step "
            "· clip(round(z / step), 0, levels) / θ, step = θ / levels unless given)",
            ("value", "const?"),
            {
                "theta": AttrSpec("float", 1.0),
                "reset": AttrSpec("str", "subtract", choices=("subtract", "zero")),
                "axis": _AXIS,
                "init": AttrSpec("float", optional=True),
                "levels": AttrSpec("int", optional=True),
                "step": AttrSpec("float", optional=True),
            },
            _infer_if,
        ),
        OpDef(
            "readout",
            "accumulate the final layer's current over timesteps (no threshold)",
            ("value",),
            {},
            _infer_readout,
        ),
    ]
}


def has_trait(op: str, *traits: Trait) -> bool:
    """True when op ``op`` has any of ``traits`` (unknown ops have none)."""
    d = OPS.get(op)
    return d is not None and any(t in d.traits for t in traits)


def ops_with(trait: Trait) -> tuple[str, ...]:
    """The ops that have ``trait``, in table order."""
    return tuple(name for name, d in OPS.items() if trait in d.traits)


def weight_of(g: Graph, n: Node) -> Constant:
    """The weight constant of a :attr:`Trait.WEIGHTED` node."""
    return g.constants[n.const_operands()[0]]


def is_binary_layer(g: Graph, n: Node) -> bool:
    """A weighted node whose weights are ``bipolar`` (±1): a crossbar layer of the B-SNN."""
    return has_trait(n.op, Trait.WEIGHTED) and weight_of(g, n).type.kind == Kind.BIPOLAR


def layer_ops(g: Graph, n: Node) -> int:
    """Operations per image of a weighted node (the paper's formulas): a convolution costs
    ``nIP·kH·kW·nOP·oH·oW``, a dense layer ``iS·oS``."""
    w = weight_of(g, n).type.shape
    if n.op == "conv2d":
        cin, kh, kw, cout = int(w[1] or 0), int(w[2] or 0), int(w[3] or 0), int(w[0] or 0)
        oh, ow = int(n.type.shape[2] or 0), int(n.type.shape[3] or 0)
        return cin * kh * kw * cout * oh * ow
    return int(w[0] or 0) * int(w[1] or 0)


#: an IF threshold keeps at least this many significant bits on its dyadic grid.
THRESHOLD_BITS = 20


#: an ``if`` neuron's initial membrane is ``init``·θ with ``init`` a multiple of 2^-INIT_BITS, so
#: that on the threshold's dyadic grid Θ·2^u it is an integer m·Θ in the unit 2^(u − INIT_BITS)
INIT_BITS = 8


def if_init(attrs: Attrs) -> float:
    """An ``if`` node's initial membrane as a fraction of θ (0 when the attribute is absent)."""
    return attr_float(attrs, "init") if "init" in attrs else 0.0


#: the most levels a quantized activation may have: an IF layer needs about ``levels`` time
#: steps to reproduce it, so 8-bit activations (255 levels) are the practical limit.
MAX_LEVELS = 255


def if_levels(attrs: Attrs) -> int:
    """L of an ``if`` that stands for a quantized activation with L levels (0: none)."""
    return attr_int(attrs, "levels") if "levels" in attrs else 0


def if_step(attrs: Attrs) -> float:
    """The quantizer step Δ an ``if`` carries before threshold folding (0: none, Δ = θ/L)."""
    return attr_float(attrs, "step") if "step" in attrs else 0.0


def on_init_grid(f: float) -> bool:
    """Whether ``f`` is a multiple of 2^-INIT_BITS."""
    scaled = f * (1 << INIT_BITS)
    return math.isfinite(scaled) and scaled == round(scaled)


def threshold_unit(theta: np.ndarray) -> int:
    """The exponent u of the dyadic threshold grid 2^u: ⌊log2 min θ⌋ − :data:`THRESHOLD_BITS`,
    so that every θ = Θ·2^u with an integer Θ of at least 20 significant bits."""
    return int(np.floor(np.log2(np.min(theta)))) - THRESHOLD_BITS


def normalize_attrs(op: OpDef, attrs: Attrs) -> Attrs:
    """Fill defaults and coerce types so that equal meanings print identically."""
    out: Attrs = {}
    for key, spec in op.attrs.items():
        value = attrs.get(key, spec.default)
        if value is None or (spec.optional and value == 0):
            continue
        out[key] = coerce_attr(spec, value)
    for key in attrs:
        if key not in op.attrs:
            out[key] = attrs[key]
    return dict(sorted(out.items()))


def coerce_attr(spec: AttrSpec, value: AttrValue) -> AttrValue:
    """Coerce an int given for a float attribute (and lists) to the declared kind."""
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.kind == "floats" and isinstance(value, tuple):
        return tuple(float(v) for v in value)
    if spec.kind == "ints" and isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return value
