"""Files: IR text with its weights beside it (``model.ir`` + ``model.npz``), deterministic npz.

Writes are atomic (a temporary file renamed into place), so a failed command never leaves a
half-written output. npz archives are written with fixed timestamps so equal weights give
byte-identical files.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import numpy as np

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.parser import parse
from bsnnc.ir.printer import print_graph
from bsnnc.ir.verifier import verify

FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz(f: IO[bytes], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed .npz (readable by ``np.load``), in key order."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", FIXED_TIME)
            with z.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(
                    member, np.ascontiguousarray(arrays[key]), allow_pickle=False
                )


def read_npz(f: IO[bytes] | str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of an .npz file (no pickles)."""
    with np.load(f, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, renamed on success."""
    p = Path(path)
    if p.is_dir():
        raise BsnncError(f"{p}: is a directory; give a file path")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as e:
        raise BsnncError(f"{p}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, p)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise BsnncError(f"{p}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(f: IO[bytes], data: bytes) -> None:
    f.write(data)


def weights_path(ir_path: str | os.PathLike[str]) -> Path:
    """The weights file that belongs to an IR file: same stem, ``.npz``."""
    return Path(ir_path).with_suffix(".npz")


def save_ir(path: str | os.PathLike[str], g: Graph) -> None:
    """Write ``path`` (IR text) and its weights beside it."""
    text = print_graph(g).encode()
    atomic_write(weights_path(path), lambda f: write_npz(f, g.weights()))
    atomic_write(path, lambda f: _write_bytes(f, text))


def load_ir(path: str | os.PathLike[str], *, need_weights: bool = True) -> Graph:
    """Parse an IR file, attach the weights beside it, verify (hashes included)."""
    p = Path(path)
    if not p.is_file():
        raise BsnncError(f"{p}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BsnncError(f"{p}: not IR text ({e})") from None
    g = parse(text, source=str(p))
    wp = weights_path(p)
    if wp.is_file():
        attach(g, read_npz(wp), str(wp))
    elif need_weights and any(c.data is None for c in g.constants.values()):
        raise BsnncError(f"{p}: its weights file {wp} is missing (write it with --dump-dir)")
    verify(g)
    return g


def attach(g: Graph, weights: Mapping[str, np.ndarray], source: str) -> None:
    """Attach weights to the constants of a parsed graph that have no inline data; names the
    constants the weights file lacks."""
    missing = sorted(k for k, c in g.constants.items() if c.data is None and k not in weights)
    if missing:
        raise BsnncError(f"{source}: no data for constant(s) {', '.join('@' + m for m in missing)}")
    g.attach_weights(weights)
