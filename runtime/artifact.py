"""The compiled artifact (``.tiles``): one zip file the user can copy and simulate later.

Members::

    manifest.json   format name and version, bsnnc version, the source model's hash, the
                    passes that ran, and a sha256 + size for every other member
    graph.ir        the IR text after the last pass
    weights.npz     the constants, by name (bipolar signs as int8)

Later stages add members (calibration facts, the RRAM tile program); readers check the format
version and every checksum before trusting a byte, and errors name the member at fault
(``FILE[member]``).

Reading is bounded: before any byte of a member is read, its declared size (the zip
directory's, which must equal the manifest's) is checked: the manifest at most
:data:`MAX_MANIFEST_BYTES`, every other member at most 4 GiB (``MAX_MEMBER_BYTES``), a
deflated member at most 200 times its compressed size (``MAX_RATIO``; members up to 1 MiB
excepted), stored members exactly their size, and all members together at most
:data:`MAX_TOTAL_BYTES`. Members are then read in chunks of :data:`CHUNK_BYTES`, hashed on the
way, and reading stops with an error as soon as more bytes arrive than were declared, so a
lying header costs at most the declared size (plus a chunk). Members the manifest does not
list are never read. An artifact over these limits is refused with exit 2 and a message that
says how much reading it would take.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bsnnc import __version__
from bsnnc.ir.errors import ArtifactError, BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.io import (
    FIXED_TIME,
    MAX_MEMBER_BYTES,
    atomic_write,
    attach,
    check_npz,
    check_zip_member,
    human_bytes,
    read_npz,
    write_npz,
)
from bsnnc.ir.parser import parse
from bsnnc.ir.printer import print_graph
from bsnnc.ir.verifier import verify

FORMAT = "bsnnc.tiles"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: the largest manifest a reader accepts (a real one is a few KiB)
MAX_MANIFEST_BYTES = 16 << 20
#: the largest sum of all listed members a reader accepts
MAX_TOTAL_BYTES = 8 << 30
#: members are read, hashed and checked in chunks of this size
CHUNK_BYTES = 1 << 20


@dataclass
class Artifact:
    """An artifact in memory: the graph plus free-form metadata and extra members."""

    graph: Graph
    meta: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, bytes] = field(default_factory=dict)


class _HashingWriter(io.RawIOBase):
    """A write-only stream that forwards to ``inner`` and keeps a sha256 and a byte count."""

    def __init__(self, inner: IO[bytes]) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self.sha.update(view)
        self.size += len(view)
        self.inner.write(view)
        return len(view)


def _put(z: zipfile.ZipFile, name: str, fill: Callable[[IO[bytes]], None]) -> dict[str, Any]:
    """Stream one member into the zip; returns its manifest entry (sha256, size)."""
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".npz") else zipfile.ZIP_DEFLATED
    with z.open(info, "w", force_zip64=True) as raw:
        w = _HashingWriter(raw)
        fill(w)  # type: ignore[arg-type]
    return {"sha256": w.sha.hexdigest(), "size": w.size}


def _writes(data: bytes) -> Callable[[IO[bytes]], None]:
    def fill(f: IO[bytes]) -> None:
        f.write(data)

    return fill


def write_artifact(path: str | os.PathLike[str], a: Artifact) -> None:
    """Write the artifact atomically (no partial file is ever left at ``path``).

    Members are streamed (the weights are never copied into one buffer) and hashed on the
    way; the manifest with every checksum is written last.
    """
    text = print_graph(a.graph).encode()

    def write(f: IO[bytes]) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as z:
            sums = {
                "graph.ir": _put(z, "graph.ir", _writes(text)),
                "weights.npz": _put(z, "weights.npz", lambda m: write_npz(m, a.graph.weights())),
            }
            for name in sorted(a.extra):
                sums[name] = _put(z, name, _writes(a.extra[name]))
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "bsnnc_version": __version__,
                "graph": a.graph.name,
                **a.meta,
                "members": dict(sorted(sums.items())),
            }
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            z.writestr(zipfile.ZipInfo(MANIFEST, FIXED_TIME), body)

    atomic_write(path, write)


def read_artifact(path: str | os.PathLike[str], data: bytes | None = None) -> Artifact:
    """Read and check an artifact: format, version, every member's declared size (before
    reading it) and checksum, IR, weights (see the module docstring for the size rules).
    With ``data``, the artifact's bytes already in memory (e.g. from a cluster's object store),
    ``path`` only names it in messages."""
    p = Path(path)
    if data is None and not p.is_file():
        raise BsnncError(f"{p}: no such file")
    try:
        with zipfile.ZipFile(p if data is None else io.BytesIO(data)) as z:
            manifest = _manifest(p, z)
            listed = _listed(p, z, manifest["members"])
            members = {name: _member(p, z, info, sha) for name, (info, sha) in listed.items()}
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ArtifactError(f"{p}: not a bsnnc artifact, or the file is truncated ({e})") from None
    return _decode(p, manifest, members)


def _read_bounded(p: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[bytes, str]:
    """A member's bytes and sha256, read in chunks; the member must already have passed
    :func:`check_zip_member`. Stops as soon as more bytes arrive than the zip declares."""
    where, size = f"{p}[{info.filename}]", info.file_size
    sha, buf, got = hashlib.sha256(), io.BytesIO(), 0
    try:
        with z.open(info) as f:
            while chunk := f.read(min(CHUNK_BYTES, size - got + 1)):
                got += len(chunk)
                if got > size:
                    raise ArtifactError(
                        f"{where}: holds more than the {human_bytes(size)} its header declares; "
                        "the file was modified or corrupted"
                    )
                sha.update(chunk)
                buf.write(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise ArtifactError(
            f"{where}: unreadable ({e}); the file is truncated or corrupted"
        ) from None
    if got < size:
        raise ArtifactError(
            f"{where}: holds only {human_bytes(got)} of the {human_bytes(size)} declared; "
            "the file is truncated or corrupted"
        )
    return buf.getvalue(), sha.hexdigest()


def _checked_info(p: Path, z: zipfile.ZipFile, name: str, limit: int) -> zipfile.ZipInfo:
    """The zip directory entry of member ``name``, its declared size checked against the
    limits before any byte is read (see the module docstring)."""
    try:
        info = z.getinfo(name)
    except KeyError:
        missing = "; not a bsnnc artifact" if name == MANIFEST else ""
        raise ArtifactError(f"{p}[{name}]: the member is missing{missing}") from None
    try:
        check_zip_member(info, f"{p}[{name}]", limit)
    except BsnncError as e:
        raise ArtifactError(e.message) from None
    return info


def _manifest(p: Path, z: zipfile.ZipFile) -> dict[str, Any]:
    """The manifest, read within :data:`MAX_MANIFEST_BYTES`; checks format and version."""
    where = f"{p}[{MANIFEST}]"
    data, _ = _read_bounded(p, z, _checked_info(p, z, MANIFEST, MAX_MANIFEST_BYTES))
    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ArtifactError(
            f"{where}: not UTF-8 text (byte {e.start}); not a bsnnc artifact"
        ) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, over-long integers, nesting
        raise ArtifactError(f"{where}: not valid JSON ({_short(str(e))})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{where}: does not describe a {FORMAT} artifact")
    _check_version(where, manifest.get("format_version"))
    if not isinstance(manifest.get("members"), dict):
        raise ArtifactError(f"{where}: lists no members")
    return manifest


def _short(text: str, limit: int = 60) -> str:
    """``text``, cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_version(where: str, version: object) -> None:
    """``format_version`` must be a positive integer this bsnnc reads."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(
            f"{where}: format_version must be a positive integer, got {_short(repr(version))}"
        )
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format version {version} is newer than this bsnnc "
            f"({__version__}) reads (≤ {FORMAT_VERSION}); upgrade bsnnc or recompile the model"
        )


def _listed(
    p: Path, z: zipfile.ZipFile, entries: dict[str, Any]
) -> dict[str, tuple[zipfile.ZipInfo, object]]:
    """Per member the manifest lists: its checked zip entry and expected sha256. The
    manifest's recorded size must equal the zip directory's; the total is bounded."""
    listed: dict[str, tuple[zipfile.ZipInfo, object]] = {}
    for name, entry in entries.items():
        if name == MANIFEST or not isinstance(entry, dict):
            raise ArtifactError(f"{p}[{MANIFEST}]: bad entry for member {_short(repr(name))}")
        info = _checked_info(p, z, name, MAX_MEMBER_BYTES)
        size = entry.get("size")
        if size is not None and (type(size) is not int or size != info.file_size):
            raise ArtifactError(
                f"{p}: member {name}: checksum mismatch: the manifest records "
                f"{_short(repr(size))} bytes, "
                f"the zip directory {info.file_size} (the file was modified or corrupted); "
                "recompile the model"
            )
        listed[name] = (info, entry.get("sha256"))
    total = sum(info.file_size for info, _ in listed.values())
    if total > MAX_TOTAL_BYTES:
        raise ArtifactError(
            f"{p}: its members declare {human_bytes(total)} in all; reading them would take "
            f"{human_bytes(total)} of memory, more than the {human_bytes(MAX_TOTAL_BYTES)} "
            "an artifact may have"
        )
    return listed


def _member(p: Path, z: zipfile.ZipFile, info: zipfile.ZipInfo, sha: object) -> bytes:
    """One listed member's bytes, read within its declared size; checks the sha256."""
    data, digest = _read_bounded(p, z, info)
    if digest != sha:
        raise ArtifactError(
            f"{p}: member {info.filename}: checksum mismatch (the file was modified or corrupted); "
            "recompile the model"
        )
    return data


