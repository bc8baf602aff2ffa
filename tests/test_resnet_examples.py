"""The binary ResNets of ``examples/resnet.py`` (ResNet-20 CIFAR form, ResNet-18 ImageNet form,
random weights and BatchNorm): the builder, the numpy ANN reference against onnxruntime, and
compile → crossbar mapping → simulation, with the numpy and RRAM tile backends bit-identical."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from clirun import ok
from conftest import load_example
from test_frontend import RTOL, random_batch, rel_error
from test_rram_mapping import check_blocks, matrices
from test_tilesim import KEYS, both, compile_to

from bsnnc.backends.rram.hw import load_hw
from bsnnc.backends.rram.mapping import partition
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.report import layer_table
from bsnnc.ir.graph import Graph
from bsnnc.ir.types import Kind
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import Images
from bsnnc.runtime.ort import run_onnxruntime


@pytest.fixture(scope="module")
def resnet() -> ModuleType:
    return load_example("resnet")


@pytest.fixture(scope="module")
def resnet20(resnet: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-20, CIFAR-10 shape, full width."""
    path = tmp_path_factory.mktemp("resnet20") / "resnet20.onnx"
    resnet.save_model(resnet.build_resnet("resnet20", "cifar10", seed=0), path, external_data=False)
    return path


def images(g: Graph, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` seeded random images and the ANN reference's predictions as their labels."""
    x = random_batch(g, n, seed=seed)
    return x, run_ann(g, x)[g.outputs[0]].argmax(axis=1)


def binary_weights(g: Graph) -> int:
    return sum(c.type.kind == Kind.BIPOLAR for c in g.constants.values())


def test_builder_is_deterministic_and_checks_its_arguments(
    resnet: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = resnet.build_resnet("resnet20", "cifar100", seed=5, width_div=4, per_channel_alpha=True)
    b = resnet.build_resnet("resnet20", "cifar100", seed=5, width_div=4, per_channel_alpha=True)
    assert a.SerializeToString() == b.SerializeToString()
    onnx.checker.check_model(a)
    props = {p.key: p.value for p in a.metadata_props}
    assert props["arch"] == "resnet20" and props["alpha"] == "per_channel"
    assert len(props["binary_layers"].split(",")) == 20
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    w = inits["layer2.0.downsample.conv.weight"]  # per output channel: exactly ±alpha_c
    alpha = np.abs(w).reshape(w.shape[0], -1)
    assert np.all(alpha == alpha[:, :1]) and len(np.unique(alpha[:, 0])) == w.shape[0]
    assert {"input"} == {i.name for i in a.graph.input}
    assert [o.name for o in a.graph.output] == ["logits"]
    for bad in ({"arch": "resnet50"}, {"dataset": "mnist"}, {"width_div": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            resnet.build_resnet(**bad)
    out = tmp_path / "r.onnx"
    assert resnet.main(["--width-div", "8", "-o", str(out), "--external-data"]) == 0
    assert "resnet20 cifar10 width/8" in capsys.readouterr().out
    assert (tmp_path / "r.onnx.data").is_file()
    onnx.checker.check_model(str(out))


def test_resnet20_reference_equals_onnxruntime(resnet20: Path) -> None:
    g = import_onnx(resnet20)
    assert sum(n.op == "add" for n in g.nodes) == 9
    assert binary_weights(g) == 18 + 2  # the block convs + the two projection 1x1 convs
    assert [r.binary for r in layer_table(g)] == [False] + [True] * 20 + [False]
    assert str(g.nodes[-1].type) == "f32[?,10]"
    x = random_batch(g, 3, seed=1)
    ours = run_ann(g, x)[g.outputs[0]]
    (theirs,) = run_onnxruntime(resnet20, x)
    assert rel_error(ours, theirs) <= RTOL


def test_resnet20_compiles_maps_and_both_backends_agree(
    resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    g = import_onnx(resnet20)
    calib, test = tmp_path / "calib.npz", tmp_path / "images.npz"
    np.savez(calib, x=random_batch(g, 16, seed=2))
    x, y = images(g, 4, seed=3)
    np.savez(test, x=x, y=y)
    tiles = tmp_path / "m.tiles"
    out, _ = ok(["compile", resnet20, "--calib", calib, "--json", "-o", tiles], capsys)
    m = json.loads(out)["mapping"]

    # The crossbar mapping, checked as for VGG-15 (tests/test_rram_mapping.py).
    hw = load_hw(m["hw"])
    binary = [(k, n) for k, n, b in matrices(g) if b]
    assert len(binary) == 20
    per_layer = sum(math.ceil(k / hw.rows) * math.ceil(n / hw.columns) for k, n in binary)
    data = sum(k * n for k, n in binary)
    assert m["arrays"] == m["arrays_bound_per_layer"] == per_layer
    assert m["arrays_bound_global"] == math.ceil(data / (hw.rows * hw.columns))
    assert m["arrays_bound_global"] <= m["arrays"] <= m["bnn_arrays"]
    assert m["utilization"] == pytest.approx(data / (m["arrays"] * hw.rows * hw.columns))
    assert m["utilization_physical"] == pytest.approx(
        data / (m["arrays"] * hw.rows * (hw.columns + 1))
    )
    layers = [lm for lm in m["layers"] if lm["kind"] == "binary"]
    assert [(lm["K"], lm["N"]) for lm in layers] == binary
    assert all(len(lm["arrays"]) == lm["bound"] for lm in layers)
    assert json.loads(read_artifact(tiles).extra["mapping.json"])["arrays"] == m["arrays"]
    check_blocks(partition(g, hw))

    runs = {}
    for backend in ("numpy", "rram"):
        argv = ["simulate", tiles, "--images", test, "-T", 8, "--backend", backend, "--json"]
        out, _ = ok(argv, capsys)
        runs[backend] = json.loads(out)
    assert runs["numpy"]["images"] == runs["rram"]["images"] == 4
    for key in ("spike_digest", "accuracy_per_timestep", "predictions"):
        assert runs["numpy"][key] == runs["rram"][key], key
    assert runs["rram"]["arrays"] == m["arrays"]


def test_resnet18_imagenet_shape_compiles_and_both_backends_agree(
    resnet: ModuleType, tmp_path: Path
) -> None:
    """ResNet-18 at 1/8 width (ImageNet input, max-pooled stem), saved with external data."""
    path = tmp_path / "resnet18.onnx"
    model = resnet.build_resnet("resnet18", "imagenet", seed=1, width_div=8)
    resnet.save_model(model, path, external_data=True)
    assert (tmp_path / "resnet18.onnx.data").is_file()
    g = import_onnx(path)
    assert str(g.inputs()[0].type) == "f32[?,3,224,224]"
    assert sum(n.op == "add" for n in g.nodes) == 8
    assert sum(n.op == "maxpool" for n in g.nodes) == 1
    assert binary_weights(g) == 16 + 3
    x = random_batch(g, 1, seed=4)
    (theirs,) = run_onnxruntime(path, x)
    assert rel_error(run_ann(g, x)[g.outputs[0]], theirs) <= RTOL

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=random_batch(g, 4, seed=5))
    tiles = compile_to(tmp_path, [str(path), "--calib", str(calib)])
    x, y = images(g, 1, seed=6)
    ref, got, counters, _ = both(tiles, Images("resnet18", x, y), 4)
    for k in KEYS:
        assert got[k] == ref[k], k
    assert counters.reads_issued.sum() > 0
