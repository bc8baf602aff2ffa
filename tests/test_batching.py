"""Results never depend on batching: ``spike_digest`` and predictions are the same for
``--batch 1``, ``--batch 7`` and the default, on both backends, with and without each
non-ideality (the first layer's current is a fixed-order float64 sum; perturbed conductances
lie on a dyadic grid, so their column sums are exact; every random draw is per cell, seeded by
layer, never per batch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clirun import fails, ok

from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.snn import SnnRuntime

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
    return {"digits": d / "digits.tiles", "vgg": d / "vgg.tiles", "digits-zero": d / "zero.tiles"}


def _run(
    tiles: Path, images: list[str], extra: list[str], batch: int, capsys
) -> tuple[str, list[int]]:
    argv = ["simulate", tiles, *images, "-T", "8", "--json", "--no-ann", "--batch", str(batch)]
    out, _ = ok([*argv, *extra], capsys)
    r = json.loads(out)
    return r["spike_digest"], r["predictions"]


def _images(model: str, zoo_data: Path) -> list[str]:
    """16 images: the digits test split, or the zoo VGG's own random images."""
    own = [] if model == "digits" else ["--images", str(zoo_data / "vgg_small.npz")]
    return [*own, "--limit", "16"]


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
    assert runs[1] == runs[7] == runs[128]


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
    assert runs[1] == _run(artifacts[model], images, ["--backend", "rram"], 5, capsys)


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


def test_rram_image_that_does_not_fit_is_refused_with_the_need(
    artifacts: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The tile simulator chunks images, not timesteps: one image that cannot fit is refused
    up front with the memory it would take."""
    fails(
        ["simulate", artifacts["digits"], "--backend", "rram", "-T", "100000",
         "--max-memory", "256M", "--limit", "1"],
        capsys,
        "one image at T=100000 needs about",
        "MiB",
        "--max-memory",
    )  # fmt: skip


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
    np.testing.assert_array_equal(part.final, whole.final)
    for field in ("spikes", "per_neuron", "layer_input"):
        a, b = getattr(whole, field), getattr(part, field)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(b[k], a[k])
