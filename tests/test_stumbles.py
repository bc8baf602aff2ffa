"""The newcomer's stumbles (issue 8, item 7): each one as a test that failed before the fix.

Every failing command exits 2 with a message that says what to do, and nothing is simulated
before a problem that was knowable up front is reported."""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from clirun import cli, fails, ok
from rich.console import Console
from zoo import ZOO

from bsnnc.compiler import cmd_simulate
from bsnnc.compiler.console import layers_table
from bsnnc.compiler.options import add_conversion_options, add_hardware_options
from bsnnc.compiler.report import layer_table
from bsnnc.ir.errors import DataError
from bsnnc.runtime import simulate as sim_driver
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import embedded_file, load_images
from bsnnc.runtime.snn import SnnRuntime

DIGITS_ONNX = embedded_file("digits.onnx")


@pytest.fixture(scope="module")
def digits_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bsnnc compile digits -o digits.tiles``."""
    out = tmp_path_factory.mktemp("digits") / "digits.tiles"
    assert cli(["compile", "digits", "-o", out]) == 0
    return out


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulating is a test failure: the error must come before it."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("simulated before reporting an error known up front")

    monkeypatch.setattr(sim_driver, "run_chunks", refuse)


def simulate_json(tiles: Path, capsys: pytest.CaptureFixture[str], *args: object) -> Any:
    """``bsnnc simulate TILES --json ARGS``: the JSON object."""
    out, _ = ok(["simulate", tiles, "--json", *args], capsys)
    return json.loads(out)


def line_with(text: str, *parts: str) -> str:
    """The one line of ``text`` that holds every one of ``parts`` (none: an assertion)."""
    lines = [line for line in text.splitlines() if all(p in line for p in parts)]
    assert lines, f"no line holds {parts}:\n{text}"
    return lines[0]


# ------------------------------------------------------------ 1. tables cut at 80 columns


def test_tables_in_a_pipe_keep_every_number_whole(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stderr is captured (not a terminal): even under COLUMNS=40 each row stays on one
    line with its whole numbers, as ``--json`` reports them."""
    monkeypatch.setenv("COLUMNS", "40")
    args = ["--limit", 12, "-T", 6, "--backend", "rram", "--no-ann"]
    r = simulate_json(digits_tiles, capsys, *args)
    _, err = ok(["simulate", digits_tiles, *args], capsys)
    assert "…" not in err
    line_with(err, "row activations / inference", f"{r['row_activations']:,.0f}")
    line_with(err, "ADC conversions / inference", f"{r['conversions']:,.0f}")
    line_with(err, "cycles per inference", f"{r['cycles']:,.0f}")
    for label, rate in r["spike_rates"].items():
        line_with(err, label, f"{rate:.4f}")


def test_compile_tables_in_a_pipe_keep_every_number_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    out = tmp_path / "digits.tiles"
    _, err = ok(["compile", "digits", "-o", out, "--calib-limit", 64], capsys)
    assert "…" not in err
    rows = layer_table(read_artifact(out).graph)
    for row in rows:
        line_with(err, row.loc, f"{row.ops:,}")
    line_with(err, "total", f"{sum(row.ops for row in rows):,}")


