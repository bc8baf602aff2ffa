"""onnxruntime as the independent check of the numpy ANN reference."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bsnnc.ir.errors import BsnncError


def run_onnxruntime(
    path: str | os.PathLike[str], x: np.ndarray, batch: int = 64
) -> list[np.ndarray]:
    """Outputs of the ONNX model at ``path`` on ``x``, run in chunks (or one by one when the
    model's batch dimension is fixed)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ops = _op_types(path)
    if ops & QONNX_OPS:
        names = ", ".join(sorted(ops & QONNX_OPS))
        raise BsnncError(
            f"{path}: onnxruntime cannot run QONNX's custom ops ({names}), so it cannot check "
            "this model; bsnnc's reference of QONNX models is checked "
            "against qonnx's own executor (tests/test_qonnx.py)"
        )
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        # its optimizer fuses Q/DQ pairs into integer kernels that compute other values
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(Path(path)), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        raise BsnncError(f"{path}: onnxruntime cannot load the model: {e}") from None
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    chunks: list[list[np.ndarray]] = []
    for start in range(0, x.shape[0], step):
        part = x[start : start + step]
        if fixed and part.shape[0] != fixed:
            part = np.concatenate(
                [part, np.zeros((fixed - part.shape[0], *part.shape[1:]), part.dtype)]
            )
        outs = sess.run(None, {inp.name: part})
        chunks.append([o[: min(step, x.shape[0] - start)] for o in outs])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


#: ops of QONNX's custom domains (onnxruntime has no kernels for them)
QONNX_OPS = frozenset({"Quant", "BipolarQuant", "Trunc", "MultiThreshold"})


def _op_types(path: str | os.PathLike[str]) -> set[str]:
    """The op types of the model's main graph (its weights are not read)."""
    import onnx  # here: simulate imports this module and must not load onnx

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # a bad file: onnxruntime's own error says what is wrong
        return set()
    return {n.op_type for n in model.graph.node}
