"""Reading hostile artifacts and npz files: declared sizes and compression ratios are checked
before a byte is read, reading is bounded by what was declared, and every bad manifest or
member is exit 2 with a message naming ``FILE[member]`` (never exit 70, never a blown memory
limit). The bad inputs are built here, byte by byte where a real writer would refuse."""

from __future__ import annotations

import hashlib
import io
import json
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clirun import cli, fails

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.io import read_npz, write_npz
from bsnnc.runtime import artifact
from bsnnc.runtime.artifact import MANIFEST, read_artifact

GiB = 1 << 30
MiB = 1 << 20


# ---------------------------------------------------------------- building zips by hand


def zeros_deflated(total: int, segment: int = MiB) -> bytes:
    """A raw deflate stream of ``total`` zero bytes (~1000:1), built in milliseconds: one
    segment compressed after a full flush (no back-reference crosses it), repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    seg = c.compress(bytes(segment)) + c.flush(zlib.Z_FULL_FLUSH)
    assert total % segment == 0
    return seg * (total // segment) + c.flush(zlib.Z_FINISH)


Member = tuple[str, int, bytes, int, int]  # name, method, raw data, declared size, crc32


def stored(name: str, data: bytes) -> Member:
    return (name, zipfile.ZIP_STORED, data, len(data), zlib.crc32(data))


def write_zip(path: Path, members: list[Member], flags: int = 0) -> Path:
    """A zip file whose directory says exactly what ``members`` say (a zip64 extra field for
    declared sizes of 4 GiB or more; offsets stay small)."""
    body, directory = bytearray(), bytearray()
    for name, method, raw, size, crc in members:
        offset, n = len(body), name.encode()
        extra, sizes = b"", (len(raw), size)
        if size >= 0xFFFFFFFF:
            extra, sizes = struct.pack("<2H2Q", 1, 16, size, len(raw)), (0xFFFFFFFF, 0xFFFFFFFF)
        body += struct.pack(
            "<4s2B4HL2L2H", b"PK\x03\x04", 45, 0, flags, method, 0, 0x21, crc, *sizes, len(n),
            len(extra),
        )  # fmt: skip
        body += n + extra + raw
        directory += struct.pack(
            "<4s4B4HL2L5H2L", b"PK\x01\x02", 45, 3, 45, 0, flags, method, 0, 0x21, crc, *sizes,
            len(n), len(extra), 0, 0, 0, 0o644 << 16, offset,
        )  # fmt: skip
        directory += n + extra
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0
    )
    path.write_bytes(bytes(body + directory + end))
    return path


def manifest_bytes(members: dict[str, Any], **fields: Any) -> bytes:
    manifest = {"format": "bsnnc.tiles", "format_version": 1, "members": members, **fields}
    return json.dumps(manifest).encode()


def with_manifest(path: Path, members: list[Member], **fields: Any) -> Path:
    """An artifact of ``members`` whose manifest lists each with its declared size."""
    listed = {name: {"sha256": "0" * 64, "size": size} for name, _, _, size, _ in members}
    return write_zip(path, [stored(MANIFEST, manifest_bytes(listed, **fields)), *members])


# ---------------------------------------------------------------- memory bombs


def _limit_address_space() -> None:
    limit = 1536 * MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_zip_bomb_member_is_refused_within_bounded_memory(tmp_path: Path) -> None:
    """A 4 MB file whose manifest lists a 4 GiB zero member (the old reader took > 6 GB)."""
    size = 4 * GiB - MiB
    bomb = with_manifest(
        tmp_path / "bomb.tiles", [("zero.bin", zipfile.ZIP_DEFLATED, zeros_deflated(size), size, 0)]
    )
    assert bomb.stat().st_size < 8 * MiB
    run = subprocess.run(
        [sys.executable, "-m", "bsnnc", "inspect", str(bomb)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        preexec_fn=_limit_address_space,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "internal error" not in run.stderr, run.stderr
    for fragment in (f"{bomb}[zero.bin]", "4.0 GiB", "200:1"):
        assert fragment in run.stderr, run.stderr


def test_member_larger_than_any_artifact_may_have(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Declared 5 GiB (above the per-member bound of 4 GiB, whatever its ratio)."""
    size = 5 * GiB
    raw = zlib.compress(b"x", 9)[2:-4]
    bad = with_manifest(tmp_path / "big.tiles", [("big.bin", zipfile.ZIP_DEFLATED, raw, size, 0)])
    fails(["inspect", bad], capsys, f"{bad}[big.bin]", "5.0 GiB", "would take")


