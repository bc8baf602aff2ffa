"""Every numeric or size flag refuses non-finite and out-of-range values when the command line
is parsed: exit 2, a message naming the flag and its valid range, nothing on stdout, no
traceback, nothing written (issue 9, items 3 and 4). Boundary values are accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clirun import cli, fails, ok, usage_fails

from bsnnc.compiler.cli import build_parser
from bsnnc.ir.parser import MAX_INLINE_ELEMENTS

MAX_SEED = 2**63 - 1
SEED_RANGE = "from 0 to 9,223,372,036,854,775,807"
IMAGES_RANGE = "from 1 to 1,000,000,000"
BATCH_RANGE = "from 1 to 1,000,000"
SHAPE_RANGE = "each from 1 to 65,536, at most 16,777,216 elements"
HUGE_INT = "1" + "0" * 30


@pytest.fixture(scope="module")
def digits_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bsnnc compile digits`` once for the module."""
    out = tmp_path_factory.mktemp("flags") / "digits.tiles"
    assert cli(["compile", "digits", "-o", out]) == 0
    return out


#: (extra argv, the flag as argparse names it, a fragment of the range message)
SIMULATE_CASES: list[tuple[list[str], str, str]] = [
    *[(["--adc-bits", v], "--adc-bits", "from 1 to 32") for v in ("100", "0", "33", "-1", "4.5")],
    *[(["--seed", v], "--seed", SEED_RANGE) for v in ("-1", str(MAX_SEED + 1), "1.5", "nan")],
    *[
        (["-T", v], "--timesteps/-T", "from 1 to 1,000,000")
        for v in ("1e20", HUGE_INT, "9" * 5000, "0", "1000001", "nan")
    ],
    (["--timesteps", "-4"], "--timesteps/-T", "from 1 to 1,000,000"),
    *[
        (["--variation", v], "--variation", "from 0 to 10")
        for v in ("nan", "-0.1", "inf", "11", "1e300", "lots")
    ],
    *[(["--stuck-at", v], "--stuck-at", "from 0 to 1") for v in ("-0.01", "1.5", "nan", "inf")],
    *[
        ([f"--early-exit={v}"], "--early-exit", "finite number ≥ 0")
        for v in ("nan", "-1", "inf", "-inf", "1e999")
    ],
    *[
        ([f"--max-memory={v}"], "--max-memory", "from 16M to 1T")
        for v in ("1K", "infG", "nanM", "0", "15M", "2T", "-1G", "1e400", "lots", "1e999G")
    ],
    *[(["--limit", v], "--limit", IMAGES_RANGE) for v in ("0", "-1", "1000000001", HUGE_INT)],
    *[(["--batch", v], "--batch", BATCH_RANGE) for v in ("0", "-1", "1000001", "inf")],
]


