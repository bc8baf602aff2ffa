"""Residual networks end to end (issue 12): a binary ResNet trained on digits, both torch
exporters, from ONNX to spikes, tiles and the tile simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import flat, ok
from test_tilesim import KEYS, both
from zoo import Net

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.ir.graph import Graph, channel_param
from bsnnc.ir.ops import threshold_unit
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import Images, load_images
from bsnnc.runtime.ort import run_onnxruntime
from bsnnc.runtime.simulate import ann_accuracy, metrics, run_chunks

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ("digits_resnet", "digits_resnet_dynamo")
FACTS = json.loads((FIXTURES / "digits_resnet_torch.json").read_text())


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def test_the_exports_are_what_users_get() -> None:
    """Classic without constant folding keeps BatchNorm and Identity on initializers; dynamo
    folds BatchNorm into the convolutions (a bias each)."""
    classic = {n.op_type for n in onnx.load(FIXTURES / "digits_resnet.onnx").graph.node}
    dynamo = onnx.load(FIXTURES / "digits_resnet_dynamo.onnx").graph
    assert {"BatchNormalization", "Identity", "Add"} <= classic
    assert "BatchNormalization" not in {n.op_type for n in dynamo.node}
    assert all(len(n.input) == 3 for n in dynamo.node if n.op_type == "Conv")


@pytest.mark.parametrize("name", MODELS)
def test_reference_equals_onnxruntime(name: str) -> None:
    test = load_images("digits", split="test")
    g = import_onnx(FIXTURES / f"{name}.onnx")
    assert sum(n.op == "add" for n in g.nodes) == 3
    ours = run_ann(g, test.x)[g.outputs[0]]
    (theirs,) = run_onnxruntime(FIXTURES / f"{name}.onnx", test.x)
    assert _rel(ours, theirs) <= 1e-4
    assert ours.argmax(axis=1).tolist() == FACTS["test_predictions"]


def _converted(name: str) -> tuple[Graph, Graph]:
    g0 = import_onnx(FIXTURES / f"{name}.onnx")
    train = load_images("digits", split="train", limit=512)
    return g0, run_pipeline(g0, PassOptions(calib=lambda: train)).graph


@pytest.mark.parametrize("name", MODELS)
def test_folded_graph_read_as_an_ann_computes_the_original_logits(name: str) -> None:
    g0, g = _converted(name)
    x = load_images("digits", split="test", limit=128).x
    want = run_ann(g0, x, dtype=np.float64)[g0.outputs[0]]
    got = run_ann(g, x, dtype=np.float64)[g.outputs[0]]
    assert _rel(got, want) <= 1e-5
    assert sum(n.op == "add" for n in g.nodes) == 3
    # every branch factor sits on the dyadic grid of the IF it feeds: integer membranes
    nodes, users = g.node_map(), g.users()
    checked = 0
    for n in g.nodes:
        if n.op != "scale" or users[n.result][0].op != "add":
            continue
        fire = users[n.result][0]
        while fire.op != "if":
            fire = users[fire.result][0]
        theta = channel_param(g, fire, "theta")
        q = 2.0 ** threshold_unit(theta)
        f = channel_param(g, n, "factor") / q
        assert np.all(f == np.round(f)) and nodes[n.value_operands()[0]].op in ("if", "conv2d")
        checked += 1
    assert checked == 3


@pytest.mark.parametrize(
    "name",
    [MODELS[0], pytest.param(MODELS[1], marks=pytest.mark.examples)],  # the second: --examples
)
def test_snn_reaches_the_ann_by_t64(name: str) -> None:
    """Done-when: within 1 point of the ANN by T = 64 (450 test images, half start). The
    dynamo export's curve (4 s, the same network through the other exporter) runs with
    ``pytest --examples``."""
    _, g = _converted(name)
    test = load_images("digits", split="test")
    ann = ann_accuracy(g, test)[0]
    assert ann == pytest.approx(FACTS["test_accuracy"])
    curve = metrics(g, test, run_chunks(g, test, 64, 256, None), 64, None)["accuracy_per_timestep"]
    assert curve[-1] >= ann - 0.01
    assert curve[0] < ann - 0.1  # the curve is real: one step is far from the ANN


@pytest.mark.parametrize("name", MODELS)
def test_tile_simulator_is_bit_exact(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "resnet.tiles"
    _, err = ok(["compile", FIXTURES / f"{name}.onnx", "--calib", "digits", "-o", out], capsys)
    # 64·8·8 + 2 · 64·4·4 neurons merged per step (blocks 1, 2 and 3)
    assert flat("3 residual merge(s) on the digital adders, 4,096 adds per image and step") in flat(
        err
    )
    mapping = json.loads(read_artifact(out).extra["mapping.json"])
    assert mapping["merges"] == 3 and mapping["merge_adds_per_step"] == 4096
    ref, got, c, _ = both(out, load_images("digits", split="test", limit=24), 16)
    for k in KEYS:
        assert got[k] == ref[k], k
    assert c.reads_issued.sum() > 0 and c.psum_adds.sum() > 0


def test_strided_projection_shortcut(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ResNet's option B: a stride-2 1×1 binary conv + BatchNorm as the shortcut, merged with
    Sum; read as an ANN the folded graph is the original, and the tiles are bit-exact."""
    n = Net("option_b", (3, 8, 8), seed=21)
    n.conv(3, 8).op("Relu")
    block_in = n.cur
    n.conv(8, 16, binary="tensor", strides=[2, 2]).op("Relu").conv(16, 16, binary="tensor")
    main = n.cur
    n.cur = block_in
    n.conv(8, 16, k=1, binary="channel", strides=[2, 2])
    c = 16
    params = [
        n.rng.uniform(0.5, 1.5, c),
        n.rng.normal(0, 0.1, c),
        n.rng.normal(0, 0.1, c),
        n.rng.uniform(0.5, 1.5, c),
    ]
    n.op("BatchNormalization", [n.init(np.asarray(p, np.float32), "bn") for p in params])
    n.op("Sum", [main]).op("Relu").op("GlobalAveragePool").op("Flatten", axis=1).gemm(16, 4)
    path = tmp_path / "option_b.onnx"
    onnx.save(n.model(), path)
    x = np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    g0 = import_onnx(path)
    g = run_pipeline(g0, PassOptions(calib=lambda: load_images(str(tmp_path / "calib.npz")))).graph
    want = run_ann(g0, x, dtype=np.float64)[g0.outputs[0]]
    assert _rel(run_ann(g, x, dtype=np.float64)[g.outputs[0]], want) <= 1e-5
    out = tmp_path / "option_b.tiles"
    ok(["compile", path, "--calib", tmp_path / "calib.npz", "-o", out], capsys)
    labels = want.argmax(axis=1)
    ref, got, _, _ = both(out, Images("option_b", x[32:], labels[32:]), 16)
    for k in KEYS:
        assert got[k] == ref[k], k