def test_lying_directory_stops_at_the_declared_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The zip directory claims 8 MiB, the data inflates to 64 MiB: reading stops at 8 MiB."""
    raw = zeros_deflated(64 * MiB)
    bad = with_manifest(
        tmp_path / "lie.tiles", [("zero.bin", zipfile.ZIP_DEFLATED, raw, 8 * MiB, 0)]
    )
    fails(["inspect", bad], capsys, f"{bad}[zero.bin]", "corrupted")


def test_stored_member_declaring_more_than_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"0123456789"
    bad = with_manifest(tmp_path / "s.tiles", [("m.bin", zipfile.ZIP_STORED, data, GiB, 0)])
    fails(["inspect", bad], capsys, f"{bad}[m.bin]", "1.0 GiB")


def test_manifest_size_disagrees_with_the_zip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"hello"
    listed = {"m.bin": {"sha256": hashlib.sha256(data).hexdigest(), "size": 3 * GiB}}
    bad = write_zip(
        tmp_path / "m.tiles", [stored(MANIFEST, manifest_bytes(listed)), stored("m.bin", data)]
    )
    fails(["inspect", bad], capsys, str(bad), "m.bin", "checksum mismatch", "manifest records")


def test_total_of_all_members_is_bounded(
    tiles: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "program.npz" in read_artifact(tiles).extra  # readable within the real bounds
    monkeypatch.setattr(artifact, "MAX_TOTAL_BYTES", 1000)
    fails(["inspect", tiles], capsys, str(tiles), "in all", "would take")


def test_unknown_compression_and_encryption(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aes = with_manifest(tmp_path / "aes.tiles", [("m.bin", 99, b"abc", 3, 0)])
    fails(["inspect", aes], capsys, f"{aes}[m.bin]", "compression method 99")
    body = manifest_bytes({})
    locked = write_zip(tmp_path / "locked.tiles", [stored(MANIFEST, body)], flags=0x1)
    fails(["inspect", locked], capsys, f"{locked}[{MANIFEST}]", "encrypted")


# ---------------------------------------------------------------- manifests


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"format": "bsnnc.tiles", "x": "\xff\xfe"}', "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'{"format_version": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["latin1", "syntax", "deep", "long-int"],
)
def test_manifest_that_is_not_json(
    body: bytes, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_zip(tmp_path / "m.tiles", [stored(MANIFEST, body)])
    fails(["inspect", bad], capsys, f"{bad}[{MANIFEST}]", fragment)


@pytest.mark.parametrize("version", [True, -7, 0, "1", 1.0, None])
def test_format_version_must_be_a_positive_int(
    version: object, tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(m: dict[str, bytes]) -> None:
        manifest = json.loads(m[MANIFEST])
        manifest["format_version"] = version
        m[MANIFEST] = json.dumps(manifest).encode()

    bad = rewrite(tiles, tmp_path / "v.tiles", edit)
    fails(["inspect", bad], capsys, f"{bad}[{MANIFEST}]", "format_version", "positive integer")


def test_manifest_entry_that_is_not_an_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write_zip(tmp_path / "e.tiles", [stored(MANIFEST, manifest_bytes({"graph.ir": 5}))])
    fails(["inspect", bad], capsys, f"{bad}[{MANIFEST}]", "graph.ir")


# ---------------------------------------------------------------- npz members


@pytest.fixture(scope="module")
def module_tiles(tmp_path_factory: pytest.TempPathFactory, zoo_dir: Path) -> Path:
    """A valid artifact of avg_before_relu with a tile program (program.npz)."""
    out = tmp_path_factory.mktemp("tiles") / "good.tiles"
    assert cli(["compile", zoo_dir / "avg_before_relu.onnx", "--calib-limit", "16", "-o", out]) == 0
    return out


@pytest.fixture
def tiles(module_tiles: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    capsys.readouterr()
    return module_tiles


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy an artifact with its members edited; the checksums of edited members are
    recomputed (so only the edit itself can be at fault)."""
    with zipfile.ZipFile(src) as z:
        members = {name: z.read(name) for name in z.namelist()}
    edit(members)
    manifest = json.loads(members[MANIFEST])
    for name, entry in manifest.get("members", {}).items():
        if name in members and isinstance(entry, dict):
            entry.update(sha256=hashlib.sha256(members[name]).hexdigest(), size=len(members[name]))
    members[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def _pickled_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{"conv1.w": np.array([{"evil": 1}], dtype=object)})
    return buf.getvalue()


