"""Small ONNX models made in code (fixed seeds) that the tests and golden files use.

Each builder returns an ``onnx.ModelProto`` with one float32 input ``x`` (dynamic batch) and one
output ``y``. Binary layers have weights exactly ``α·sign(W)`` (per tensor or per channel).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A tiny sequential ONNX graph builder."""

    def __init__(self, name: str, shape: tuple[int, ...], seed: int, opset: int = 13) -> None:
        self.name, self.opset = name, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.cur, self.i = "x", 0
        self.shape = shape

    def _name(self, prefix: str) -> str:
        self.i += 1
        return f"{prefix}{self.i}"

    def init(self, array: np.ndarray, prefix: str = "w") -> str:
        """Add an initializer; returns its name."""
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: tuple[int, ...], binary: str | None) -> np.ndarray:
        """He-normal weights; ``binary`` ∈ {None, "tensor", "channel"} gives α·sign(W)."""
        fan_in = int(np.prod(shape[1:]))
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
        if binary == "tensor":
            return (np.where(w > 0, 1, -1) * np.abs(w).mean()).astype(np.float32)
        if binary == "channel":
            alpha = np.abs(w).reshape(shape[0], -1).mean(axis=1)
            alpha = alpha.reshape((-1,) + (1,) * (len(shape) - 1))
            return (np.where(w > 0, 1, -1) * alpha).astype(np.float32)
        return w

    def op(self, op_type: str, extra_inputs: list[str] | None = None, **attrs: object) -> Net:
        """Append ``op_type(cur, *extra_inputs)``."""
        out = self._name(op_type.lower())
        ins = [self.cur, *(extra_inputs or [])]
        self.nodes.append(helper.make_node(op_type, ins, [out], name=out, **attrs))
        self.cur = out
        return self

    def conv(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        binary: str | None = None,
        bias: bool = False,
        **attrs: object,
    ) -> Net:
        """Conv with a fresh weight (and bias)."""
        w = self.init(self.weight((cout, cin, k, k), binary))
        extra = [w] + (
            [self.init(self.rng.normal(0, 0.1, cout).astype(np.float32), "b")] if bias else []
        )
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", extra, kernel_shape=[k, k], **attrs)

    def gemm(self, fin: int, fout: int, binary: str | None = None, bias: bool = False) -> Net:
        """Gemm with transB=1."""
        w = self.init(self.weight((fout, fin), binary))
        extra = [w] + (
            [self.init(self.rng.normal(0, 0.1, fout).astype(np.float32), "b")] if bias else []
        )
        return self.op("Gemm", extra, transB=1)

    def model(self) -> onnx.ModelProto:
        """The finished, checked model."""
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *self.shape])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])
        self.nodes.append(helper.make_node("Identity", [self.cur], ["y"], name="out"))
        g = helper.make_graph(self.nodes, self.name, [x], [y], self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def avg_before_relu() -> onnx.ModelProto:
    """The paper's arrangement: conv → avgpool → relu, binary middle layers (per-tensor α)."""
    n = Net("avg_before_relu", (1, 8, 8), seed=1)
    n.conv(1, 8).op("Relu")
    n.conv(8, 16, binary="tensor").op("AveragePool", kernel_shape=[2, 2], strides=[2, 2]).op("Relu")
    n.conv(16, 16, binary="tensor").op(
        "AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
    )
    n.op("Relu").op("Flatten", axis=1).gemm(64, 32, binary="tensor").op("Relu").gemm(32, 10)
    return n.model()


def max_ceil() -> onnx.ModelProto:
    """Max pooling with ceil_mode, pads and odd sizes; per-channel α."""
    n = Net("max_ceil", (3, 11, 11), seed=2)
    n.conv(3, 8, pads=[0, 0, 0, 0]).op("Relu")  # 9x9
    n.conv(8, 12, binary="channel").op("Relu").op(
        "MaxPool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
    )
    n.conv(12, 12, binary="channel").op(
        "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
    ).op("Relu")
    n.op("GlobalAveragePool").op("Flatten", axis=1).gemm(12, 5)
    return n.model()


def avg_after_relu() -> onnx.ModelProto:
    """Avg pooling after ReLU with pads, count_include_pad and ceil_mode; stride-2 conv."""
    n = Net("avg_after_relu", (2, 10, 10), seed=3)
    n.conv(2, 6, strides=[2, 2]).op("Relu")  # 5x5
    n.conv(6, 8, binary="tensor").op("Relu")
    n.op(
        "AveragePool",
        kernel_shape=[3, 3],
        strides=[2, 2],
        pads=[1, 1, 1, 1],
        count_include_pad=1,
        ceil_mode=1,
    )
    n.conv(8, 8, binary="tensor", dilations=[2, 2], pads=[2, 2, 2, 2]).op("Relu")
    n.op("AveragePool", kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1])
    n.op("Flatten", axis=1).gemm(8 * 3 * 3, 4)
    return n.model()


def bn_bias() -> onnx.ModelProto:
    """Conv with bias, BatchNormalization (a negative γ), Gemm with bias, Mul/Add constants."""
    n = Net("bn_bias", (3, 6, 6), seed=4)
    n.conv(3, 4, bias=True)
    c = 4
    gamma = np.array([1.5, -0.5, 0.8, 1.0], np.float32)
    params = [gamma, n.rng.normal(0, 0.1, c), n.rng.normal(0, 0.1, c), n.rng.uniform(0.5, 2, c)]
    names = [n.init(np.asarray(p, np.float32), "bn") for p in params]
    n.op("BatchNormalization", names, epsilon=1e-3).op("Relu")
    n.conv(4, 8, binary="tensor", bias=True).op("Relu")
    n.op("Mul", [n.init(np.array(0.5, np.float32), "k")])
    n.op("Add", [n.init(n.rng.normal(0, 0.1, (1, 8, 1, 1)).astype(np.float32), "k")])
    n.op("Flatten", axis=1).gemm(8 * 36, 6, bias=True)
    return n.model()


