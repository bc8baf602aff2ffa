"""The compiled artifact (``.tiles``): one zip file the user can copy and simulate later.

Members::

    manifest.json   format name and version, bsnnc version, the source model's hash, the
                    passes that ran, and a sha256 + size for every other member
    graph.ir        the IR text after the last pass
    weights.npz     the constants, by name (bipolar signs as int8)

Later stages add members (calibration facts, the RRAM tile program); readers check the format
version and every checksum before trusting a byte, and errors name the member at fault.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bsnnc import __version__
from bsnnc.ir.errors import ArtifactError, BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.io import FIXED_TIME, atomic_write, attach, read_npz, write_npz
from bsnnc.ir.parser import parse
from bsnnc.ir.printer import print_graph
from bsnnc.ir.verifier import verify

FORMAT = "bsnnc.tiles"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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


def read_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Read and check an artifact: format, version, every member's checksum, IR, weights."""
    p = Path(path)
    if not p.is_file():
        raise BsnncError(f"{p}: no such file")
    try:
        with zipfile.ZipFile(p) as z:
            manifest = _manifest(p, z)
            members = {
                name: _member(p, z, name, info) for name, info in manifest["members"].items()
            }
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ArtifactError(f"{p}: not a bsnnc artifact, or the file is truncated ({e})") from None
    return _decode(p, manifest, members)


def _manifest(p: Path, z: zipfile.ZipFile) -> dict[str, Any]:
    try:
        manifest = json.loads(z.read(MANIFEST))
    except KeyError:
        raise ArtifactError(f"{p}: member {MANIFEST} is missing; not a bsnnc artifact") from None
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{p}: member {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{p}: member {MANIFEST} does not describe a {FORMAT} artifact")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{p}: member {MANIFEST}: format version {version} is newer than this bsnnc "
            f"({__version__}) reads (≤ {FORMAT_VERSION}); upgrade bsnnc or recompile the model"
        )
    if not isinstance(manifest.get("members"), dict):
        raise ArtifactError(f"{p}: member {MANIFEST} lists no members")
    return manifest


def _member(p: Path, z: zipfile.ZipFile, name: str, info: dict[str, Any]) -> bytes:
    try:
        data = z.read(name)
    except KeyError:
        raise ArtifactError(f"{p}: member {name} is missing") from None
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise ArtifactError(
            f"{p}: member {name}: checksum mismatch (the file was modified or corrupted); "
            "recompile the model"
        )
    return data


def _decode(p: Path, manifest: dict[str, Any], members: dict[str, bytes]) -> Artifact:
    for need in ("graph.ir", "weights.npz"):
        if need not in members:
            raise ArtifactError(f"{p}: member {need} is missing")
    try:
        g = parse(members["graph.ir"].decode("utf-8"), source=f"{p}[graph.ir]")
        attach(g, read_npz(io.BytesIO(members["weights.npz"])), f"{p}[weights.npz]")
        verify(g)
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{p}: member weights.npz or graph.ir is unreadable ({e})") from None
    except BsnncError as e:
        raise ArtifactError(f"{p}: {e.message}") from None
    meta = {k: v for k, v in manifest.items() if k != "members"}
    extra = {k: v for k, v in members.items() if k not in ("graph.ir", "weights.npz")}
    return Artifact(g, meta, extra)