def _decode(p: Path, manifest: dict[str, Any], members: dict[str, bytes]) -> Artifact:
    """The graph with its weights attached and verified; other .npz members are checked
    (plain arrays that fit their member) but left for the backend that loads them."""
    for need in ("graph.ir", "weights.npz"):
        if need not in members:
            raise ArtifactError(f"{p}[{need}]: the member is missing")
    try:
        text = members["graph.ir"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArtifactError(f"{p}[graph.ir]: not UTF-8 text (byte {e.start})") from None
    try:
        g = parse(text, source=f"{p}[graph.ir]")
        attach(
            g,
            read_npz(io.BytesIO(members["weights.npz"]), f"{p}[weights.npz]"),
            f"{p}[weights.npz]",
        )
        verify(g)
        for name in sorted(members):
            if name.endswith(".npz") and name != "weights.npz":
                check_npz(io.BytesIO(members[name]), f"{p}[{name}]")
    except ValueError as e:
        raise ArtifactError(f"{p}: member weights.npz or graph.ir is unreadable ({e})") from None
    except BsnncError as e:
        message = e.message if e.message.startswith(str(p)) else f"{p}: {e.message}"
        raise ArtifactError(message) from None
    meta = {k: v for k, v in manifest.items() if k != "members"}
    extra = {k: v for k, v in members.items() if k not in ("graph.ir", "weights.npz")}
    return Artifact(g, meta, extra)
