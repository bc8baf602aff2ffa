"""NIR export (issue 13): the spiking graph as NIR, read back by nir and by SpikingJelly 2.0."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clirun import fails, ok
from nir_peers import run_spikingjelly
from test_tilesim import KEYS, both
from zoo import ZOO

from bsnnc.ir import print_graph
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.simulate import metrics, run_chunks
from bsnnc.runtime.snn import SnnRuntime

nir = pytest.importorskip("nir", reason="the nir extra is not installed")


def _compile(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> Path:
    out = tmp_path / "digits.tiles"
    ok(["compile", "digits", *flags, "-o", out], capsys)
    return out


def _export(art: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict[str, Any]]:
    path = art.with_suffix(".nir")
    out, _ = ok(["export", art, "--nir", path, "--json"], capsys)
    return path, json.loads(out)


def test_export_reads_back_with_types_and_bsnnc_semantics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = _compile(tmp_path, capsys)  # the defaults: subtractive reset, half start
    path, report = _export(art, capsys)
    g = nir.read(path)  # type-checked by nir
    kinds = {type(n).__name__ for n in g.nodes.values()}
    assert kinds == {
        "Input",
        "Conv2d",
        "AvgPool2d",
        "IF",
        "Flatten",
        "Affine",
        "Scale",
        "I",
        "Output",
    }
    ifs = {k: n for k, n in g.nodes.items() if isinstance(n, nir.IF)}
    ir = read_artifact(art).graph
    theta = [float(n.attrs["theta"]) for n in ir.nodes if n.op == "if"]
    assert sorted(float(n.v_threshold.reshape(-1)[0]) for n in ifs.values()) == sorted(
        float(np.float32(t)) for t in theta
    )
    for node in ifs.values():
        facts = json.loads(node.metadata["bsnnc"])
        assert facts["semantics"] == {
            "reset": "subtract",
            "init": 0.5,
            "fires": "v >= theta",
            "levels": 0,
        }
        assert np.all(node.r == 1) and np.all(node.v_reset == 0)
    # every approximation is named: the firing rule once, reset and start per IF layer
    assert report["warnings"][0].startswith("bsnnc fires at v ≥ θ")
    assert sum("subtractive reset" in w for w in report["warnings"]) == len(ifs)
    assert sum("NIR has no initial state" in w for w in report["warnings"]) == len(ifs)
    assert report["nodes"] == len(g.nodes)


def test_reset_zero_empty_start_needs_no_approximation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = _compile(tmp_path, capsys, "--reset", "zero", "--v-init", "zero")
    _, report = _export(art, capsys)
    assert len(report["warnings"]) == 1  # only the firing rule's wording


@pytest.mark.skipif(
    importlib.util.find_spec("spikingjelly") is None
    or importlib.util.find_spec("nirtorch") is None,
    reason="the interop extra (spikingjelly 2.0.0, nirtorch) is not installed",
)
def test_spikingjelly_runs_the_reset_zero_export_with_the_same_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Done-when of issue 13: SpikingJelly resets to v_reset and fires at v ≥ θ, bsnnc's
    ``--reset zero`` with an empty start; 150 test images (all 450 agree too: README), T = 64."""
    art = _compile(tmp_path, capsys, "--reset", "zero", "--v-init", "zero")
    path, _ = _export(art, capsys)
    images = load_images("digits", split="test", limit=150)
    theirs, their_spikes = run_spikingjelly(path, images.x, 64)
    g = read_artifact(art).graph
    trace = SnnRuntime(g).run(images.x, 64)
    ours = trace.final.argmax(-1)
    assert np.array_equal(theirs, ours)  # every step, every image
    mine = [int(trace.spikes[n.result].sum()) for n in g.nodes if n.op == "if"]
    # float32 (SpikingJelly) vs float64 membranes may differ where one lands on θ
    assert all(abs(a - b) <= max(2, a // 100_000) for a, b in zip(mine, their_spikes, strict=True))


def test_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], zoo_data: Path) -> None:
    art = _compile(tmp_path, capsys)
    fails(["export", art, "--nir", tmp_path / "out.h5"], capsys, "must end in .nir")
    assert not (tmp_path / "out.h5").exists()
    fails(["export", tmp_path / "missing.tiles", "--nir", tmp_path / "m.nir"], capsys, "no such")
    assert "dense_concat" in ZOO
    cat = tmp_path / "cat.tiles"
    data = zoo_data / "dense_concat.npz"
    ok(["compile", zoo_data / "dense_concat.onnx", "--calib", data, "-o", cat], capsys)
    fails(["export", cat, "--nir", tmp_path / "cat.nir"], capsys, "concat", "NIR 1.0 has no node")
    assert not (tmp_path / "cat.nir").exists()