def matmul_reshape() -> onnx.ModelProto:
    """Reshape with a constant [0, -1] target, MatMul + Add, Dropout, SAME_UPPER padding."""
    n = Net("matmul_reshape", (1, 7, 7), seed=5, opset=17)
    w = n.init(n.weight((4, 1, 3, 3), None))
    n.op("Conv", [w], kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]).op("Relu")  # 4x4
    n.op("Reshape", [n.init(np.array([0, -1], np.int64), "shape")])
    n.op("Dropout")
    n.op("MatMul", [n.init(n.weight((16, 64), "tensor").T.copy(), "w")])
    n.op("Add", [n.init(n.rng.normal(0, 0.1, 16).astype(np.float32), "b")]).op("Relu")
    n.op("MatMul", [n.init(n.weight((3, 16), None).T.copy(), "w")])
    return n.model()


def sign_scale() -> onnx.ModelProto:
    """A weight computed in-graph as Sign(W) · ReduceMean(Abs(W)) (folded at import)."""
    n = Net("sign_scale", (2, 5, 5), seed=6)
    n.conv(2, 4).op("Relu")
    raw = n.init(n.weight((6, 4, 3, 3), None), "raw")
    n.nodes += [
        helper.make_node("Sign", [raw], ["sgn"], name="sign"),
        helper.make_node("Abs", [raw], ["absw"], name="abs"),
        helper.make_node(
            "ReduceMean", ["absw"], ["alpha"], name="mean", axes=[1, 2, 3], keepdims=1
        ),
        helper.make_node("Mul", ["sgn", "alpha"], ["wb"], name="binarize"),
    ]
    n.op("Conv", ["wb"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]).op("Relu")
    n.op("GlobalAveragePool").op("Flatten").gemm(6, 3)
    return n.model()


def vgg_small() -> onnx.ModelProto:
    """A VGG-like stack at opset 18 (5 conv, 3 pools, two linear) with binary middle layers."""
    n = Net("vgg_small", (3, 16, 16), seed=7, opset=18)
    n.conv(3, 8).op("Relu").conv(8, 8, binary="tensor")
    n.op("AveragePool", kernel_shape=[2, 2], strides=[2, 2]).op("Relu")
    n.conv(8, 16, binary="tensor").op("Relu").conv(16, 16, binary="tensor")
    n.op("AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1).op("Relu")
    n.conv(16, 16, binary="tensor").op(
        "AveragePool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
    ).op("Relu")
    n.op("Flatten", axis=1).gemm(16 * 2 * 2, 32, binary="tensor").op("Relu").gemm(32, 10)
    return n.model()


def gap_binary() -> onnx.ModelProto:
    """Global average pooling after ReLU feeding a binary linear layer (an IF is inserted)."""
    n = Net("gap_binary", (3, 8, 8), seed=8)
    n.conv(3, 8).op("Relu").conv(8, 16, binary="tensor").op("Relu")
    n.op("GlobalAveragePool").op("Flatten", axis=1)
    n.gemm(16, 12, binary="tensor").op("Relu").gemm(12, 4)
    return n.model()


def residual() -> onnx.ModelProto:
    """Two residual blocks: an identity shortcut (merged by Sum; a biased, per-channel-α
    branch) and a projection shortcut (avg-pool, then a 1×1 binary conv, as Add's first
    operand) beside a stride-2 branch; then GAP and a linear classifier."""
    n = Net("residual", (3, 8, 8), seed=9)
    n.conv(3, 8).op("Relu")
    skip = n.cur
    n.conv(8, 8, binary="tensor").op("Relu").conv(8, 8, binary="channel", bias=True)
    n.op("Sum", [skip]).op("Relu")
    block_in = n.cur
    n.conv(8, 16, binary="tensor", strides=[2, 2]).op("Relu").conv(16, 16, binary="tensor")
    main = n.cur
    n.cur = block_in
    n.op("AveragePool", kernel_shape=[2, 2], strides=[2, 2]).conv(8, 16, k=1, binary="tensor")
    n.op("Add", [main]).op("Relu")
    n.op("GlobalAveragePool").op("Flatten", axis=1).gemm(16, 5)
    return n.model()


def dense_concat() -> onnx.ModelProto:
    """DenseNet-style: the stem's spikes concatenated with a binary layer's (and a pooled
    concatenation of three), read by binary layers."""
    n = Net("dense_concat", (2, 8, 8), seed=10)
    n.conv(2, 4).op("Relu")
    stem = n.cur
    n.conv(4, 4, binary="tensor").op("Relu")
    grown = n.cur
    n.op("Concat", [stem], axis=1)
    n.conv(8, 6, binary="channel").op("Relu")
    n.op("Concat", [grown, stem], axis=1)  # 6 + 4 + 4 channels
    n.op("AveragePool", kernel_shape=[2, 2], strides=[2, 2])
    n.conv(14, 8, binary="tensor").op("Relu")
    n.op("GlobalAveragePool").op("Flatten", axis=1).gemm(8, 4)
    return n.model()


ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "avg_before_relu": avg_before_relu,
    "max_ceil": max_ceil,
    "avg_after_relu": avg_after_relu,
    "bn_bias": bn_bias,
    "matmul_reshape": matmul_reshape,
    "sign_scale": sign_scale,
    "vgg_small": vgg_small,
    "gap_binary": gap_binary,
    "residual": residual,
    "dense_concat": dense_concat,
}
