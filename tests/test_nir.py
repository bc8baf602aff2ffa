"""NIR export (issue 13): the spiking graph as NIR, read back by nir and by SpikingJelly 2.0."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from clirun import fails, ok
from zoo import ZOO

from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.snn import SnnRuntime

nir = pytest.importorskip("nir", reason="the nir extra is not installed")


def _compile(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> Path:
    out = tmp_path / "digits.tiles"
    ok(["compile", "digits", *flags, "-o", out], capsys)
    return out


def _export(art: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, dict]:  # type: ignore[type-arg]
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
    assert kinds == {"Input", "Conv2d", "AvgPool2d", "IF", "Flatten", "Affine", "Scale", "I",
                     "Output"}  # fmt: skip
    ifs = {k: n for k, n in g.nodes.items() if isinstance(n, nir.IF)}
    ir = read_artifact(art).graph
    theta = [float(n.attrs["theta"]) for n in ir.nodes if n.op == "if"]
    assert sorted(float(n.v_threshold.reshape(-1)[0]) for n in ifs.values()) == sorted(
        float(np.float32(t)) for t in theta
    )
    for node in ifs.values():
        facts = json.loads(node.metadata["bsnnc"])
        assert facts["semantics"] == {"reset": "subtract", "init": 0.5, "fires": "v >= theta",
                                      "levels": 0}  # fmt: skip
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


def _spikingjelly_run(path: Path, x: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    """Predictions per step and spikes per IF layer of SpikingJelly 2.0's NIR import (dt = 1).
    Its importer maps neither NIR's integrator ``I`` nor ``Scale``: the readout is dropped and
    the last layer's per-step output summed here (a positive scale changes no argmax)."""
    import torch
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    g = nir.read(path)
    drop = {k for k, v in g.nodes.items() if isinstance(v, nir.I | nir.Scale)}
    last = next(a for a, b in g.edges if b in drop and a not in drop)
    edges = [e for e in g.edges if drop.isdisjoint(e)] + [(last, "output")]
    nodes = {k: v for k, v in g.nodes.items() if k not in drop}
    model = import_from_nir(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False), dt=1.0)
    counts: dict[str, int] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module, inputs, output) -> None:  # type: ignore[no-untyped-def]
            spikes = output[0] if isinstance(output, tuple) else output
            counts[name] = counts.get(name, 0) + int(spikes.sum().item())

        return record

    for name, module in model.named_modules():
        if type(module).__name__ == "_NIRStatefulModule":
            module.register_forward_hook(hook(name))
    state, total, preds = None, 0.0, []
    with torch.no_grad():
        for _ in range(steps):
            out, state = model(torch.from_numpy(x), state)
            total = total + out.double()
            preds.append(total.argmax(1).numpy())
    return np.array(preds), [counts[k] for k in sorted(counts, key=lambda k: int(k.split("_")[-1]))]


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
    theirs, their_spikes = _spikingjelly_run(path, images.x, 64)
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
