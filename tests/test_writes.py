"""Writing outputs safely: only regular files are replaced, outputs follow the umask, a pair
(``.ir`` + ``.npz``) is written whole or not at all, and Ctrl-C / SIGTERM at any point (even
while the modules load) end with exit 130 / 143, one line, no traceback, no temporary file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import fails, flat, ok

from bsnnc.ir import io as irio
from bsnnc.ir.errors import BsnncError

TINY_IR = """graph @t {
  const @w : bipolar[2,2] = [[1,-1],[-1,1]]
  %x = input() : f32[?,2]
  %0 = relu(%x) : f32[?,2]
  %1 = dense(%0, @w) : f32[?,2]
  return %1
}
"""

#: run in a subprocess (``-c SLOW_WRITE MODULE FUNCTION ARGS...``): the CLI, with the writer
#: ``MODULE.FUNCTION(f, ...)`` stalled after writing its data, so that a signal is sure to
#: arrive while that output is being written
SLOW_WRITE = """
import importlib, sys, time
module, name = importlib.import_module(sys.argv.pop(1)), sys.argv.pop(1)
real = getattr(module, name)
def stalled(f, *args):
    real(f, *args)
    f.flush()
    time.sleep(60)
setattr(module, name, stalled)
from bsnnc.__main__ import entry
raise SystemExit(entry())
"""


@pytest.fixture
def tiny_ir(tmp_path: Path) -> Path:
    """A small IR file whose constants are inline (so ``opt -o`` can write its weights)."""
    path = tmp_path / "tiny.ir"
    path.write_text(TINY_IR)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- only regular files


def _symlink(path: Path) -> None:
    (path.parent / "target.ir").write_text("keep me\n")
    path.symlink_to("target.ir")


def _dangling(path: Path) -> None:
    path.symlink_to("nowhere.ir")


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _device(path: Path) -> None:
    """A character device node like /dev/null (1, 3), made in the test's folder, so that not
    even the old behaviour can replace a real device."""
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError as e:
        pytest.skip(f"cannot make a device node here ({e})")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_symlink, "symbolic link"),
        (_dangling, "symbolic link"),
        (_fifo, "FIFO"),
        (_directory, "directory"),
        (_device, "character device"),
    ],
)
@pytest.mark.parametrize("command", ["opt", "compile"])
def test_output_that_is_not_a_regular_file_is_refused(
    make: Callable[[Path], None],
    kind: str,
    command: str,
    tiny_ir: Path,
    zoo_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out" / "result.ir"
    out.parent.mkdir()
    make(out)
    before = os.lstat(out)
    target = out.parent / "target.ir"
    argv: list[object] = (
        ["opt", tiny_ir, "-o", out]
        if command == "opt"
        else ["compile", zoo_dir / "avg_before_relu.onnx", "--pipeline", "import", "-o", out]
    )
    fails(argv, capsys, f"refusing to replace {out}", "not a regular file", kind)
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == sorted(["result.ir", *(["target.ir"] if target.exists() else [])]), left
    if target.exists():
        assert target.read_text() == "keep me\n"


def test_real_dev_null_is_refused_untouched() -> None:
    """As root, the old behaviour replaced a device node with a file. Checked on the function
    the writers call first, so that not even a regression can write to the real /dev/null."""
    null = Path("/dev/null")
    if os.geteuid() != 0 or not stat.S_ISCHR(os.lstat(null).st_mode):
        pytest.skip("only meaningful as root, with a device /dev/null")
    before = os.lstat(null)
    with pytest.raises(BsnncError, match="refusing to replace /dev/null: not a regular file"):
        irio.check_replaceable(null)
    after = os.lstat(null)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )


# ---------------------------------------------------------------- .ir + .npz as one


def test_opt_output_to_a_directory_leaves_nothing(
    tiny_ir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "outdir"
    out.mkdir()
    fails(["opt", tiny_ir, "-o", out], capsys, str(out), "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir", "tiny.ir"]
    assert list(out.iterdir()) == []


def test_opt_ir_write_failure_leaves_no_npz(
    tiny_ir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The weights are written first; when the .ir then fails, neither is left."""

    def broken(f: object, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(irio, "_write_bytes", broken)
    out = tmp_path / "o" / "result.ir"
    handler = signal.getsignal(signal.SIGTERM)
    fails(["opt", tiny_ir, "-o", out], capsys, str(out), "No space left on device")
    assert list(out.parent.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler, "main() must restore the handler"


def test_opt_failed_rename_keeps_no_half_pair(
    tiny_ir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """If the second rename fails, the first file renamed is removed again."""
    real = os.replace
    calls: list[str] = []

    def second_fails(src: str, dst: str) -> None:
        calls.append(str(dst))
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(irio.os, "replace", second_fails)
    out = tmp_path / "o" / "result.ir"
    fails(["opt", tiny_ir, "-o", out], capsys, str(out), "Input/output error")
    assert calls == [str(out.with_suffix(".npz")), str(out)]
    assert list(out.parent.iterdir()) == []


def test_dump_dir_failure_says_where_the_stage_files_are(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "stages"
    model = zoo_dir / "avg_before_relu.onnx"
    argv = ["compile", model, "--pipeline", "import", "--dump-program", "--dump-dir", d]
    err = fails(argv, capsys, "--dump-program")
    assert flat(f"note: stage files written so far are in {d}") in flat(err)
    assert (d / "00-import.ir").is_file()


# ---------------------------------------------------------------- umask


def _run_with_umask(mask: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    def preexec() -> None:
        os.umask(mask)

    return subprocess.run(
        [sys.executable, "-m", "bsnnc", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        preexec_fn=preexec,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_follow_the_umask(mask: int, mode: int, tiny_ir: Path, tmp_path: Path) -> None:
    out = tmp_path / "o" / "result.ir"
    run = _run_with_umask(mask, ["opt", str(tiny_ir), "-o", str(out)], tmp_path)
    assert run.returncode == 0, run.stderr
    for path in (out, out.with_suffix(".npz")):
        assert stat.S_IMODE(path.stat().st_mode) == mode, f"{path}: {path.stat().st_mode:o}"


def test_umask_is_read_without_changing_it() -> None:
    old = os.umask(0o027)
    try:
        assert irio.umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


# ---------------------------------------------------------------- signals


def _wait_for(test: Callable[[], bool], proc: subprocess.Popen[str], what: str) -> None:
    """Poll ``test`` for up to 15 s while ``proc`` runs."""
    deadline = time.monotonic() + 15
    while not test():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the process did not end after the signal")
    return proc.returncode, err


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_sigint_while_the_modules_load(tmp_path: Path) -> None:
    """Ctrl-C in the first second (numpy, onnx and rich still loading)."""
    out = tmp_path / "x.tiles"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bsnnc", "compile", "digits", "-o", str(out)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # numpy's extension is mapped early in the CLI's imports: past interpreter start-up
    _wait_for(lambda: _loaded(proc.pid, "_multiarray_umath"), proc, "numpy loads")
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    assert code == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: interrupted", err
    assert list(tmp_path.iterdir()) == []


def _stalled_write(argv: list[str], writer: str, cwd: Path) -> subprocess.Popen[str]:
    module, name = writer.rsplit(".", 1)
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITE, module, name, *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_while_writing_the_artifact(zoo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.tiles"
    model = zoo_dir / "avg_before_relu.onnx"
    argv = ["compile", str(model), "--pipeline", "import", "-o", str(out)]
    proc = _stalled_write(argv, "bsnnc.runtime.artifact.write_npz", tmp_path)
    _wait_for(lambda: bool(_leftovers(tmp_path)), proc, "the artifact is being written")
    proc.send_signal(signal.SIGTERM)
    code, err = _finish(proc)
    assert code == 143, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: terminated", err
    assert list(tmp_path.iterdir()) == [], "temporary or partial files left"


def test_sigint_while_writing_the_ir_after_its_weights(tiny_ir: Path, tmp_path: Path) -> None:
    """The .npz is complete, the .ir being written: neither may be left."""
    out = tmp_path / "o" / "result.ir"
    proc = _stalled_write(
        ["opt", str(tiny_ir), "-o", str(out)], "bsnnc.ir.io._write_bytes", tmp_path
    )

    def writing_ir() -> bool:
        return out.parent.is_dir() and any(
            n.startswith(".result.ir.") for n in _leftovers(out.parent)
        )

    _wait_for(writing_ir, proc, "the .ir is being written")
    proc.send_signal(signal.SIGINT)
    code, err = _finish(proc)
    assert code == 130, err
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: interrupted", err
    assert list(out.parent.iterdir()) == [], "temporary or partial files left"


def test_compile_and_plot_refuse_a_fifo_before_working(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output is checked before compiling or simulating, not only when written."""
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    fails(["compile", "digits", "-o", fifo], capsys, "refusing to replace", "FIFO")
    tiles = tmp_path / "d.tiles"
    ok(["compile", "digits", "-o", tiles], capsys)
    fails(["simulate", tiles, "--plot", fifo, "-T", "4"], capsys, "refusing to replace", "FIFO")
    assert fifo.exists() and stat.S_ISFIFO(fifo.stat().st_mode)
