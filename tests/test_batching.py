"""Results never depend on batching: ``spike_digest`` and predictions are the same for
``--batch 1``, ``--batch 7`` and the default, on both backends, with and without each
non-ideality (the first layer's current is a fixed-order float64 sum; perturbed conductances
lie on a dyadic grid, so their column sums are exact; every random draw is per cell, seeded by
layer, never per batch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clirun import TIMING_KEYS, ok

from bsnnc.backends.rram.cost import COUNT_NAMES, Counters
from bsnnc.backends.rram.sim import TileSimulator
from bsnnc.ir.errors import BsnncError
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.simulate import exit_steps, plan
from bsnnc.runtime.snn import SnnRuntime, SnnTrace

DIGITS = load_images("digits").x

NONIDEAL = {
    "ideal": [],
    "variation": ["--variation", "0.3"],
    "stuck-at": ["--stuck-at", "0.05", "--seed", "3"],
    "adc": ["--adc-bits", "3"],
    "all": ["--variation", "0.2", "--stuck-at", "0.02", "--adc-bits", "4", "--seed", "1"],
}


@pytest.fixture(scope="module")
def artifacts(zoo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The digits model and a zoo VGG (several row blocks per layer on 64×64 arrays)."""
    from clirun import cli

    d = tmp_path_factory.mktemp("batching")
    assert cli(["compile", "digits", "-o", d / "digits.tiles"]) == 0
    vgg = ["compile", zoo_data / "vgg_small.onnx", "--calib", zoo_data / "vgg_small.npz"]
    assert cli([*vgg, "-o", d / "vgg.tiles"]) == 0
    assert cli(["compile", "digits", "--reset", "zero", "-o", d / "zero.tiles"]) == 0
    bitsliced = d / "bitsliced.tiles"
    assert cli(["compile", "digits", "--fp-layers", "bitsliced", "-o", bitsliced]) == 0
    return {
        "digits": d / "digits.tiles",
        "vgg": d / "vgg.tiles",
        "digits-zero": d / "zero.tiles",
        "digits-bitsliced": bitsliced,
    }