def _npz_with_header(shape: tuple[int, ...], data: bytes) -> bytes:
    """An npz whose one .npy declares ``shape`` (int8) but holds ``data``."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        npy, {"descr": "|i1", "fortran_order": False, "shape": shape}
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("w.npy", npy.getvalue() + data)
    return buf.getvalue()


def test_pickled_program_npz_is_exit_2(
    tiles: Path, tmp_path: Path, zoo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(m: dict[str, bytes]) -> None:
        assert "program.npz" in m
        m["program.npz"] = _pickled_npz()

    bad = rewrite(tiles, tmp_path / "pickled.tiles", edit)
    images = zoo_data / "avg_before_relu.npz"
    argv = ["simulate", bad, "--backend", "rram", "--images", images, "--limit", "2", "--no-ann"]
    fails(argv, capsys, f"{bad}[program.npz]", "pickle")
    fails(["inspect", bad], capsys, f"{bad}[program.npz]", "pickle")  # refused on reading


def test_weights_declared_far_larger_than_their_data(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(m: dict[str, bytes]) -> None:
        m["weights.npz"] = _npz_with_header((50_000, 50_000), b"\x01" * 64)

    bad = rewrite(tiles, tmp_path / "huge.tiles", edit)
    fails(["inspect", bad], capsys, f"{bad}[weights.npz]", "[50000, 50000]", "2.3 GiB")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_pickled_npz(), "pickle"),
        (_npz_with_header((50_000, 50_000), b""), "declares"),
        (_npz_with_header((4,), b"\x01\x02"), "declares"),
        (b"PK\x03\x04 truncated", "not a readable .npz"),
        (b"not a zip at all", "not a readable .npz"),
    ],
    ids=["pickle", "huge-header", "short-data", "truncated", "not-zip"],
)
def test_read_npz_errors_name_the_source(data: bytes, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    path.write_bytes(data)
    with pytest.raises(BsnncError, match=r"w\.npz") as e:
        read_npz(path)
    assert fragment in e.value.message
    with pytest.raises(BsnncError, match=r"^model\[weights\.npz\]") as e:
        read_npz(io.BytesIO(data), "model[weights.npz]")
    assert fragment in e.value.message


def test_read_npz_reads_only_arrays() -> None:
    """Plain arrays come back by name; a member that is not an .npy is an error naming it
    (``np.load`` handed such members back as bytes)."""
    arrays = {
        "a": np.arange(6, dtype=np.int8).reshape(2, 3),
        "b.c": np.array([1.5, -2.0], np.float32),
    }
    buf = io.BytesIO()
    write_npz(buf, arrays)
    back = read_npz(io.BytesIO(buf.getvalue()))
    assert sorted(back) == ["a", "b.c"]
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    with zipfile.ZipFile(buf, "a") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(BsnncError, match=r"^x\.npz\[notes\.txt\]: not a \.npy array"):
        read_npz(io.BytesIO(buf.getvalue()), "x.npz")
