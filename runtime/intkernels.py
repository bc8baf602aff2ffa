"""Exact products of 0/1 spikes with ±1 weights, computed by onnxruntime.

Every binary layer's product is an exact integer: float32 GEMM/convolution is exact for it
(each partial sum is an integer far below 2^24), and so is onnxruntime's MatMulInteger
(uint8 × int8 → int32). One small ONNX session per layer, built once and reused for every
batch and every timestep.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _session(
    nodes: list[onnx.NodeProto], x_type: int, y_type: int, inits: list[onnx.TensorProto]
) -> ort.InferenceSession:
    x = helper.make_tensor_value_info("x", x_type, None)
    y = helper.make_tensor_value_info("y", y_type, None)
    g = helper.make_graph(nodes, "layer", [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class SpikeConv:
    """``conv2d(spikes, ±1)`` over a [B, C, H, W] uint8 batch → float32 exact integers."""

    def __init__(
        self,
        w: np.ndarray,
        stride: tuple[int, int],
        pad: tuple[int, int, int, int],
        dilation: tuple[int, int],
    ) -> None:
        nodes = [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node(
                "Conv",
                ["xf", "w"],
                ["y"],
                strides=list(stride),
                pads=list(pad),
                dilations=list(dilation),
            ),
        ]
        inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
        self.sess = _session(nodes, TensorProto.UINT8, TensorProto.FLOAT, inits)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.sess.run(None, {"x": np.ascontiguousarray(s, dtype=np.uint8)})[0]
        return out


class SpikeDense:
    """``spikes [B, K] · Wᵀ`` with W [N, K] ±1, via MatMulInteger (uint8 × int8 → int32)."""

    def __init__(self, w: np.ndarray) -> None:
        nodes = [helper.make_node("MatMulInteger", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T.astype(np.int8)), "w")]
        self.sess = _session(nodes, TensorProto.UINT8, TensorProto.INT32, inits)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.sess.run(None, {"x": np.ascontiguousarray(s, dtype=np.uint8)})[0]
        return out.astype(np.float32)