@pytest.mark.parametrize(("argv", "flag", "fragment"), SIMULATE_CASES)
def test_simulate_refuses_out_of_range_flags(
    argv: list[str],
    flag: str,
    fragment: str,
    digits_tiles: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The refusal comes from argparse (``usage:`` printed) before any simulation; the base
    options make an unchecked value run for a moment only, so this fails fast on old code."""
    base = ["simulate", digits_tiles, "--limit", "1", "-T", "1", "--backend", "rram"]
    err = fails([*base, *argv], capsys, f"argument {flag}:", fragment)
    assert "usage: bsnnc simulate" in err


COMPILE_CASES: list[tuple[list[str], str, str]] = [
    *[
        ([f"--duplicate={v}"], "--duplicate", "from 1 to 100")
        for v in ("inf", "nan", "0.5", "0", "-1", "101", "-inf")
    ],
    *[
        ([f"--percentile={v}"], "--percentile", "from 0 (exclusive) to 100, or 'max'")
        for v in ("nan", "0", "101", "-5", "inf", "100.0001")
    ],
    *[
        (["--calib-limit", v], "--calib-limit", IMAGES_RANGE)
        for v in ("0", "-1", "1000000001", "2.5")
    ],
    *[
        ([f"--v-init={v}"], "--v-init", "expected zero, half or a fraction of θ from 0 to 1")
        for v in ("nan", "-0.5", "1.5", "inf", "full")
    ],
    (["--v-init=0.3"], "--v-init", "a multiple of 1/256 (the tile program stores the initial"),
    (["--v-init=0.3"], "--v-init", "the nearest is 0.30078125"),
    *[
        (["--input-shape", v], "--input-shape", SHAPE_RANGE)
        for v in ("1,0,8", "1,-8,8", "1,100000,8", "64,4096,4096", "1,2,3,4,5,6,7,8,9", "1,x,8")
    ],
]


@pytest.mark.parametrize(("argv", "flag", "fragment"), COMPILE_CASES)
def test_compile_refuses_out_of_range_flags(
    argv: list[str],
    flag: str,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["compile", "digits", "-o", str(tmp_path / "out.tiles"), *argv]
    usage_fails(argv, capsys, tmp_path, f"argument {flag}:", fragment)


OTHER_CASES: list[tuple[list[str], str, str]] = [
    *[
        (["verify", "digits", "--limit", "1", f"--rtol={v}"], "--rtol", "finite number ≥ 0")
        for v in ("nan", "-1", "inf", "-0.001")
    ],
    *[
        (["verify", "digits", "--limit", "1", "--seed", v], "--seed", SEED_RANGE)
        for v in ("-1", str(MAX_SEED + 1))
    ],
    (["verify", "digits", "--limit", "0"], "--limit", IMAGES_RANGE),
    (["verify", "digits", "--limit", "1", "--batch", "0"], "--batch", BATCH_RANGE),
    (["verify", "digits", "--input-shape", "1,0,8"], "--input-shape", SHAPE_RANGE),
    (["inspect", "digits", "--input-shape", "0,8,8"], "--input-shape", SHAPE_RANGE),
    (["inspect", "digits", "--input-shape", "1,8,65537"], "--input-shape", SHAPE_RANGE),
    (["opt", "IR", "--inline-max", "-1"], "--inline-max", f"from 0 to {MAX_INLINE_ELEMENTS}"),
    (["opt", "IR", "--inline-max", HUGE_INT], "--inline-max", f"from 0 to {MAX_INLINE_ELEMENTS}"),
    (["opt", "IR", "--percentile", "nan"], "--percentile", "from 0 (exclusive) to 100"),
    (["opt", "IR", "--calib-limit", "0"], "--calib-limit", IMAGES_RANGE),
]


@pytest.mark.parametrize(("argv", "flag", "fragment"), OTHER_CASES)
def test_verify_inspect_opt_refuse_out_of_range_flags(
    argv: list[str],
    flag: str,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--rtol nan`` is a usage error, not a failed check (exit 1); ``opt`` never reads its
    input (``IR``: a file that is not IR text)."""
    ir = tmp_path / "in.ir"
    ir.write_text("not IR\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    argv = [str(ir) if a == "IR" else a for a in argv]
    usage_fails(argv, capsys, cwd, f"argument {flag}:", fragment)


#: (command and its positional, flag, value, the parsed attribute, the value it parses to)
BOUNDARIES: list[tuple[list[str], str, str, str, Any]] = [
    *[
        (["simulate", "a.tiles"], flag, text, dest, value)
        for flag, dest, pairs in (
            ("-T", "timesteps", (("1", 1), ("1000000", 1_000_000))),
            ("--adc-bits", "adc_bits", (("1", 1), ("32", 32))),
            ("--seed", "seed", (("0", 0), (str(MAX_SEED), MAX_SEED))),
            ("--variation", "variation", (("0", 0.0), ("10", 10.0))),
            ("--stuck-at", "stuck_at", (("0", 0.0), ("1", 1.0))),
            ("--early-exit", "early_exit", (("0", 0.0), ("1e12", 1e12))),
            ("--max-memory", "max_memory", (("16M", 16 << 20), ("1T", 1 << 40), ("1.5G", 3 << 29))),
            ("--limit", "limit", (("1", 1), ("1000000000", 10**9))),
            ("--batch", "batch", (("1", 1), ("1000000", 10**6))),
        )
        for text, value in pairs
    ],
    (["simulate", "a.tiles"], "--max-memory", "16777216", "max_memory", 16 << 20),
    (["compile", "digits"], "--duplicate", "1", "duplicate", 1.0),
    (["compile", "digits"], "--duplicate", "100", "duplicate", 100.0),
    (["compile", "digits"], "--percentile", "1e-9", "percentile", 1e-9),
    (["compile", "digits"], "--percentile", "100", "percentile", 100.0),
    (["compile", "digits"], "--percentile", "max", "percentile", 100.0),
    (["compile", "digits"], "--v-init", "zero", "v_init", 0.0),
    (["compile", "digits"], "--v-init", "half", "v_init", 0.5),
    (["compile", "digits"], "--v-init", "0", "v_init", 0.0),
    (["compile", "digits"], "--v-init", "1", "v_init", 1.0),
    (["compile", "digits"], "--v-init", "0.00390625", "v_init", 1 / 256),
    (["opt", "a.ir"], "--v-init", "0.75", "v_init", 0.75),
    (["compile", "digits"], "--calib-limit", "1", "calib_limit", 1),
    (["compile", "digits"], "--calib-limit", "1000000000", "calib_limit", 10**9),
    (["compile", "digits"], "--input-shape", "1", "input_shape", (1,)),
    (["compile", "digits"], "--input-shape", "1,65536,256", "input_shape", (1, 65536, 256)),
    (["compile", "digits"], "--input-shape", "1,1,1,1,1,1,1,1", "input_shape", (1,) * 8),
    (["inspect", "digits"], "--input-shape", "3x224x224", "input_shape", (3, 224, 224)),
    (["verify", "digits"], "--rtol", "0", "rtol", 0.0),
    (["verify", "digits"], "--rtol", "1e300", "rtol", 1e300),
    (["verify", "digits"], "--seed", str(MAX_SEED), "seed", MAX_SEED),
    (["verify", "digits"], "--batch", "1000000", "batch", 10**6),
    (["opt", "a.ir"], "--inline-max", "0", "inline_max", 0),
    (["opt", "a.ir"], "--inline-max", str(MAX_INLINE_ELEMENTS), "inline_max", MAX_INLINE_ELEMENTS),
    (["opt", "a.ir"], "--percentile", "100", "percentile", 100.0),
]


@pytest.mark.parametrize(("command", "flag", "text", "dest", "value"), BOUNDARIES)
def test_boundary_values_parse(
    command: list[str], flag: str, text: str, dest: str, value: object
) -> None:
    args = build_parser().parse_args([*command, flag, text])
    assert getattr(args, dest) == value


def test_simulate_runs_at_the_boundaries(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The crossbar model takes the extreme non-idealities and the smallest memory bound."""
    ok(
        [
            "simulate",
            digits_tiles,
            "--limit",
            "2",
            "-T",
            "1",
            "--batch",
            "1",
            "--max-memory",
            "16M",
            "--early-exit",
            "0",
            "--backend",
            "rram",
            "--adc-bits",
            "32",
            "--variation",
            "10",
            "--stuck-at",
            "1",
            "--seed",
            str(MAX_SEED),
            "--json",
        ],
        capsys,
    )


def test_verify_runs_at_the_boundaries(capsys: pytest.CaptureFixture[str]) -> None:
    ok(
        ["verify", "digits", "--limit", "1", "--batch", "1", "--seed", str(MAX_SEED), "--json"],
        capsys,
    )