def test_sum_pools_fold_the_window_into_theta(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--sum-pools``: no AvgPool2d left; the IF after each 2×2 sum pool has 4·θ."""
    art = _compile(tmp_path, capsys, "--reset", "zero", "--v-init", "zero")
    plain = nir.read(_export(art, capsys)[0])
    path = tmp_path / "sum.nir"
    ok(["export", art, "--nir", path, "--sum-pools"], capsys)
    g = nir.read(path)
    assert not any(isinstance(n, nir.AvgPool2d) for n in g.nodes.values())
    pools = [k for k, n in g.nodes.items() if isinstance(n, nir.SumPool2d)]
    assert len(pools) == 2 and g.edges == plain.edges
    after = {b for a, b in g.edges if a in pools}
    for name, node in g.nodes.items():
        if isinstance(node, nir.IF):
            want = plain.nodes[name].v_threshold * (4 if name in after else 1)
            assert np.array_equal(node.v_threshold, want), name


def test_sum_pools_refuses_what_it_cannot_fold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], zoo_data: Path
) -> None:
    for name, fragments in [
        ("avg_after_relu", ["%4 = avgpool", "power-of-two window", "3×3"]),
        ("residual", ["global_avgpool", "IF layer that alone reads it"]),
    ]:
        art = tmp_path / f"{name}.tiles"
        data = zoo_data / f"{name}.npz"
        ok(["compile", zoo_data / f"{name}.onnx", "--calib", data, "-o", art], capsys)
        out = tmp_path / f"{name}.nir"
        fails(["export", art, "--nir", out, "--sum-pools"], capsys, *fragments)
        assert not out.exists()


# --- import: bsnnc compile MODEL.nir ---------------------------------------------------------


def _round_trip(art: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> Path:
    path = art.with_suffix(".nir")
    ok(["export", art, "--nir", path, *flags], capsys)
    back = art.with_name(art.stem + "_back.tiles")
    ok(["compile", path, "-o", back], capsys)
    return back


@pytest.mark.parametrize(
    ("flags", "export"),
    [
        (["--reset", "zero", "--v-init", "zero"], []),
        ([], []),
        (["--norm", "channel"], ["--sum-pools"]),  # θ per channel, the window divided out
    ],
)
def test_round_trip_gives_the_same_ir_and_spikes(
    flags: list[str], export: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    art = _compile(tmp_path, capsys, *flags)
    back = _round_trip(art, capsys, *export)
    a, b = read_artifact(art), read_artifact(back)
    assert print_graph(b.graph) == print_graph(a.graph)
    assert b.extra["program.txt"] == a.extra["program.txt"]
    images = load_images("digits", split="test", limit=64)
    digests = [
        metrics(x.graph, images, run_chunks(x.graph, images, 16, 64, None), 16, None)[
            "spike_digest"
        ]
        for x in (a, b)
    ]
    assert digests[0] == digests[1]


@pytest.mark.parametrize(
    ("name", "export"),
    [
        ("residual", []),
        ("vgg_small", []),
        ("bn_bias", []),
        ("matmul_reshape", []),
        ("vgg_small", ["--sum-pools"]),
        ("gap_binary", ["--sum-pools"]),  # a global average pool as a SumPool2d
    ],
)
def test_round_trip_of_zoo_models(
    name: str, export: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], zoo_data: Path
) -> None:
    """Merges (two edges into one node), per-channel θ and biases, full-precision layers."""
    art = tmp_path / f"{name}.tiles"
    data = zoo_data / f"{name}.npz"
    ok(["compile", zoo_data / f"{name}.onnx", "--calib", data, "-o", art], capsys)
    back = _round_trip(art, capsys, *export)
    assert print_graph(read_artifact(back).graph) == print_graph(read_artifact(art).graph)


@pytest.mark.skipif(
    importlib.util.find_spec("spikingjelly") is None,
    reason="the interop extra (spikingjelly 2.0.0) is not installed",
)
def test_a_spikingjelly_export_compiles_and_runs_as_in_spikingjelly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SpikingJelly's own ``export_to_nir`` (r = 1/dt) of a small IF net with a binary layer:
    bsnnc maps it onto crossbars, both backends agree, and the predictions per step are
    SpikingJelly's."""
    import torch
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False),
        neuron.IFNode(v_threshold=1.0),
        layer.Conv2d(8, 8, 3, padding=1, bias=False),
        neuron.IFNode(v_threshold=2.0),
        layer.Flatten(),
        layer.Linear(8 * 8 * 8, 10, bias=True),
    )
    with torch.no_grad():
        w = net[2].weight
        net[2].weight.copy_(torch.sign(w) * 0.25)  # ±0.25: binary, α a power of two
    path = tmp_path / "sj.nir"
    nir.write(path, export_to_nir(net, torch.zeros(1, 1, 8, 8), dt=1e-4))
    art = tmp_path / "sj.tiles"
    ok(["compile", path, "-o", art], capsys)
    g = read_artifact(art).graph
    assert sum(c.type.kind.value == "bipolar" for c in g.constants.values()) == 1
    images = load_images("digits", split="test", limit=32)
    ref, got, _, _ = both(art, images, 16)
    for k in KEYS:
        assert got[k] == ref[k], k
    theirs = []
    with torch.no_grad():
        total = 0.0
        for _ in range(16):
            total = total + net(torch.from_numpy(images.x)).double()
            theirs.append(total.argmax(1).numpy())
    ours = SnnRuntime(g).run(images.x, 16).final.argmax(-1)
    assert np.array_equal(np.array(theirs), ours)


