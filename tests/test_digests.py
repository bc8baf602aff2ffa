"""Stored simulation digests: the results of the current kernels, pinned so that a rewrite
(integer or bit-packed kernels, ...) is checked against stored values, not against itself.

For every zoo model and the embedded ``digits`` model, compiled with ``--reset subtract`` and
``--reset zero`` from empty membranes (``--v-init zero``) and with ``--reset subtract`` from
half-full ones (``--v-init half``), ``bsnnc simulate -T 12 --json --no-ann`` runs on 16 images with
``--backend numpy`` and ``--backend rram``, without early exit and with one early-exit
threshold. Each case pins the whole ``simulate --json`` object (spike digest, predictions,
accuracy curve, spike rates, IFR, #OPS, exit histogram and, on the tile simulator, every event
count, cycle and energy figure) but the timings and the artifact's path; ``images_source``
keeps the image file's name only (the zoo lives in a temporary directory). Integers, strings
and digests must match exactly, float figures (float aggregates of exact counts) to a relative
1e-12.

The early-exit threshold of each (model, reset) is chosen when the file is regenerated — the
median over the images of the peak max final membrane over steps 1..T−1 of the numpy
reference, so that about half the images exit before the last step — and stored in the file;
the comparison reads it from there and never recomputes it.

Regenerate with ``pytest tests/test_digests.py --update-golden`` (without ``-n``: every test
rewrites ``tests/golden/digests.json``) and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clirun import TIMING_KEYS, cli, ok
from conftest import GOLDEN
from zoo import ZOO

from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.simulate import exit_steps
from bsnnc.runtime.snn import SnnRuntime

DIGESTS = GOLDEN / "digests.json"
T = 12
IMAGES = 16
MODELS = ["digits", *sorted(ZOO)]
#: the conversions: ``--reset`` and ``--v-init`` (the cases pinned before the half-threshold
#: start existed keep their names and start from empty membranes)
CONVERSIONS = {
    "subtract": ["--reset", "subtract", "--v-init", "zero"],
    "zero": ["--reset", "zero", "--v-init", "zero"],
    "subtract-half": ["--reset", "subtract", "--v-init", "half"],
}
RESETS = list(CONVERSIONS)
BACKENDS = ["numpy", "rram"]
EXITS = ["noexit", "exit"]
DROPPED = (*TIMING_KEYS, "artifact")  # timings, a temporary path
REGENERATE = "rerun with --update-golden (pytest tests/test_digests.py --update-golden)"

CASES = [(m, r, b, e) for m in MODELS for r in RESETS for e in EXITS for b in BACKENDS]
PAIRS = [(m, r, e) for m in MODELS for r in RESETS for e in EXITS]


def case_id(model: str, reset: str, backend: str, exit_: str) -> str:
    return f"{model}-{reset}-{backend}-{exit_}"


class Artifacts:
    """Each (model, reset) artifact, compiled on first use and kept for the module (so each
    xdist worker compiles only what its tests need)."""

    def __init__(self, folder: Path, zoo: Path) -> None:
        self.folder, self.zoo = folder, zoo
        self.paths: dict[tuple[str, str], Path] = {}

    def images(self, model: str) -> list[str]:
        """``simulate`` arguments that select the test images."""
        if model == "digits":  # the default images: the test split of the embedded digits
            return ["--limit", str(IMAGES)]
        return ["--images", str(self.zoo / f"{model}.npz"), "--limit", str(IMAGES)]

    def image_array(self, model: str) -> np.ndarray:
        """The same images as :meth:`images`, loaded as ``simulate`` loads them."""
        spec = "digits" if model == "digits" else str(self.zoo / f"{model}.npz")
        return load_images(spec, limit=IMAGES).x

    def get(self, model: str, reset: str) -> Path:
        key = (model, reset)
        if key not in self.paths:
            out = self.folder / f"{model}-{reset}.tiles"
            src: list[object] = (
                ["digits"]
                if model == "digits"
                else [self.zoo / f"{model}.onnx", "--calib", self.zoo / f"{model}.npz"]
            )
            code = cli(["compile", *src, *CONVERSIONS[reset], "-o", out])
            assert code == 0, f"compile {model} {' '.join(CONVERSIONS[reset])} exited {code}"
            self.paths[key] = out
        return self.paths[key]


@pytest.fixture(scope="module")
def artifacts(zoo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return Artifacts(tmp_path_factory.mktemp("digests"), zoo_data)


def load_golden() -> dict[str, Any]:
    if not DIGESTS.exists():
        return {"cases": {}, "early_exit": {}}
    data: dict[str, Any] = json.loads(DIGESTS.read_text(encoding="utf-8"))
    return data


def save_golden(data: dict[str, Any]) -> None:
    DIGESTS.parent.mkdir(parents=True, exist_ok=True)
    DIGESTS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def refuse_parallel_update(update_golden: bool) -> None:
    """Every test rewrites the one golden file: regenerating under xdist would race."""
    if update_golden and "PYTEST_XDIST_WORKER" in os.environ:
        pytest.fail("regenerate tests/golden/digests.json without -n (xdist)")


def choose_threshold(artifacts: Artifacts, model: str, reset: str) -> float:
    """The median over the images of the peak max final membrane over steps 1..T−1 (numpy
    reference): about half the images cross it before the last step."""
    tiles = artifacts.get(model, reset)
    final = SnnRuntime(read_artifact(tiles).graph).run(artifacts.image_array(model), T).final
    threshold = float(np.median(final[: T - 1].max(axis=2).max(axis=0)))
    early = int((exit_steps(final, threshold) < T).sum())
    assert threshold >= 0, f"{model}-{reset}: threshold {threshold} < 0: choose another rule"
    assert 0 < early < IMAGES, f"{model}-{reset}: {early} of {IMAGES} images exit early"
    return threshold


def simulate(
    artifacts: Artifacts,
    model: str,
    reset: str,
    backend: str,
    early_exit: float | None,
    capsys: pytest.CaptureFixture[str],
) -> dict[str, Any]:
    """``simulate --json`` without the timings and the artifact path, with the image file's
    name only in ``images_source``."""
    argv: list[object] = ["simulate", artifacts.get(model, reset), *artifacts.images(model)]
    argv += ["-T", T, "--json", "--no-ann", "--backend", backend]
    if early_exit is not None:
        argv += ["--early-exit", repr(early_exit)]
    out, _ = ok(argv, capsys)
    r: dict[str, Any] = json.loads(out)
    for k in DROPPED:
        r.pop(k, None)
    if model != "digits":
        assert r["images_source"] == str(artifacts.zoo / f"{model}.npz")
        r["images_source"] = f"{model}.npz"
    return r


def mismatches(actual: Any, expected: Any, where: str = "") -> list[str]:
    """Where ``actual`` differs from ``expected``: floats to a relative 1e-12 (exactly when
    expected is 0), everything else exactly, recursively over dicts and lists."""
    here = where or "(top)"
    if type(actual) is not type(expected):
        return [f"{here}: {actual!r} ({type(actual).__name__}), expected {expected!r}"]
    if isinstance(expected, dict):
        out = [f"{where}.{k}: missing" for k in sorted(expected.keys() - actual.keys())]
        out += [f"{where}.{k}: not in the golden file" for k in sorted(actual.keys() - expected)]
        for k in sorted(expected.keys() & actual.keys()):
            out += mismatches(actual[k], expected[k], f"{where}.{k}" if where else k)
        return out
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return [f"{here}: {len(actual)} items, expected {len(expected)}"]
        return [m for i, (a, e) in enumerate(zip(actual, expected, strict=True))
                for m in mismatches(a, e, f"{where}[{i}]")]  # fmt: skip
    if isinstance(expected, float):
        ok_ = actual == pytest.approx(expected, rel=1e-12, abs=0)
        return [] if ok_ else [f"{here}: {actual!r}, expected {expected!r}"]
    return [] if actual == expected else [f"{here}: {actual!r}, expected {expected!r}"]


@pytest.mark.parametrize(
    ("model", "reset", "backend", "exit_"), CASES, ids=[case_id(*c) for c in CASES]
)
def test_simulation_matches_stored_digest(
    model: str,
    reset: str,
    backend: str,
    exit_: str,
    artifacts: Artifacts,
    update_golden: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    refuse_parallel_update(update_golden)
    name, pair = case_id(model, reset, backend, exit_), f"{model}-{reset}"
    golden = load_golden()
    threshold: float | None = None
    if exit_ == "exit":
        if update_golden:
            threshold = choose_threshold(artifacts, model, reset)
        else:
            if pair not in golden["early_exit"]:
                pytest.fail(f"no stored early-exit threshold for {pair}: {REGENERATE}")
            threshold = float(golden["early_exit"][pair])
    actual = simulate(artifacts, model, reset, backend, threshold, capsys)
    if update_golden:
        golden = load_golden()
        golden["cases"][name] = actual
        if threshold is not None:
            golden["early_exit"][pair] = threshold
        save_golden(golden)
    expected = golden["cases"].get(name)
    if expected is None:
        pytest.fail(f"no stored result for {name}: {REGENERATE}")
    diffs = mismatches(actual, expected)
    if diffs:
        shown = "\n  ".join(diffs[:20]) + ("\n  ..." if len(diffs) > 20 else "")
        pytest.fail(f"{name} differs from {DIGESTS.name} in {len(diffs)} field(s):\n  {shown}")

    # sanity: the stored case is what it claims to be
    assert expected["backend"] == backend and expected["reset"] == CONVERSIONS[reset][1]
    assert expected["images"] == IMAGES and expected["timesteps"] == T
    assert len(expected["predictions"]) == IMAGES
    if threshold is None:
        assert "early_exit" not in expected and "exit_step_histogram" not in expected
    else:
        hist = expected["exit_step_histogram"]
        assert expected["early_exit"] == threshold
        assert sum(hist) == IMAGES
        assert sum(hist[:-1]) > 0, f"{name}: no image exits before step {T}"
        assert hist[-1] > 0, f"{name}: every image exits before step {T}"
        assert expected["mean_exit_step"] < T


@pytest.mark.parametrize(("model", "reset", "exit_"), PAIRS, ids=["-".join(p) for p in PAIRS])
def test_numpy_reference_equals_ideal_crossbar(
    model: str, reset: str, exit_: str, update_golden: bool
) -> None:
    """The stored numpy and rram results of one case have the same spikes, predictions and
    every other figure both report (the ideal crossbar computes the reference exactly).
    Runs after the simulations above (it reads what they stored when regenerating)."""
    refuse_parallel_update(update_golden)
    cases = load_golden()["cases"]
    names = [case_id(model, reset, b, exit_) for b in BACKENDS]
    for n in names:
        if n not in cases:
            pytest.fail(f"no stored result for {n}: {REGENERATE}")
    numpy_, rram = (cases[n] for n in names)
    assert numpy_["spike_digest"] == rram["spike_digest"]
    assert numpy_["predictions"] == rram["predictions"]
    shared = sorted((numpy_.keys() & rram.keys()) - {"backend"})
    assert {k: numpy_[k] for k in shared} == {k: rram[k] for k in shared}
    assert set(numpy_) - set(rram) == set(), "numpy reports a figure rram does not"


def test_golden_file_holds_exactly_the_cases(update_golden: bool) -> None:
    """No stale entries: the file lists exactly the cases and thresholds above (regenerating
    drops the others)."""
    refuse_parallel_update(update_golden)
    golden = load_golden()
    cases = {case_id(*c) for c in CASES}
    pairs = {f"{m}-{r}" for m in MODELS for r in RESETS}
    if update_golden:
        golden["cases"] = {k: v for k, v in golden["cases"].items() if k in cases}
        golden["early_exit"] = {k: v for k, v in golden["early_exit"].items() if k in pairs}
        save_golden(golden)
    assert sorted(golden) == ["cases", "early_exit"]
    assert set(golden["cases"]) == cases, f"cases added or removed: {REGENERATE}"
    assert set(golden["early_exit"]) == pairs, f"(model, reset) pairs changed: {REGENERATE}"
