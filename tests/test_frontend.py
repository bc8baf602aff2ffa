"""ONNX front end: every test model imports, and the numpy ANN reference equals onnxruntime
(max relative error ≤ 1e-4) and, for the PyTorch exports, PyTorch's own outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import FIXTURES, load_example
from zoo import ZOO

from bsnnc.compiler.frontend.converters import detect_binary
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.report import layer_table
from bsnnc.ir import Kind
from bsnnc.ir.graph import Graph
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import embedded_file, load_images
from bsnnc.runtime.ort import run_onnxruntime

RTOL = 1e-4


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a − b| / max|b| (the tolerance `bsnnc verify` applies)."""
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


def random_batch(g: Graph, n: int, seed: int = 0) -> np.ndarray:
    shape = [int(d or 0) for d in g.inputs()[0].type.shape[1:]]
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


#: which weighted layers of each zoo model are binary, in order (from how zoo.py builds them).
EXPECTED_BINARY = {
    "avg_before_relu": [False, True, True, True, False],
    "max_ceil": [False, True, True, False],
    "avg_after_relu": [False, True, True, False],
    "bn_bias": [False, True, False],
    "matmul_reshape": [False, True, False],
    "sign_scale": [False, True, False],
    "vgg_small": [False, True, True, True, True, True, False],
    "gap_binary": [False, True, True, False],
    "residual": [False, True, True, True, True, True, False],
    "dense_concat": [False, True, True, True, False],
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_reference_equals_onnxruntime(name: str, zoo_dir: Path) -> None:
    path = zoo_dir / f"{name}.onnx"
    g = import_onnx(path)
    x = random_batch(g, 7, seed=len(name))
    ours = run_ann(g, x)[g.outputs[0]]
    (theirs,) = run_onnxruntime(path, x)
    assert ours.shape == theirs.shape
    assert rel_error(ours, theirs) <= RTOL


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_binary_layers_detected(name: str, zoo_dir: Path) -> None:
    rows = layer_table(import_onnx(zoo_dir / f"{name}.onnx"))
    assert [r.binary for r in rows] == EXPECTED_BINARY[name]
    for r in rows:
        assert bool(r.alpha) == r.binary


def test_per_channel_alpha_is_a_constant(zoo_dir: Path) -> None:
    g = import_onnx(zoo_dir / "max_ceil.onnx")
    scales = [n for n in g.nodes if n.op == "scale"]
    assert len(scales) == 2
    for n in scales:
        (cname,) = n.const_operands()
        alpha = g.constants[cname].array()
        assert alpha.shape == (12,)
        assert np.all(alpha > 0) and np.ptp(alpha) > 0


def test_bipolar_constants_are_signs(zoo_dir: Path) -> None:
    g = import_onnx(zoo_dir / "vgg_small.onnx")
    bipolar = [c for c in g.constants.values() if c.type.kind == Kind.BIPOLAR]
    assert len(bipolar) == 5
    for c in bipolar:
        data = c.array()
        assert data.dtype == np.int8
        assert set(np.unique(data)) == {-1, 1}


def test_batchnorm_becomes_scale_and_bias(zoo_dir: Path) -> None:
    g = import_onnx(zoo_dir / "bn_bias.onnx")
    ops = [n.op for n in g.nodes]
    # conv + bias(conv bias) + scale,bias (BN) + relu, then the binary conv + α + bias ...
    assert ops[:6] == ["input", "conv2d", "bias", "scale", "bias", "relu"]
    bn_scale = g.constants[g.nodes[3].const_operands()[0]].array()
    assert bn_scale[1] < 0  # the negative γ is kept as a negative scale for later folding


def test_sign_times_alpha_subgraph_is_folded(zoo_dir: Path) -> None:
    model = onnx.load(zoo_dir / "sign_scale.onnx")
    assert "Sign" in {n.op_type for n in model.graph.node}
    g = import_onnx(zoo_dir / "sign_scale.onnx")
    assert all(
        n.op in {"input", "conv2d", "dense", "scale", "relu", "global_avgpool", "flatten"}
        for n in g.nodes
    )
    assert [r.binary for r in layer_table(g)] == [False, True, False]


def test_detect_binary() -> None:
    rng = np.random.default_rng(0)
    signs = np.where(rng.normal(size=(4, 3, 3, 3)) > 0, 1.0, -1.0).astype(np.float32)
    found = detect_binary(signs * np.float32(0.37))
    assert found is not None and isinstance(found[1], float)
    assert found[1] == pytest.approx(0.37, rel=1e-6)
    np.testing.assert_array_equal(found[0], signs.astype(np.int8))
    per = (signs * np.array([0.1, 0.2, 0.3, 0.4], np.float32)[:, None, None, None]).astype(
        np.float32
    )
    found = detect_binary(per)
    assert found is not None and isinstance(found[1], np.ndarray)
    np.testing.assert_allclose(found[1], [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
    noisy = per.copy()
    noisy[0, 0, 0, 0] *= 1.001
    assert detect_binary(noisy) is None
    with_zero = signs.copy()
    with_zero[1, 1, 1, 1] = 0.0
    assert detect_binary(with_zero) is None
    assert detect_binary(rng.normal(size=(8, 16)).astype(np.float32)) is None


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("torch_*.onnx")), ids=lambda p: p.stem)
def test_pytorch_exports_match_torch(path: Path) -> None:
    """Both exporters (classic and dynamo): our reference equals PyTorch's own output."""
    data = np.load(path.with_suffix(".npz"))
    g = import_onnx(path)
    ours = run_ann(g, data["x"])[g.outputs[0]]
    assert rel_error(ours, data["y"]) <= RTOL
    (theirs,) = run_onnxruntime(path, data["x"])
    assert rel_error(ours, theirs) <= RTOL


def test_both_exporters_give_the_same_ir_layers() -> None:
    for model in ("mixed", "vgg_tiny", "signscale"):
        classic = layer_table(import_onnx(FIXTURES / f"torch_classic_{model}.onnx"))
        dynamo = layer_table(import_onnx(FIXTURES / f"torch_dynamo_{model}.onnx"))
        key = [(r.op, r.output, r.weight, r.binary, r.ops) for r in classic]
        assert key == [(r.op, r.output, r.weight, r.binary, r.ops) for r in dynamo]


def test_digits_model_accuracy_equals_pytorch() -> None:
    """The committed digits model: reference predictions = PyTorch's, image for image."""
    facts = json.loads((FIXTURES / "digits_torch.json").read_text())
    g = import_onnx(embedded_file("digits.onnx"))
    images = load_images("digits")
    assert images.y is not None
    logits = run_ann(g, images.x)[g.outputs[0]]
    preds = logits.argmax(1)
    np.testing.assert_array_equal(preds, facts["test_predictions"])
    assert float(np.mean(preds == images.y)) == pytest.approx(facts["test_accuracy"], abs=1e-6)
    assert facts["test_accuracy"] >= 0.95
    (theirs,) = run_onnxruntime(embedded_file("digits.onnx"), images.x)
    assert rel_error(logits, theirs) <= RTOL
    assert [r.binary for r in layer_table(g)] == [False, True, True, True, False]


def test_digits_dynamo_export_imports_identically() -> None:
    classic = layer_table(import_onnx(embedded_file("digits.onnx")))
    dynamo = layer_table(import_onnx(FIXTURES / "digits_dynamo.onnx"))
    assert [(r.op, r.weight, r.binary, r.alpha) for r in classic] == [
        (r.op, r.weight, r.binary, r.alpha) for r in dynamo
    ]


@pytest.mark.slow
def test_vgg15_cifar_reference_equals_onnxruntime(tmp_path: Path) -> None:
    """The paper's VGG-15 (CIFAR-100 shape, full width, random binary weights)."""
    vgg = load_example("vgg15")
    path = tmp_path / "vgg15.onnx"
    onnx.save(vgg.build_vgg15("cifar100", seed=3), path)
    g = import_onnx(path)
    rows = layer_table(g)
    assert len(rows) == 15
    assert [r.binary for r in rows] == [False] + [True] * 13 + [False]
    assert str(g.nodes[-1].type) == "f32[?,100]"
    x = random_batch(g, 2, seed=1)
    ours = run_ann(g, x)[g.outputs[0]]
    (theirs,) = run_onnxruntime(path, x)
    assert rel_error(ours, theirs) <= RTOL


def test_vgg15_imagenet_shape_imports_with_external_data(tmp_path: Path) -> None:
    """ImageNet-shape VGG-15 at 1/16 width, saved with external data, imports and runs."""
    vgg = load_example("vgg15")
    path = tmp_path / "vgg15_in.onnx"
    vgg.save_model(vgg.build_vgg15("imagenet", seed=0, width_div=16), path, external_data=True)
    assert (tmp_path / "vgg15_in.onnx.data").is_file()
    g = import_onnx(path)
    assert str(g.inputs()[0].type) == "f32[?,3,224,224]"
    assert str(g.nodes[-1].type) == "f32[?,1000]"
    x = random_batch(g, 1)
    ours = run_ann(g, x)[g.outputs[0]]
    (theirs,) = run_onnxruntime(path, x)
    assert rel_error(ours, theirs) <= RTOL
