"""Files: IR text with its weights beside it (``model.ir`` + ``model.npz``), deterministic npz.

Writes are atomic (a temporary file renamed into place), so a failed or interrupted command
(an error, Ctrl-C, SIGTERM) never leaves a half-written output nor a temporary file. Only
regular files are replaced: a symlink, FIFO, device or directory at the output path is
refused. Outputs get the user's umask (``0o666 & ~umask``), like any file the shell creates.
npz archives are written with fixed timestamps so equal weights give byte-identical files.

Reading an npz loads no pickle and checks every member before reading it: at most
:data:`MAX_MEMBER_BYTES` uncompressed, a deflated member at most :data:`MAX_RATIO` times its
compressed size, and the array its ``.npy`` header declares no larger than the member holds,
so a small file cannot make the reader allocate gigabytes.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.parser import MAX_CHARS, parse
from bsnnc.ir.printer import print_graph
from bsnnc.ir.verifier import verify

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
#: the largest member (uncompressed) an npz or artifact reader accepts
MAX_MEMBER_BYTES = 4 << 30
#: the largest expansion a deflated member may claim (uncompressed / compressed)
MAX_RATIO = 200
#: members up to this size (uncompressed) are not held to :data:`MAX_RATIO`
RATIO_FREE_BYTES = 1 << 20

WriteFn = Callable[[IO[bytes]], None]


def human_bytes(n: int) -> str:
    """``4294967296`` → ``4.0 GiB`` (for messages that say how much something would take)."""
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def check_zip_member(info: zipfile.ZipInfo, where: str, limit: int = MAX_MEMBER_BYTES) -> int:
    """The declared uncompressed size of a zip member, after checking it before any byte is
    read: stored or deflated, not encrypted, at most ``limit`` bytes, a stored member as large
    as its data, a deflated one at most :data:`MAX_RATIO` times its compressed size (members
    up to :data:`RATIO_FREE_BYTES` excepted). ``where`` names the member in the error."""
    size, packed = info.file_size, info.compress_size
    if info.flag_bits & 0x1:
        raise BsnncError(f"{where}: the member is encrypted; bsnnc writes no encrypted members")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise BsnncError(
            f"{where}: compression method {info.compress_type} is not one bsnnc writes "
            "(stored or deflated)"
        )
    if size > limit:
        raise BsnncError(
            f"{where}: declares {human_bytes(size)} uncompressed; reading it would take "
            f"{human_bytes(size)} of memory, more than the {human_bytes(limit)} a member may have"
        )
    if info.compress_type == zipfile.ZIP_STORED and packed != size:
        raise BsnncError(
            f"{where}: a stored member of {human_bytes(packed)} declares {human_bytes(size)}; "
            "the file was modified or corrupted"
        )
    if size > max(RATIO_FREE_BYTES, MAX_RATIO * packed):
        raise BsnncError(
            f"{where}: {human_bytes(packed)} compressed would expand to {human_bytes(size)} "
            f"(more than {MAX_RATIO}:1, a likely zip bomb); reading it would take "
            f"{human_bytes(size)} of memory"
        )
    return size


def write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed .npz (readable by ``np.load``), in key order."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", FIXED_TIME)
            with z.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(
                    member, np.ascontiguousarray(arrays[key]), allow_pickle=False
                )


def read_npz(f: IO[bytes] | str | os.PathLike[str], source: str = "") -> dict[str, np.ndarray]:
    """All arrays of an .npz file, by name (``w.npy`` → ``w``). No pickle is loaded, and each
    member is checked (:func:`check_zip_member`, then its ``.npy`` header) before its data is
    read. Anything unreadable is a :class:`BsnncError` naming ``source`` (default: the path,
    or ``npz data`` for a stream) and the member."""
    where = source or (os.fspath(f) if isinstance(f, str | os.PathLike) else "npz data")
    try:
        with zipfile.ZipFile(f) as z:
            return {_npz_key(i.filename): _read_npy(z, i, where) for i in z.infolist()}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise BsnncError(f"{where}: not a readable .npz archive ({e})") from None


def check_npz(f: IO[bytes] | str | os.PathLike[str], source: str) -> None:
    """Check an .npz without loading its arrays: every member a plain (pickle-free) ``.npy``
    whose declared array fits in the member; errors name ``source`` and the member."""
    try:
        with zipfile.ZipFile(f) as z:
            for info in z.infolist():
                _npy_header(z, info, f"{source}[{info.filename}]")
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise BsnncError(f"{source}: not a readable .npz archive ({e})") from None


def _npz_key(member: str) -> str:
    """The array name of an npz member, as ``np.load`` gives it (``w.npy`` → ``w``)."""
    return member[:-4] if member.endswith(".npy") else member


def _npy_header(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> None:
    """Check one npz member before reading its data (see :func:`check_npz`)."""
    size = check_zip_member(info, where)
    try:
        with z.open(info) as m:
            version = np.lib.format.read_magic(m)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(m)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(m)
            else:
                raise BsnncError(f"{where}: .npy format version {version} is not one bsnnc reads")
            offset = m.tell()
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise BsnncError(f"{where}: not a .npy array ({e})") from None
    if dtype.hasobject:
        raise BsnncError(f"{where}: holds Python objects (a pickle); bsnnc loads no pickles")
    need = math.prod(shape) * dtype.itemsize
    if need > size - offset:
        raise BsnncError(
            f"{where}: declares a {dtype} array of shape {list(shape)} ({human_bytes(need)}) "
            f"but holds only {human_bytes(max(size - offset, 0))} of data"
        )


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> np.ndarray:
    """One checked npz member as an array."""
    where = f"{source}[{info.filename}]"
    _npy_header(z, info, where)
    try:
        with z.open(info) as m:
            return np.lib.format.read_array(m, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise BsnncError(f"{where}: unreadable ({e}); the file is truncated or corrupted") from None


def umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc``); else
    set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def _kind(mode: int) -> str:
    """What a non-regular file is, for messages."""
    kinds = (
        (stat.S_ISDIR, "a directory; give a file path"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a file")


def check_replaceable(path: Path) -> None:
    """Refuse to write ``path`` if something other than a regular file is there (a symlink,
    FIFO, device or directory would be replaced by, or written through to, a file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise BsnncError(f"{path}: cannot write ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise BsnncError(f"refusing to replace {path}: not a regular file ({_kind(st.st_mode)})")


def _write_temp(p: Path, write: WriteFn, mode: int) -> str:
    """Write a temporary file beside ``p`` with ``write`` and give it ``mode``; returns its
    name. The temporary file is removed if anything fails or interrupts the write."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise BsnncError(f"{p}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            with contextlib.suppress(OSError):  # a file system without modes (FAT) keeps its own
                os.fchmod(f.fileno(), mode)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise BsnncError(f"{p}: cannot write ({e.strerror or e})") from None
    except BaseException:  # errors, Ctrl-C, SIGTERM (bsnnc.compiler.cli.Terminated)
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_all(targets: Sequence[tuple[str | os.PathLike[str], WriteFn]]) -> None:
    """Write several files as one: each through a temporary file in its directory, all
    renamed into place only when all are written. Every path must be absent or a regular
    file (checked before writing and again before renaming). If a rename fails, the files
    already renamed are removed too, so no half of a set is left; temporary files are removed
    whatever fails or interrupts the write."""
    paths = [Path(p) for p, _ in targets]
    for p in paths:
        check_replaceable(p)
    mode = 0o666 & ~umask()
    temps: list[str] = []
    done: list[Path] = []
    try:
        for p, (_, write) in zip(paths, targets, strict=True):
            temps.append(_write_temp(p, write, mode))
        for p, tmp in zip(paths, temps, strict=True):
            check_replaceable(p)
            try:
                os.replace(tmp, p)
            except OSError as e:
                raise BsnncError(f"{p}: cannot write ({e.strerror or e})") from None
            done.append(p)
    except BaseException:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        if len(done) < len(paths):
            for p in done:
                p.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], write: WriteFn) -> None:
    """Write ``path`` through a temporary file in the same directory, renamed on success
    (see :func:`atomic_write_all`)."""
    atomic_write_all([(path, write)])


def _write_bytes(f: IO[bytes], data: bytes) -> None:
    f.write(data)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: _write_bytes(f, data))


def weights_path(ir_path: str | os.PathLike[str]) -> Path:
    """The weights file that belongs to an IR file: same stem, ``.npz``."""
    return Path(ir_path).with_suffix(".npz")


def save_ir(path: str | os.PathLike[str], g: Graph) -> None:
    """Write ``path`` (IR text) and its weights beside it, both or neither."""
    text = print_graph(g).encode()
    atomic_write_all(
        [
            (weights_path(path), lambda f: write_npz(f, g.weights())),
            (path, lambda f: _write_bytes(f, text)),
        ]
    )


def load_ir(path: str | os.PathLike[str], *, need_weights: bool = True) -> Graph:
    """Parse an IR file, attach the weights beside it, verify (hashes included)."""
    p = Path(path)
    if not p.is_file():
        raise BsnncError(f"{p}: no such file")
    size = p.stat().st_size
    if size > MAX_CHARS:
        raise BsnncError(
            f"{p}: {size:,} bytes, more than IR text may have ({MAX_CHARS:,}); not read"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BsnncError(f"{p}: not IR text ({e})") from None
    g = parse(text, source=str(p))
    wp = weights_path(p)
    if wp.is_file():
        attach(g, read_npz(wp, str(wp)), str(wp))
    elif need_weights and any(c.data is None for c in g.constants.values()):
        raise BsnncError(f"{p}: its weights file {wp} is missing (write it with --dump-dir)")
    verify(g)
    return g


def attach(g: Graph, weights: Mapping[str, np.ndarray], source: str) -> None:
    """Attach weights to the constants of a parsed graph that have no inline data; names the
    constants the weights file lacks. Every array must have its constant's storage dtype, the
    declared number of elements and valid values (see :meth:`Graph.attach_weights`); errors
    name ``source`` and the constant."""
    missing = sorted(k for k, c in g.constants.items() if c.data is None and k not in weights)
    if missing:
        raise BsnncError(f"{source}: no data for constant(s) {', '.join('@' + m for m in missing)}")
    try:
        g.attach_weights(weights)
    except BsnncError as e:
        raise type(e)(f"{source}: {e.message}") from None
