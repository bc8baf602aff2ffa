"""Blocked products of 0/1 spikes with crossbar cells, computed by onnxruntime: the tile
simulator's kernel for perturbed conductances (float64 on a dyadic grid, so every sum is
exact), and a second implementation of the ±1 case that the bit-packed kernels
(:mod:`bsnnc.runtime.bitkernels`) are tested against. One small ONNX session per layer, built
once and reused for every batch and every timestep.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _session(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[tuple[str, int]]
) -> ort.InferenceSession:
    """A session over one uint8 input ``x`` with the given (name, element type) outputs."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, None)
    ys = [helper.make_tensor_value_info(name, t, None) for name, t in outputs]
    g = helper.make_graph(nodes, "layer", [x], ys, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # outputs are returned to numpy: an arena would keep every chunk's peak for the process
    opts.enable_cpu_mem_arena = False
    # many small sessions share 2 cores: idle pool threads must sleep, not spin
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


class BlockedSpikeMatMul:
    """One crossbar layer in one session: the input rows [M, K] (uint8 spikes) are split into
    the row blocks ``bounds`` (one per array row range); each block is a product with its
    weights [K_b, N] — exact uint8 × int8 → int32 for ±1 weights; float64 for perturbed
    conductances, which lie on a dyadic grid (multiples of 2^-F), so that every sum is exact
    in float64 whatever the summation order, batch size or CPU — optionally clipped to
    ±``clip`` (an ADC's range), and the partial sums are
    added (the digital adder). A second output counts, per input row and block, the driven
    rows (the product with a 0/1 block-indicator matrix)."""

    def __init__(
        self, w: np.ndarray, bounds: list[tuple[int, int]], clip: int | None = None
    ) -> None:
        exact = w.dtype == np.int8
        if not exact and w.dtype != np.float64:
            raise TypeError("perturbed conductances must be float64 on a dyadic grid")
        sizes = [r1 - r0 for r0, r1 in bounds]
        assert sum(sizes) == w.shape[0] and bounds[0][0] == 0
        src = "x" if exact else "xf"
        nodes = [] if exact else [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.DOUBLE)]
        inits = [numpy_helper.from_array(np.array(sizes, np.int64), "sizes")]
        parts = [f"x{i}" for i in range(len(bounds))] if len(bounds) > 1 else [src]
        if len(bounds) > 1:
            nodes.append(helper.make_node("Split", [src, "sizes"], parts, axis=1))
        if clip is not None:
            dtype = np.int32 if exact else np.float64
            inits += [
                numpy_helper.from_array(np.array(v, dtype), n)
                for n, v in (("lo", -clip), ("hi", clip))
            ]
        outs = []
        for i, ((r0, r1), part) in enumerate(zip(bounds, parts, strict=True)):
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w[r0:r1]), f"w{i}"))
            nodes.append(
                helper.make_node("MatMulInteger" if exact else "MatMul", [part, f"w{i}"], [f"p{i}"])
            )
            if clip is not None:
                nodes.append(helper.make_node("Clip", [f"p{i}", "lo", "hi"], [f"c{i}"]))
            outs.append(f"c{i}" if clip is not None else f"p{i}")
        acc = outs[0]
        for i, p in enumerate(outs[1:]):  # the digital adder tree, as a chain
            nodes.append(helper.make_node("Add", [acc, p], [f"s{i}"]))
            acc = f"s{i}"
        nodes.append(helper.make_node("Identity", [acc], ["y"]))
        ind = np.zeros((w.shape[0], len(bounds)), np.int8)
        for i, (r0, r1) in enumerate(bounds):
            ind[r0:r1, i] = 1
        inits.append(numpy_helper.from_array(ind, "ind"))
        nodes.append(helper.make_node("MatMulInteger", ["x", "ind"], ["counts"]))
        y_type = TensorProto.INT32 if exact else TensorProto.DOUBLE
        self.sess = _session(nodes, inits, [("y", y_type), ("counts", TensorProto.INT32)])

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sum of the block products [M, N], driven rows per block [M, blocks])."""
        y, counts = self.sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.uint8)})
        return y, counts
