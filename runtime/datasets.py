"""Image sets for verification and simulation, read from local files only (never downloaded).

``--images`` takes a name or a path:

* ``digits``: the embedded UCI digits split that ships with bsnnc (8×8, 1 channel; the pixels
  ÷ 16 then standardized with the training split's mean and std, as the example model expects).
* ``PATH.npz``: arrays ``x`` [N,C,H,W] (model-ready float32) and optionally ``y`` [N] labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bsnnc.ir.errors import DataError

EMBEDDED = ("digits",)


@dataclass
class Images:
    """A batch of model-ready images and (optionally) their labels."""

    name: str
    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def embedded_file(name: str) -> Path:
    """Path of a file shipped in ``bsnnc/runtime/data``."""
    return Path(str(resources.files("bsnnc.runtime").joinpath("data", name)))


def load_images(spec: str, *, split: str = "test", limit: int | None = None) -> Images:
    """Load ``spec`` (a name or an .npz path); ``limit`` keeps the first N images."""
    if spec in EMBEDDED:
        images = _load_npz(embedded_file(f"{spec}_{split}.npz"), f"{spec}:{split}")
    elif spec.endswith(".npz") or Path(spec).is_file():
        images = _load_npz(Path(spec), spec)
    else:
        raise DataError(
            f"unknown image set '{spec}': use one of {', '.join(EMBEDDED)} or a path to an .npz "
            "file with arrays x [N,C,H,W] and y [N]"
        )
    if limit is not None:
        images = Images(
            images.name, images.x[:limit], None if images.y is None else images.y[:limit]
        )
    return images


def _load_npz(path: Path, name: str) -> Images:
    if not path.is_file():
        raise DataError(f"image file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: no array 'x' (found: {', '.join(z.files) or 'none'})")
            x = np.ascontiguousarray(z["x"], dtype=np.float32)
            y = np.asarray(z["y"]).astype(np.int64) if "y" in z.files else None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if x.ndim != 4:
        raise DataError(f"{path}: x must be [N,C,H,W], got shape {list(x.shape)}")
    if y is not None and y.shape != (x.shape[0],):
        raise DataError(f"{path}: y must have shape [{x.shape[0]}], got {list(y.shape)}")
    return Images(name, x, y)
