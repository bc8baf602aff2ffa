"""qonnx's own executor on a QONNX file: the reference the Brevitas fixtures are checked
against (``examples/train_brevitas_digits.py`` stores its logits; ``tests/test_qonnx.py`` runs
it live when qonnx is installed, as in CI). Needs numpy and onnx; qonnx optional."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def run_qonnx(path: Path, x: np.ndarray) -> np.ndarray | None:
    """Logits of ``qonnx.core.onnx_exec.execute_onnx`` on ``path`` for ``x``; None w/o qonnx.

    ``execute_onnx`` needs every tensor shape known, so a copy with the batch dimension fixed
    to ``len(x)`` gets its shapes inferred first (qonnx's ``InferShapes`` knows the custom ops).
    """
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:
        return None
    proto = onnx.load(str(path))
    graph = proto.graph
    del graph.value_info[:]
    for vi in (*graph.input[:1], *graph.output):
        dim0 = vi.type.tensor_type.shape.dim[0]
        dim0.Clear()
        dim0.dim_value = x.shape[0]
    wrapper = ModelWrapper(proto).transform(InferShapes())
    out = execute_onnx(wrapper, {graph.input[0].name: x})
    return np.asarray(out[graph.output[0].name], dtype=np.float32)