def _run(
    tiles: Path, images: list[str], extra: list[str], batch: int, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """Everything ``simulate --json`` reports but the timings."""
    argv = ["simulate", tiles, *images, "-T", "8", "--json", "--no-ann", "--batch", str(batch)]
    out, _ = ok([*argv, *extra], capsys)
    r = json.loads(out)
    return {k: v for k, v in r.items() if k not in TIMING_KEYS}


def _spikes(r: dict[str, Any]) -> tuple[str, list[int]]:
    return r["spike_digest"], r["predictions"]


@pytest.mark.parametrize("model", ["digits", "vgg"])
@pytest.mark.parametrize("case", sorted(NONIDEAL))
def test_rram_results_do_not_depend_on_the_batch_size(
    model: str,
    case: str,
    artifacts: dict[str, Path],
    zoo_data: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = (
        ["--limit", "16"]
        if model == "digits"
        else ["--images", str(zoo_data / "vgg_small.npz"), "--limit", "16"]
    )
    extra = ["--backend", "rram", *NONIDEAL[case]]
    runs = {b: _run(artifacts[model], images, extra, b, capsys) for b in (1, 7, 128)}
    assert runs[1] == runs[7] == runs[128]  # spikes, and every count, cycle and energy figure


@pytest.mark.parametrize("model", ["digits", "vgg"])
def test_numpy_results_do_not_depend_on_the_batch_size(
    model: str, artifacts: dict[str, Path], zoo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = (
        ["--limit", "16"]
        if model == "digits"
        else ["--images", str(zoo_data / "vgg_small.npz"), "--limit", "16"]
    )
    runs = {b: _run(artifacts[model], images, [], b, capsys) for b in (1, 7, 128)}
    assert runs[1] == runs[7] == runs[128]
    # and the numpy reference equals the ideal crossbar
    assert _spikes(runs[1]) == _spikes(
        _run(artifacts[model], images, ["--backend", "rram"], 5, capsys)
    )


def test_one_image_that_does_not_fit_runs_in_time_windows(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The numpy reference honours --max-memory along T too: one image that does not fit over
    all T steps runs in windows of steps that fit, with the same results."""
    argv = ["simulate", artifacts["digits"], "-T", "1000", "--limit", "3", "--no-ann"]
    whole, _ = ok([*argv, "--json"], capsys)
    windowed, _ = ok([*argv, "--json", "--max-memory", "16M"], capsys)
    keep = ("spike_digest", "predictions", "accuracy_per_timestep", "spike_rates", "ifr")
    a, b = json.loads(whole), json.loads(windowed)
    assert {k: a[k] for k in keep} == {k: b[k] for k in keep}


def test_rram_image_that_does_not_fit_runs_in_time_windows(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The tile simulator honours --max-memory along T too: the same spikes, predictions and
    every counter, cycle and energy figure, with early exit. The windows are planned with the
    event counts' memory per step; one step that cannot fit is refused up front with the
    memory it would take."""
    argv = ["simulate", artifacts["digits"], "--backend", "rram", "-T", "600", "--limit", "3",
            "--no-ann", "--json", "--early-exit", "40"]  # fmt: skip
    whole, _ = ok(argv, capsys)
    windowed, _ = ok([*argv, "--max-memory", "16M"], capsys)
    a, b = json.loads(whole), json.loads(windowed)
    for k in TIMING_KEYS:
        a.pop(k), b.pop(k)
    assert a == b
    assert 1 < a["mean_exit_step"] < 600
    g = read_artifact(artifacts["digits"]).graph
    per_step = sim_events(artifacts["digits"])
    images, window = plan(g, 600, 64, 16 << 20, per_step)
    assert images == 1 and 1 < window < 600  # so the run above took several windows
    assert 1 < plan(g, 600, 64, 16 << 20, 2 * per_step)[1] < window
    with pytest.raises(BsnncError, match=r"one image at T=1 needs about [\d,]+ MiB"):
        plan(g, 600, 64, 16 << 20, per_step=32 << 20)


def assert_same_trace(a: SnnTrace, b: SnnTrace) -> None:
    """Every recorded number of two traces is the same, bit for bit."""
    np.testing.assert_array_equal(a.final, b.final)
    for field in ("spikes", "per_neuron", "layer_input"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{field}[{k}]")


def sim_events(tiles: Path) -> int:
    """The tile simulator's event memory per step and image for artifact ``tiles``."""
    return TileSimulator(read_artifact(tiles), str(tiles)).bytes_per_step()


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("window", [1, 5])
@pytest.mark.parametrize("model", ["digits", "vgg", "digits-zero", "digits-bitsliced"])
def test_tile_simulator_time_windows_change_no_bit(
    model: str,
    window: int,
    early: bool,
    artifacts: dict[str, Path],
    zoo_data: Path,
) -> None:
    """The tile simulator in windows: membranes, the readout and the ``once`` block's values
    carry over, events are added at their steps, and an image that exits in one window adds
    nothing in the next: traces and every counter equal the single-window run's."""
    art = read_artifact(artifacts[model])
    x = np.load(zoo_data / "vgg_small.npz")["x"][:6] if model == "vgg" else DIGITS[:6]
    early_exit = None
    if early:  # a threshold that about half the images cross by step 8
        final = SnnRuntime(art.graph).run(x, 16).final
        early_exit = float(np.median(final[7].max(axis=1)))
    runs = []
    for w in (None, window):
        counters = Counters.zeros(16)
        sim = TileSimulator(art, str(artifacts[model]))
        runs.append((sim.run(x, 16, counters, early_exit, w), counters))
    (whole, c1), (part, c2) = runs
    assert_same_trace(part, whole)
    for name in COUNT_NAMES:
        np.testing.assert_array_equal(getattr(c2, name), getattr(c1, name), err_msg=name)
    for field in ("layer_cycles", "layer_rows"):
        a, b = getattr(c1, field), getattr(c2, field)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{field}[{k}]")
    if early_exit is not None:  # some images exit early, so masking across windows is tested
        steps = exit_steps(whole.final, early_exit)
        assert (steps < 16).any()
        if (steps < 16).all():  # nothing is counted after the last exit
            assert c1.reads_issued[int(steps.max()) :].sum() == 0 < c1.reads_issued.sum()


@pytest.mark.parametrize("window", [1, 5, 16])
@pytest.mark.parametrize("model", ["digits", "vgg", "digits-zero"])
def test_time_windows_change_no_bit(
    model: str, window: int, artifacts: dict[str, Path], zoo_data: Path
) -> None:
    """Membranes and the readout carry over between windows; values from the input alone are
    computed once: every recorded number equals the single-window run's bit for bit."""
    g = read_artifact(artifacts[model]).graph
    x = np.load(zoo_data / "vgg_small.npz")["x"][:6] if model == "vgg" else DIGITS[:6]
    whole = SnnRuntime(g).run(x, 16)
    part = SnnRuntime(g).run(x, 16, window)
    assert_same_trace(part, whole)


def test_rram_cli_runs_a_bitsliced_artifact(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bit-sliced full-precision layers have row blocks but no packed kernel: the memory
    estimate before the run must cope (it once raised KeyError), and the spikes equal the
    numpy reference's."""
    r = _run(artifacts["digits-bitsliced"], ["--limit", "4"], ["--backend", "rram"], 4, capsys)
    ref = _run(artifacts["digits-bitsliced"], ["--limit", "4"], [], 4, capsys)
    assert _spikes(r) == _spikes(ref) and r["cycles"] > 0


@pytest.mark.parametrize("backend", ["numpy", "rram"])
def test_profile_reports_each_layer_and_changes_no_result(
    backend: str, artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--profile`` adds the wall seconds of every layer that ran (over all chunks) and
    nothing else changes; the human output shows the table."""
    tiles = artifacts["vgg"]
    g = read_artifact(tiles).graph
    args = ["--images", str(tiles.parent / "x.npz"), "--backend", backend]
    shape = [int(d or 0) for d in g.inputs()[0].type.shape[1:]]
    np.savez(tiles.parent / "x.npz", x=np.random.default_rng(5).standard_normal((9, *shape)))
    plain = _run(tiles, args, [], 4, capsys)
    profiled = _run(tiles, args, ["--profile"], 4, capsys)
    layers = profiled.pop("layer_seconds")
    assert profiled == plain
    computed = {f"%{n.result}": n.op for n in g.nodes if n.op != "input"}
    assert {k: v["op"] for k, v in layers.items() if v["op"] != "input"} == computed
    assert all(v["seconds"] >= 0 for v in layers.values())
    assert sum(v["seconds"] for v in layers.values()) > 0
    _, err = ok(["simulate", tiles, *args, "-T", "4", "--no-ann", "--profile"], capsys)
    assert "profile (wall seconds)" in err and "conv2d" in err