def test_tables_in_a_narrow_terminal_fold_instead_of_cutting(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a 40-column terminal the cells wrap: no number ends in an ellipsis."""
    r = simulate_json(digits_tiles, capsys, "--limit", 12, "-T", 6, "--backend", "rram")
    screen = io.StringIO()
    narrow = Console(file=screen, width=40, force_terminal=True, color_system=None)
    monkeypatch.setattr(cmd_simulate, "err", narrow)
    cmd_simulate._print(r)
    narrow.print(layers_table(layer_table(read_artifact(digits_tiles).graph), "layers"))
    text = screen.getvalue()
    assert "row activations" in text and "ops/image" in text
    assert "…" not in text


# ------------------------------------------------------------ 2. --plot


def test_plot_without_matplotlib_fails_before_simulating(
    digits_tiles: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    no_simulation: None,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    png = tmp_path / "curve.png"
    fails(
        ["simulate", digits_tiles, "--limit", 4, "-T", 2, "--plot", png],
        capsys,
        "--plot needs matplotlib",
        "pip install 'bsnnc[plot]'",
    )
    assert not png.exists()


def test_plot_into_a_missing_directory_fails_before_simulating(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_simulation: None
) -> None:
    png = tmp_path / "figures" / "curve.png"
    fails(
        ["simulate", digits_tiles, "--limit", 4, "-T", 2, "--plot", png],
        capsys,
        str(png.parent),
        "does not exist",
    )
    assert not png.parent.exists()


def test_plot_of_unlabelled_images_fails_before_simulating(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_simulation: None
) -> None:
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=np.zeros((3, 1, 8, 8), np.float32))
    argv = ["simulate", digits_tiles, "--images", path, "-T", 2, "--plot", tmp_path / "c.png"]
    fails(argv, capsys, "--plot needs labelled images", str(path))


def test_plot_says_where_it_wrote(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "curve.png"
    out, err = ok(["simulate", digits_tiles, "--limit", 8, "-T", 4, "--plot", png], capsys)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in err.splitlines()
    assert out == ""


# ------------------------------------------------------------ 3. compile-time flags


@pytest.mark.parametrize(
    "flags",
    [
        ["--reset", "zero"],
        ["--fp-layers", "bitsliced"],
        ["--calib", "digits"],
        ["--percentile", "99.9"],
        ["--calib-stat", "activations"],
        ["--calib-limit", "64"],
        ["--norm", "channel"],
        ["--duplicate", "2"],
        ["--pack"],
    ],
)
def test_compile_time_flags_given_to_simulate(
    flags: list[str], digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(
        ["simulate", digits_tiles, *flags],
        capsys,
        f"{flags[0]} is a compile-time option",
        f"recompile with bsnnc compile MODEL -o {digits_tiles} {' '.join(flags)}",
    )
    assert "unrecognized arguments" not in err


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_every_conversion_and_hardware_option_is_known_to_simulate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The options that shape the artifact are in simulate's compile-only table unless
    simulate has an option of that name itself (``--hw``, ``--data-dir``); the table stays
    out of ``--help``."""
    compile_time = argparse.ArgumentParser()
    add_conversion_options(compile_time)
    add_hardware_options(compile_time)
    sim = argparse.ArgumentParser(prog="bsnnc simulate")
    subparsers = sim.add_subparsers()
    cmd_simulate.add_parser(subparsers)
    own = {
        s
        for action in subparsers.choices["simulate"]._actions
        if not isinstance(action, cmd_simulate.CompileOnlyAction)
        for s in action.option_strings
    }
    missing = _option_strings(compile_time) - own - {"-h", "--help"}
    missing -= set(cmd_simulate.COMPILE_ONLY)
    assert not missing, f"add to cmd_simulate.COMPILE_ONLY: {sorted(missing)}"
    assert not own & set(cmd_simulate.COMPILE_ONLY)
    assert cli(["simulate", "--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in cmd_simulate.COMPILE_ONLY:
        assert flag not in help_text.split(), flag


# ------------------------------------------------------------ 4. a model instead of an artifact


@pytest.mark.parametrize("given", ["digits", "model.onnx", str(DIGITS_ONNX)])
def test_simulate_a_model_says_compile_it_first(
    given: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stem = Path(given).stem
    fails(
        ["simulate", given, "--limit", 4],
        capsys,
        f"compile it first: bsnnc compile {given} -o {stem}.tiles",
    )


# ------------------------------------------------------------ 5. rram-only options


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--energy", "isaac-32nm"], "--energy needs --backend rram"),
        (["--hw", "rram-128", "--energy", "isaac-32nm"], "--hw and --energy need --backend rram"),
        (["--seed", "3"], "--seed: the non-idealities"),
        (["--variation", "0"], "--variation: the non-idealities"),
        (["--adc-bits", "6"], "--adc-bits: the non-idealities"),
    ],
)
def test_rram_options_need_the_rram_backend(
    flags: list[str],
    message: str,
    digits_tiles: Path,
    capsys: pytest.CaptureFixture[str],
    no_simulation: None,
) -> None:
    err = fails(["simulate", digits_tiles, "--limit", 4, "-T", 2, *flags], capsys, message)
    assert "--backend rram" in err


# ------------------------------------------------------------ 6. the missing --calib


def test_missing_calib_lists_the_names_and_the_npz_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "vgg_small.onnx"
    onnx.save(ZOO["vgg_small"](), model)
    out = tmp_path / "out" / "m.tiles"
    out.parent.mkdir()
    fails(
        ["compile", model, "-o", out],
        capsys,
        "--calib NAME|PATH",
        "digits, cifar10, cifar100, imagenet",
        "x: float32 [N,C,H,W], normalized as the model expects",
        "optionally y: int labels [N]",
    )
    assert list(out.parent.iterdir()) == []


# ------------------------------------------------------------ 7. a uint8 image set


def test_uint8_images_are_refused(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pixels.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8), y=np.zeros(6, np.int64))
    fragments = (str(path), "x is uint8 0–255", "convert to float32 and normalize")
    fails(["simulate", digits_tiles, "--images", path, "-T", 2], capsys, *fragments)
    fails(["compile", "digits", "--calib", path, "-o", tmp_path / "d.tiles"], capsys, *fragments)
    assert not (tmp_path / "d.tiles").exists()
    ints = tmp_path / "ints.npz"
    np.savez(ints, x=np.zeros((2, 1, 8, 8), np.int32))
    with pytest.raises(DataError, match="x is int32"):
        load_images(str(ints))
    floats = tmp_path / "floats.npz"
    np.savez(floats, x=np.zeros((2, 1, 8, 8), np.float64))
    assert load_images(str(floats)).x.dtype == np.float32


# ------------------------------------------------------------ 8. calibration images used


def test_compile_says_how_many_calibration_images_it_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "digits.tiles"
    _, err = ok(["compile", "digits", "-o", out, "--calib-limit", 100], capsys)
    assert "calibrated on 100 images from digits:train" in err.splitlines()
    report, _ = ok(["compile", "digits", "-o", out, "--calib-limit", 100, "--json"], capsys)
    calib = json.loads(report)["calibration"]
    assert (calib["images"], calib["source"]) == (100, "digits:train")


# ------------------------------------------------------------ 9. evaluating on calibration images


def test_simulate_warns_when_it_evaluates_on_the_calibration_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calib = tmp_path / "calib.npz"
    train = load_images("digits", split="train", limit=40)
    np.savez(calib, x=train.x, y=train.y)
    tiles = tmp_path / "mine.tiles"
    ok(["compile", "digits", "--calib", calib, "-o", tiles], capsys)
    out, err = ok(["simulate", tiles, "-T", 2, "--no-ann", "--json"], capsys)
    assert (
        f"warning: no --images given: evaluating on the calibration images {calib.resolve()}; "
        "pass --images for a held-out set"
    ) in err
    report = json.loads(out)
    assert report["evaluated_on_calibration_images"] is True and report["images"] == 40
    out, err = ok(["simulate", tiles, "-T", 2, "--no-ann", "--json", "--images", calib], capsys)
    assert "warning" not in err
    assert json.loads(out)["evaluated_on_calibration_images"] is False


def test_simulate_of_a_named_data_set_does_not_warn(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = ok(["simulate", digits_tiles, "--limit", 4, "-T", 2, "--json"], capsys)
    assert "warning" not in err
    report = json.loads(out)
    assert report["images_source"] == "digits:test"
    assert report["evaluated_on_calibration_images"] is False


# ------------------------------------------------------------ 10. the critical layer's name


def test_critical_layer_is_printed_by_name(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--limit", 8, "-T", 4, "--backend", "rram", "--no-ann"]
    r = simulate_json(digits_tiles, capsys, *args)
    nodes = read_artifact(digits_tiles).graph.node_map()
    value = r["critical_layer"].removeprefix("%").split(".")[0]
    name = r["critical_layer_name"]
    assert nodes[value].loc and name.startswith(nodes[value].loc)
    _, err = ok(["simulate", digits_tiles, *args], capsys)
    line = line_with(err, "critical layer")
    assert name in line and "%" not in line


# ------------------------------------------------------------ 11. spike rates and early exit


def test_spike_rates_count_only_the_steps_each_image_ran(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n, T, V = 40, 12, 3.0
    args = ["--limit", n, "-T", T, "--no-ann"]
    full = simulate_json(digits_tiles, capsys, *args)["spike_rates"]
    r = simulate_json(digits_tiles, capsys, *args, "--early-exit", V)
    assert 1 <= r["mean_exit_step"] < T
    # by hand: the reference runtime's spikes per step and image, summed up to each image's
    # exit step (the first step whose largest output membrane exceeds V), over those steps
    g = read_artifact(digits_tiles).graph
    trace = SnnRuntime(g).run(load_images("digits", limit=n).x, T)
    exits = []
    for i in range(n):
        crossed = [t + 1 for t in range(T) if trace.final[t, i].max() > V]
        exits.append(crossed[0] if crossed else T)
    assert sum(exits) / n == pytest.approx(r["mean_exit_step"])
    nodes = g.node_map()
    assert len(r["spike_rates"]) == len(trace.spikes)
    for label, rate in r["spike_rates"].items():
        value = label.split()[0].removeprefix("%")
        spikes = sum(int(trace.spikes[value][: exits[i], i].sum()) for i in range(n))
        neurons = nodes[value].type.numel_per_sample()
        assert rate == pytest.approx(spikes / (neurons * sum(exits)), rel=1e-12)
        # every layer is silent in its first steps (one step per layer for spikes to arrive,
        # more for membranes to charge), and an image that exits early spends a larger share
        # of its steps there: per simulated step, the rates are lower than without early exit
        assert rate < full[label]
    # without early exit the definition is spikes / (neurons · T · N), as before
    for label, rate in full.items():
        value = label.split()[0].removeprefix("%")
        neurons = nodes[value].type.numel_per_sample()
        assert rate == pytest.approx(int(trace.spikes[value].sum()) / (neurons * T * n))