def _nir_file(tmp_path: Path, edit: str) -> Path:
    shape = (4,)
    nodes = {
        "input": nir.Input(input_type={"input": np.array(shape)}),
        "fc": nir.Affine(weight=np.eye(4, dtype=np.float32), bias=np.zeros(4, np.float32)),
        "lif": nir.IF(r=np.ones(4), v_threshold=np.ones(4), v_reset=np.zeros(4)),
        "fc2": nir.Linear(weight=np.ones((2, 4), np.float32)),
        "output": nir.Output(output_type={"output": np.array((2,))}),
    }
    if edit == "lif":
        nodes["lif"] = nir.LIF(
            tau=np.ones(4),
            r=np.ones(4),
            v_leak=np.zeros(4),
            v_threshold=np.ones(4),
            v_reset=np.zeros(4),
        )
    if edit == "two-outputs-summed":  # the Output reads fc2 and a second layer: summed
        nodes["fc3"] = nir.Linear(weight=np.ones((2, 4), np.float32))
    if edit == "shapes":  # a 5-input layer on a 4-wide input
        nodes["fc"] = nir.Affine(weight=np.ones((4, 5), np.float32), bias=np.zeros(4, np.float32))
    if edit == "delay":  # a node type bsnnc does not map
        nodes["lif"] = nir.Delay(delay=np.ones(4))
    if edit == "nan":
        nodes["lif"] = nir.IF(r=np.ones(4), v_threshold=np.full(4, np.nan), v_reset=np.zeros(4))
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "fc2"), ("fc2", "output")]
    if "fc3" in nodes:
        edges += [("lif", "fc3"), ("fc3", "output")]
    path = tmp_path / f"{edit}.nir"
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges, type_check=False))
    if edit == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    return path


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        ("lif", ["node 'lif' (LIF)", "not supported"]),
        ("nan", ["node 'lif' (IF)", "non-finite"]),
        ("truncated", ["not a readable NIR file"]),
        ("shapes", ["not a readable NIR file", "type mismatch", "fc.input"]),
        ("delay", ["node 'lif' (Delay)", "not supported"]),
    ],
)
def test_bad_nir_files(
    edit: str, fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _nir_file(tmp_path, edit)
    out = tmp_path / "m.tiles"
    fails(["compile", path, "-o", out], capsys, str(path), *fragments)
    assert not out.exists()


def test_a_good_hand_made_nir_file_compiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same graph as the bad ones, unedited: what the errors above are measured against;
    and with a second layer into the Output (its inputs are summed: an add)."""
    ok(["compile", _nir_file(tmp_path, "good"), "-o", tmp_path / "m.tiles"], capsys)
    out = tmp_path / "two.tiles"
    ok(["compile", _nir_file(tmp_path, "two-outputs-summed"), "-o", out], capsys)
    assert [n.op for n in read_artifact(out).graph.nodes][-2:] == ["add", "readout"]
