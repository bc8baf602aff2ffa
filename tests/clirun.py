"""Running the CLI in-process from tests: exit codes, success and failure with a clean message."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from bsnnc.compiler.cli import main

#: the fields of ``simulate --json`` that differ between two runs of the same thing: wall
#: times (``executor`` holds the seconds of each shard)
TIMING_KEYS = ("seconds", "image_timesteps_per_second", "executor")


def cli(argv: Sequence[object]) -> int:
    """Run ``bsnnc argv`` in process; the exit code (argparse exits are caught)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # --help, --version and usage errors exit through argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def flat(text: str) -> str:
    """``text`` without whitespace (rich may wrap messages)."""
    return "".join(text.split())


def ok(argv: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run a command that must succeed; (stdout, stderr)."""
    code = cli(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"bsnnc {' '.join(map(str, argv))} exited {code}:\n{err}"
    return out, err


def fails(argv: Sequence[object], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    """Run a command that must fail with exit code 2 and a clean message on stderr (no
    traceback, nothing on stdout) that contains every one of ``fragments``."""
    code = cli(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err and "internal error" not in err, err
    assert err.strip(), "no message on stderr"
    assert not out.strip(), f"nothing belongs on stdout on error, got:\n{out}"
    for f in fragments:
        assert flat(f) in flat(err), f"{f!r} not in the message:\n{err}"
    return err


def compile_fails(
    model: Path | str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    *fragments: str,
    extra: Sequence[str] = (),
) -> str:
    """``compile MODEL -o OUT`` must fail cleanly and leave nothing in OUT's directory."""
    outdir = tmp_path / "out"
    outdir.mkdir(exist_ok=True)
    out = outdir / "model.tiles"
    err = fails(["compile", model, "-o", out, *extra], capsys, *fragments)
    assert not out.exists()
    assert list(outdir.iterdir()) == [], "temporary files left behind"
    return err


def usage_fails(
    argv: Sequence[object], capsys: pytest.CaptureFixture[str], cwd: Path, *fragments: str
) -> str:
    """A usage error: :func:`fails`, with argparse's usage line, and nothing written into
    ``cwd`` (the test's working directory)."""
    err = fails(argv, capsys, *fragments)
    assert "usage: bsnnc" in err
    assert list(cwd.iterdir()) == []
    return err
