"""Inputs that are wrong or too large to compile: ONNX models with bad numbers or bombs, and
hardware configurations that would explode the mapping. Every case exit 2 with a message
naming the node, tensor or setting, nothing written, and no work done before the refusal (no
memory blow-up)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import compile_fails
from onnx import TensorProto, helper, numpy_helper
from zoo import ZOO

SaveModel = Callable[[onnx.ModelProto, str], Path]


def test_opset_newer_than_onnx_knows(
    save_model: SaveModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = ZOO["avg_before_relu"]()
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 99
    compile_fails(save_model(m, "m.onnx"), tmp_path, capsys, "opset 99 is newer")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_name_the_tensor(
    value: float, save_model: SaveModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NaN would make calibration fall back to λ = 1 and the SNN useless: refused."""
    m = ZOO["avg_before_relu"]()
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    init = next(t for t in m.graph.initializer if t.name == conv.input[1])
    w = numpy_helper.to_array(init).copy()
    w.reshape(-1)[5] = value
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    compile_fails(save_model(m, "m.onnx"), tmp_path, capsys, f"weight '{init.name}'", "non-finite")


def test_constant_of_shape_bomb_is_refused_before_folding(
    save_model: SaveModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 100-byte ConstantOfShape [50000, 50000] would take 10 GB to fold."""
    shape = numpy_helper.from_array(np.array([50000, 50000], np.int64), "shape")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="bomb"),
        helper.make_node("ReduceSum", ["big"], ["s"], name="sum", keepdims=0),
        helper.make_node("Add", ["x", "s"], ["y"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [shape],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    compile_fails(
        save_model(m, "m.onnx"), tmp_path, capsys, "'bomb'", "2,500,000,000 elements", "limit"
    )


def test_arrays_so_small_that_the_mapping_explodes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1×1 arrays would cut the digits model into 176k blocks (247 s, 7.9 GB before this
    check): refused before any block is made, naming the count and the limit."""
    hw = tmp_path / "tiny.json"
    hw.write_text('{"name": "tiny", "rows": 1, "columns": 1, "max_rows_driven": 1, '
                  '"columns_per_adc": 1}')  # fmt: skip
    compile_fails("digits", tmp_path, capsys, "1×1 arrays cut this network into", "limit",
                  extra=["--hw", str(hw)])  # fmt: skip
