"""The hostile-input corpus of issue 9 (item 8): one table, at least one case per class of
bad input the issue lists, each built here, run through the command line, and checked for its
exit code, a fragment of its message (naming the file, member, line or flag), no traceback,
and an output folder left exactly as it was. Memory bombs run in a child process whose peak
RSS (``os.wait4``) must stay far below what the bomb would take; signals are sent to a child
held just before it renames its finished output into place.

The classes (the issue's numbering) and where each is tested in depth:

1. external data escaping the model's folder: ``test_errors.py``;
2. memory bombs: ``test_artifact_safety.py``, ``test_input_limits.py``,
   ``test_program_validation.py`` (IR text), ``test_batching.py`` (``--max-memory`` along T);
3. what used to exit 70 and is exit 2 now: ``test_program_validation.py``,
   ``test_artifact_safety.py``, ``test_flags.py``, ``test_datasets.py``, ``test_mutation.py``;
4. what used to be accepted silently: ``test_input_limits.py``, ``test_flags.py``,
   ``test_program_validation.py``, ``test_errors.py``;
5. a tile program that disagrees with ``graph.ir``: ``test_program_validation.py``;
6. results independent of batching: ``test_batching.py``;
7. writes and signals: ``test_writes.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from clirun import cli, flat
from onnx import helper, numpy_helper
from rss import child_limits, measured
from zoo import ZOO, Net

from bsnnc.runtime.artifact import MANIFEST, read_artifact
from bsnnc.runtime.simulate import bytes_per_image

MiB = 1 << 20


@dataclass(frozen=True)
class Where:
    """The folders of one case: ``src`` holds its inputs; ``out`` is the output folder and
    working directory, which must be left as it was (``writes`` aside)."""

    src: Path
    out: Path
    tiles: Path  # digits, compiled once for the module


Build = Callable[[Where], list[object]]


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build`` writes it into ``src`` and returns the command line."""

    name: str
    build: Build
    #: fragments of stderr (with exit 0, of stdout and stderr); ``{src}``, ``{out}``: the folders
    says: tuple[str, ...]
    code: int = 2
    #: run in a child process whose peak RSS must stay below this many MiB
    rss_mib: int | None = None
    #: run in a child process and send it this signal while it writes its output
    signal: int | None = None
    #: run once per ``--batch`` (None: the default); every run's spike_digest is the same
    batches: tuple[int | None, ...] = ()
    #: run under this umask; the files in ``writes`` must have the mode it gives
    umask: int | None = None
    writes: tuple[str, ...] = ()


# ---------------------------------------------------------------- builders


def command(*argv: object) -> Build:
    """A command line on the inputs every case has: ``{src}``, ``{out}`` and ``{tiles}`` in
    a string argument are replaced by the folders and the digits artifact."""

    def build(w: Where) -> list[object]:
        return [
            a.format(src=w.src, out=w.out, tiles=w.tiles) if isinstance(a, str) else a for a in argv
        ]

    return build


def simulate(*flags: object) -> Build:
    """``simulate`` of the digits artifact on two images, two steps, with ``flags``."""
    return command("simulate", "{tiles}", "--limit", "2", "-T", "2", "--no-ann", *flags)


def external_escape(location: str, which: int) -> Build:
    """avg_before_relu saved with its tensors in ``w.data`` beside it, then initializer
    ``which`` pointed at ``location`` (``{src}``: the inputs folder), a copy of the right bytes
    outside the model's folder: only the location check can refuse it."""

    def build(w: Where) -> list[object]:
        m = ZOO["avg_before_relu"]()
        path = w.src / "model" / "model.onnx"
        path.parent.mkdir()
        onnx.save_model(m, path, save_as_external_data=True, location="w.data", size_threshold=0)
        shutil.copy(path.parent / "w.data", w.src / "outside.data")
        entry = next(e for e in m.graph.initializer[which].external_data if e.key == "location")
        entry.value = location.format(src=w.src)
        onnx.save_model(m, path)  # the tensors' data stay where they were written
        return ["compile", path, "-o", w.out / "model.tiles"]

    return build


def onnx_model(make: Callable[[], onnx.ModelProto], *flags: object) -> Build:
    """``compile`` of the model ``make`` builds."""

    def build(w: Where) -> list[object]:
        path = w.src / "model.onnx"
        onnx.save(make(), path)
        return ["compile", path, "-o", w.out / "model.tiles", *flags]

    return build


def weight_set(value: float) -> Callable[[], onnx.ModelProto]:
    """avg_before_relu with one element of its first weight (``w1``) set to ``value``."""

    def make() -> onnx.ModelProto:
        m = ZOO["avg_before_relu"]()
        t = m.graph.initializer[0]
        array = numpy_helper.to_array(t).copy()
        array.flat[5] = value
        t.CopyFrom(numpy_helper.from_array(array, t.name))
        return m

    return make


def opset_99() -> onnx.ModelProto:
    m = ZOO["avg_before_relu"]()
    m.opset_import[0].version = 99
    return m


def constant_of_shape_bomb() -> onnx.ModelProto:
    """A few hundred bytes that fold to 50000 × 50000 floats (10 GB) before being summed."""
    n = Net("bomb", (4,), seed=0)
    shape = n.init(np.array([50000, 50000], np.int64), "shape")
    n.nodes.append(helper.make_node("ConstantOfShape", [shape], ["big"], name="bomb"))
    n.nodes.append(helper.make_node("ReduceSum", ["big"], ["total"], name="sum", keepdims=0))
    return n.op("Add", ["total"]).model()


#: a small spiking graph in IR text, its constant inline (``opt`` needs no .npz)
IR = """graph @corpus {
  const @w : bipolar[2,2] = [[1,-1],[-1,1]]
  %x = input() : f32[?,2]
  %0 = if(%x) {axis=1, reset="subtract", theta=1.0} : spike[?,2] loc("fire")
  %1 = dense(%0, @w) : i32[?,2] loc("fc")
  return %1
}
"""


def ir_text(old: str, new: str) -> Build:
    """``opt`` of :data:`IR` with ``old`` replaced by ``new``, as ``{src}/bad.ir``."""

    def build(w: Where) -> list[object]:
        assert old in IR
        path = w.src / "bad.ir"
        path.write_text(IR.replace(old, new, 1))
        return ["opt", path]

    return build


def tampered(member: str, edit: Callable[[bytes], bytes], *flags: object) -> Build:
    """The digits artifact with ``member`` edited and its checksum and size in the manifest
    recomputed (so only the checks of the content can refuse it), as ``{src}/bad.tiles``;
    the command is ``simulate`` with ``flags``, or ``inspect`` without."""

    def build(w: Where) -> list[object]:
        with zipfile.ZipFile(w.tiles) as z:
            members = {name: z.read(name) for name in z.namelist()}
        data = members[member] = edit(members[member])
        manifest = json.loads(members[MANIFEST])
        manifest["members"][member] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        members[MANIFEST] = json.dumps(manifest).encode()
        bad = w.src / "bad.tiles"
        with zipfile.ZipFile(bad, "w") as z:
            for name, body in members.items():
                z.writestr(name, body)
        rest = ["--limit", "2", "-T", "2", "--no-ann", *flags]
        return ["simulate", bad, *rest] if flags else ["inspect", bad]

    return build


def replace(old: str, new: str) -> Callable[[bytes], bytes]:
    """A text edit that must apply."""

    def edit(data: bytes) -> bytes:
        assert old.encode() in data, old
        return data.replace(old.encode(), new.encode(), 1)

    return edit


def one_more_theta(data: bytes) -> bytes:
    """program.txt with the first neuron's integer threshold one higher."""
    head, _, rest = data.partition(b" theta ")
    value, _, tail = rest.partition(b" ")
    return head + b" theta " + str(int(value) + 1).encode() + b" " + tail


def pickled_npz(data: bytes) -> bytes:
    """An npz holding an object array (loadable only by unpickling)."""
    buf = io.BytesIO()
    np.savez(buf, w=np.array([{"evil": 1}], dtype=object))
    return buf.getvalue()


def zip_bomb(w: Where) -> list[object]:
    """A 1 MiB artifact whose manifest lists ``zero.bin``: 1 GiB of zeros deflated ~1000:1
    (a 1 MiB segment compressed once, flushed, repeated: no back-reference crosses it), with
    its true size and CRC, written as stored and then relabelled deflated in the directory."""
    size = 1 << 30
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // MiB):
        crc = zlib.crc32(bytes(MiB), crc)
    manifest = {"format": "bsnnc.tiles", "format_version": 1,
                "members": {"zero.bin": {"sha256": "0" * 64, "size": size}}}  # fmt: skip
    bomb = w.src / "bomb.tiles"
    with zipfile.ZipFile(bomb, "w") as z:
        z.writestr(MANIFEST, json.dumps(manifest))
        with z.open("zero.bin", "w") as f:
            f.write(segment * (size // MiB) + c.flush())
        info = z.getinfo("zero.bin")
        info.compress_type, info.file_size, info.CRC = zipfile.ZIP_DEFLATED, size, crc
    assert bomb.stat().st_size < 2 * MiB
    return ["inspect", bomb]


def tiny_arrays(w: Where) -> list[object]:
    hw = w.src / "tiny.json"
    hw.write_text(json.dumps({"name": "tiny", "rows": 1, "columns": 1, "max_rows_driven": 1,
                              "columns_per_adc": 1}))  # fmt: skip
    return ["compile", "digits", "--hw", hw, "-o", w.out / "digits.tiles"]


#: timesteps of the windowed run, and its bound on peak RSS (230 MiB measured; without windows
#: 1.2 GiB): one image over all of them needs more than twice the bound
LONG_T, LONG_T_RSS_MIB = 40_000, 450


def long_run(w: Where) -> list[object]:
    need = bytes_per_image(read_artifact(w.tiles).graph, LONG_T)
    assert need > 2 * LONG_T_RSS_MIB * MiB, f"{need / MiB:.0f} MiB: the case would prove nothing"
    return ["simulate", w.tiles, "-T", LONG_T, "--max-memory", "16M", "--limit", "1",
            "--no-ann", "--json"]  # fmt: skip


def empty_images(w: Where) -> list[object]:
    path = w.src / "empty.npz"
    np.savez(path, x=np.zeros((0, 1, 8, 8), np.float32))
    return ["simulate", w.tiles, "--images", path, "-T", "2", "--no-ann"]


def latin1_manifest(w: Where) -> list[object]:
    bad = w.src / "latin1.tiles"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr(MANIFEST, b'{"format": "bsnnc.tiles", "note": "caf\xe9"}')
    return ["inspect", bad]


def onto(make: Callable[[Path], None]) -> Build:
    """``compile digits`` (import only) with ``-o {out}/x.tiles``, made by ``make`` first."""

    def build(w: Where) -> list[object]:
        make(w.out / "x.tiles")
        return command("compile", "digits", *COMPILE)(w)

    return build


def symlink(path: Path) -> None:
    (path.parent / "target.tiles").write_text("keep me\n")
    path.symlink_to("target.tiles")


def nothing(path: Path) -> None:
    pass


# ---------------------------------------------------------------- the corpus

NONIDEAL = ("--variation", "0.2", "--stuck-at", "0.02", "--adc-bits", "4", "--seed", "1")
RRAM = ("--backend", "rram")
BAD = "{src}/bad.tiles"
#: ``compile digits`` to ``{out}/x.tiles``, its import only (fast)
COMPILE = "--pipeline", "import", "-o", "{out}/x.tiles"


def case(name: str, build: Build, *says: str, **options: Any) -> Case:
    return Case(name, build, says, **options)


CASES = [
    # 1. external data outside the model's folder, in the first initializer (which the old
    #    check missed) and in the last
    case("1-external-dotdot-first", external_escape("../outside.data", 0),
         "{src}/model/model.onnx", "'w1'", "../outside.data", "outside the model's folder"),
    case("1-external-absolute-first", external_escape("{src}/outside.data", 0),
         "{src}/model/model.onnx", "'w1'", "relative paths inside the model's folder"),
    case("1-external-dotdot-last", external_escape("../outside.data", -1),
         "{src}/model/model.onnx", "../outside.data", "outside the model's folder"),
    # 2. memory bombs: refused (a long run: run in time windows) within bounded memory
    case("2-tiles-1GiB-zero-member", zip_bomb,
         "{src}/bomb.tiles[zero.bin]", "1.0 GiB", "200:1", rss_mib=100),
    case("2-onnx-constant-of-shape", onnx_model(constant_of_shape_bomb),
         "'bomb'", "2,500,000,000 elements", "limit", rss_mib=150),
    case("2-ir-newlines", ir_text("\n", "\n" * 241_000),
         "{src}/bad.ir:100001:", "more than 100,000 lines", rss_mib=100),
    case("2-ir-5MB-line", ir_text('loc("fire")', 'loc("' + "f" * 5_000_000 + '")'),
         "{src}/bad.ir:4:", "more than 2,097,152", rss_mib=110),
    case("2-hw-1x1-arrays", tiny_arrays,
         "{src}/tiny.json", "1×1 arrays cut this network into", "limit", rss_mib=200),
    case("2-long-T-in-time-windows", long_run,
         f'"timesteps": {LONG_T}', '"spike_digest"', code=0, rss_mib=LONG_T_RSS_MIB),
    # 3. exit 70 once, exit 2 now
    case("3-ir-deep-nesting", ir_text("[[1,-1],[-1,1]]", "[" * 10_000),
         "{src}/bad.ir:2:", "brackets nested more than 32 deep"),
    case("3-ir-bad-escape-in-loc", ir_text('loc("fire")', 'loc("\\qfire")'),
         "{src}/bad.ir:4:", "bad escape \\q"),
    case("3-weights-declared-larger-than-data",
         tampered("graph.ir", replace("bipolar[128,256]", "bipolar[128000,256000]")),
         BAD, "but its data has 32,768 elements"),
    case("3-minus-inf-weight", onnx_model(weight_set(-np.inf)),
         "node 'conv2' (Conv)", "weight 'w1'", "non-finite"),
    case("3-program-rows-out-of-bounds",
         tampered("program.txt", replace("rows 256:288", "rows 256:1288"), *RRAM),
         f"{BAD}[program.txt]", "rows 256:1288 lie outside layer %2's"),
    case("3-pickled-program-npz", tampered("program.npz", pickled_npz, *RRAM),
         f"{BAD}[program.npz]", "pickle"),
    case("3-manifest-not-utf8", latin1_manifest, "{src}/latin1.tiles[manifest.json]", "not UTF-8"),
    case("3-empty-image-set", empty_images, "{src}/empty.npz", "holds no images"),
    case("3-adc-bits-100", simulate(*RRAM, "--adc-bits", "100"),
         "argument --adc-bits:", "from 1 to 32"),
    case("3-seed-negative", simulate(*RRAM, "--seed", "-1"),
         "argument --seed:", "from 0 to 9,223,372,036,854,775,807"),
    case("3-T-1e20", simulate("-T", "1e20"), "argument --timesteps/-T:", "from 1 to 1,000,000"),
    # 4. accepted silently once, refused now (flags: with the valid range)
    case("4-opset-99", onnx_model(opset_99), "{src}/model.onnx", "opset 99 is newer"),
    case("4-nan-weight", onnx_model(weight_set(np.nan)),
         "node 'conv2' (Conv)", "weight 'w1'", "non-finite"),
    case("4-negative-theta-in-a-consistent-artifact",
         tampered("graph.ir", lambda ir: re.sub(rb"theta=[0-9.e+-]+", b"theta=-1.0", ir, count=1)),
         BAD, "threshold must be", "> 0"),
    case("4-variation-nan", simulate(*RRAM, "--variation", "nan"),
         "argument --variation:", "from 0 to 10"),
    case("4-early-exit-nan", simulate("--early-exit=nan"),
         "argument --early-exit:", "finite number ≥ 0"),
    case("4-max-memory-1K", simulate("--max-memory", "1K"),
         "argument --max-memory:", "from 16M to 1T"),
    case("4-max-memory-infG", simulate("--max-memory", "infG"),
         "argument --max-memory:", "from 16M to 1T"),
    case("4-rtol-nan", command("verify", "digits", "--limit", "1", "--rtol=nan"),
         "argument --rtol:", "finite number ≥ 0"),
    # 5. one artifact, one meaning: the numpy backend refuses a program graph.ir contradicts
    case("5-program-threshold-disagrees",
         tampered("program.txt", one_more_theta, "--backend", "numpy"),
         f"{BAD}[program.txt]", "but graph.ir's %1 has θ"),
    # 6. the batch size changes no result, with every non-ideality on
    case("6-batch-1-7-default-nonideal",
         command("simulate", "{tiles}", "--limit", "16", "-T", "8", "--no-ann", "--json",
                 *RRAM, *NONIDEAL),
         '"spike_digest"', code=0, batches=(1, 7, None)),
    # 7. writes and signals
    case("7-output-onto-a-symlink", onto(symlink),
         "refusing to replace {out}/x.tiles", "symbolic link"),
    case("7-output-onto-a-fifo", onto(os.mkfifo), "refusing to replace {out}/x.tiles", "FIFO"),
    case("7-failing-compile-leaves-nothing",
         command("compile", "digits", "--dump-program", "--dump-dir", "{src}/stages", *COMPILE),
         "--dump-program", "note: stage files written so far are in {src}/stages"),
    case("7-output-follows-the-umask", onto(nothing),
         "wrote {out}/x.tiles", code=0, umask=0o027, writes=("x.tiles",)),
    case("7-sigint-while-writing", onto(nothing), "interrupted", code=130, signal=signal.SIGINT),
    case("7-sigterm-while-writing", onto(nothing), "terminated", code=143, signal=signal.SIGTERM),
]  # fmt: skip


# ---------------------------------------------------------------- running a case

#: ``python -c`` this, then the CLI's arguments: the CLI, held for a minute just before it
#: renames a finished temporary file into place (``os.replace`` is called for nothing else)
HELD_BEFORE_RENAME = """
import os, sys, time
rename = os.replace
def held(src, dst):
    time.sleep(60)
    rename(src, dst)
os.replace = held
from bsnnc.__main__ import entry
sys.exit(entry())
"""


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    rss_kib: int | None = None  # the peak RSS of a child process


def _signal_when_writing(proc: subprocess.Popen[str], w: Where, sig: int) -> None:
    """Send ``sig`` once a temporary file of the output is in ``w.out``."""
    deadline = time.monotonic() + 30
    while not any(p.name.endswith(".tmp") for p in w.out.iterdir()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no temporary file appeared (exit {proc.wait()})")
        time.sleep(0.01)
    proc.send_signal(sig)


def in_child(argv: list[object], w: Where, sig: int | None) -> Run:
    """Run the CLI in a child process (in ``w.out``): with ``sig``, held before its rename and
    sent ``sig``; else with its peak RSS measured (:func:`rss.measured`)."""
    if sig is None:
        code, out, err, kib = measured(argv, w.out)
        return Run(code, out, err, kib)
    cmd = [sys.executable, "-c", HELD_BEFORE_RENAME, *[str(a) for a in argv]]
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen(
            cmd, cwd=w.out, stdout=so, stderr=se, text=True, preexec_fn=child_limits
        )
        _signal_when_writing(proc, w, sig)
        code = proc.wait(timeout=120)
        so.seek(0)
        se.seek(0)
        return Run(code, so.read(), se.read())


def snapshot(folder: Path) -> dict[str, tuple[int, int, int, int]]:
    """What is in ``folder``: per name, the type and mode, inode, size and mtime (of the
    entry itself, not of what a link points to)."""
    return {
        p.name: (s.st_mode, s.st_ino, s.st_size, s.st_mtime_ns)
        for p in folder.iterdir()
        for s in [p.lstat()]
    }


@pytest.fixture(scope="module")
def digits_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "digits.tiles"
    assert cli(["compile", "digits", "-o", path]) == 0
    return path


def run(case: Case, argv: list[object], w: Where, capsys: pytest.CaptureFixture[str]) -> list[Run]:
    """Every run of ``case``: in a child process (peak RSS, signal) or in process (once per
    batch size, under its umask)."""
    if case.rss_mib is not None or case.signal is not None:
        r = in_child(argv, w, case.signal)
        if case.rss_mib is not None:
            assert r.rss_kib is not None
            assert r.rss_kib < case.rss_mib * 1024, f"peak RSS {r.rss_kib >> 10} MiB:\n{r.stderr}"
        return [r]
    old_umask = os.umask(case.umask) if case.umask is not None else None
    try:
        runs = []
        for batch in case.batches or (None,):
            code = cli([*argv, *(["--batch", batch] if batch else [])])
            runs.append(Run(code, *capsys.readouterr()))
        return runs
    finally:
        if old_umask is not None:
            os.umask(old_umask)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_input(
    case: Case,
    digits_tiles: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = Where(tmp_path / "src", tmp_path / "out", digits_tiles)
    w.src.mkdir()
    w.out.mkdir()
    argv = case.build(w)
    before = snapshot(w.out)
    capsys.readouterr()
    monkeypatch.chdir(w.out)
    runs = run(case, argv, w, capsys)
    for r in runs:
        assert r.code == case.code, f"exit {r.code}, expected {case.code}:\n{r.stderr}"
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        assert r.code == 0 or not r.stdout.strip(), f"stdout on error:\n{r.stdout}"
        told = r.stderr if r.code else r.stdout + r.stderr
        for fragment in case.says:
            text = fragment.format(src=w.src, out=w.out)
            assert flat(text) in flat(told), f"{text!r} is not in:\n{told}"
    if case.batches:
        results = {
            (j["spike_digest"], str(j["predictions"]))
            for j in map(json.loads, (r.stdout for r in runs))
        }
        assert len(results) == 1, f"the batch size changed the results: {results}"
    after = snapshot(w.out)
    written = {name: after.pop(name) for name in case.writes}
    assert after == before, "the output folder was changed or has files left behind"
    for name, (mode, *_) in written.items():
        assert case.umask is not None and stat.S_ISREG(mode), name
        assert stat.S_IMODE(mode) == 0o666 & ~case.umask, f"{name}: {stat.S_IMODE(mode):o}"
