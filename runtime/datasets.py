"""Image sets, read from local files only (nothing is ever downloaded).

``--images`` / ``--calib`` take a name or a path:

* ``digits``: the UCI digits split embedded in bsnnc (8×8, 1 channel; pixels ÷ 16, then
  standardized with the training split's mean and std, as the example model expects).
* ``cifar10`` / ``cifar100``: the standard *python* archives from
  https://www.cs.toronto.edu/~kriz/cifar.html — ``cifar-10-python.tar.gz`` /
  ``cifar-100-python.tar.gz``, or their extracted folders ``cifar-10-batches-py/`` /
  ``cifar-100-python/`` — in the data directory (``--data-dir`` or ``$BSNNC_DATA``). Pixels
  ÷ 255, normalized per channel with the usual training-set mean and std.
* ``imagenet``: an ImageFolder-style directory ``imagenet/{train,val}/<class>/*.JPEG`` in the data
  directory (needs Pillow: ``pip install 'bsnnc[imagenet]'``); resize the short side to 256,
  center-crop 224, ÷ 255, normalize with the ImageNet mean and std; labels are the sorted
  class folders' indices. ``--limit`` takes images round-robin over classes.
* ``PATH.npz``: arrays ``x`` [N,C,H,W] (model-ready float32) and optionally ``y`` [N]; an
  integer ``x`` (e.g. uint8 pixels 0–255) is refused: normalize it as the model was trained.

The CIFAR batches are pickles; they are read with an unpickler that only admits the numpy
types those files contain.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import numpy as np

from bsnnc.ir.errors import DataError

EMBEDDED = ("digits",)
NAMED = ("digits", "cifar10", "cifar100", "imagenet")
#: what an image-set .npz holds, for messages.
NPZ_FORMAT = (
    "an .npz file with an array x: float32 [N,C,H,W], normalized as the model expects (the "
    "preprocessing it was trained with), and optionally y: int labels [N]"
)


class CifarSpec(TypedDict):
    """Where a CIFAR python archive keeps what, and its normalization."""

    archive: str
    folder: str
    train: list[str]
    test: list[str]
    labels: bytes
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR: dict[str, CifarSpec] = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "labels": b"labels",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "labels": b"fine_labels",
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Images:
    """A batch of model-ready images and (optionally) their labels."""

    name: str
    x: np.ndarray
    y: np.ndarray | None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class ImageSource:
    """Where an image set is read from, so that another process (a cluster worker) can read
    its own slice: a name or an absolute .npz path, the split, ``--limit``, and the data
    directory (absolute; None for the embedded sets)."""

    spec: str
    split: str = "test"
    limit: int | None = None
    root: str | None = None
    #: the set's name in reports (the path as the user gave it; default: as loaded)
    name: str | None = None

    def count(self) -> int:
        """How many images the set has (see :func:`count_images`)."""
        return count_images(self.spec, split=self.split, limit=self.limit, root=self.root)

    def labelled(self) -> bool:
        """Whether the images have labels (an .npz may hold no ``y``)."""
        if self.spec in EMBEDDED or not _is_npz(self.spec):
            return True
        try:
            with zipfile.ZipFile(self.spec) as z:
                return "y.npy" in z.namelist()
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{self.spec}: not a readable .npz file ({e})") from None

    def load(self, start: int, stop: int) -> Images:
        """Images ``start:stop`` of the set; a :class:`DataError` when the set has fewer
        (another machine's copy of it, say)."""
        images = load_images(
            self.spec, split=self.split, limit=self.limit, root=self.root, start=start, stop=stop
        )
        if len(images) != stop - start:
            raise DataError(
                f"{self.spec}: images {start}..{stop - 1} asked for, {len(images)} found from "
                f"{start} on (is this copy of the image set the one that was counted?)"
            )
        return Images(self.name or images.name, images.x, images.y)


def embedded_file(name: str) -> Path:
    """Path of a file shipped in ``bsnnc/runtime/data``."""
    return Path(str(resources.files("bsnnc.runtime").joinpath("data", name)))


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The directory of large local data sets: ``--data-dir``, else ``$BSNNC_DATA``, else ./data."""
    if explicit is not None:
        return Path(explicit)
    return Path(os.environ.get("BSNNC_DATA") or "data")


def load_images(
    spec: str,
    *,
    split: str = "test",
    limit: int | None = None,
    root: str | os.PathLike[str] | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Images:
    """Load ``spec`` (a name or an .npz path); ``limit`` keeps the first N images, and of
    those ``start:stop`` are returned (a shard; ImageNet decodes only its own files)."""
    if spec in EMBEDDED:
        images = _load_npz(embedded_file(f"{spec}_{split}.npz"), f"{spec}:{split}")
    elif spec in CIFAR:
        images = _load_cifar(spec, split, data_dir(root))
    elif spec == "imagenet":
        return _load_imagenet(data_dir(root), split, limit, start, stop)
    elif _is_npz(spec):
        images = _load_npz(Path(spec), spec)
    else:
        raise _unknown(spec)
    end = len(images) if limit is None else min(limit, len(images))
    stop = end if stop is None else min(stop, end)
    if (start, stop) != (0, len(images)):
        y = None if images.y is None else images.y[start:stop]
        images = Images(images.name, images.x[start:stop], y)
    return images


def count_images(
    spec: str,
    *,
    split: str = "test",
    limit: int | None = None,
    root: str | os.PathLike[str] | None = None,
) -> int:
    """How many images :func:`load_images` returns without ``start``/``stop``; an .npz is
    counted from its ``x`` header and an ImageNet folder from its file names (no pixels are
    read), a CIFAR archive is read."""
    if spec in EMBEDDED or _is_npz(spec):
        path = embedded_file(f"{spec}_{split}.npz") if spec in EMBEDDED else Path(spec)
        n = _npz_count(path)
    elif spec in CIFAR:
        n = len(_load_cifar(spec, split, data_dir(root)))
    elif spec == "imagenet":
        n = len(_imagenet_files(data_dir(root), "val" if split == "test" else split, None)[0])
    else:
        raise _unknown(spec)
    return n if limit is None else min(n, limit)


def _is_npz(spec: str) -> bool:
    return spec.endswith(".npz") or Path(spec).is_file()


def _unknown(spec: str) -> DataError:
    return DataError(
        f"unknown image set '{spec}': use one of {', '.join(NAMED)} or the path of {NPZ_FORMAT}"
    )


def _npz_count(path: Path) -> int:
    """The number of images of an .npz, from the header of its ``x`` member."""
    if not path.is_file():
        raise DataError(f"image file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z, z.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape = read(f)[0]
    except KeyError:
        raise DataError(f"{path}: no array 'x'") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    _check_images_shape(path, tuple(shape))
    return int(shape[0])


def _check_images_shape(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz's ``x`` must be a non-empty [N, C, H, W]."""
    if len(shape) != 4:
        raise DataError(f"{path}: x must be [N,C,H,W], got shape {list(shape)}")
    if 0 in shape:
        raise DataError(f"{path}: x holds no images (shape {list(shape)})")


def _load_npz(path: Path, name: str) -> Images:
    if not path.is_file():
        raise DataError(f"image file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path}: no array 'x' (found: {', '.join(z.files) or 'none'})")
            raw = z["x"]
            _check_float(path, raw.dtype)
            x = np.ascontiguousarray(raw, dtype=np.float32)
            y = _labels(path, np.asarray(z["y"])) if "y" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    _check_images_shape(path, x.shape)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise DataError(f"{path}: x has {bad} non-finite value(s) (NaN or ±inf)")
    if y is not None and y.shape != (x.shape[0],):
        raise DataError(f"{path}: y must have shape [{x.shape[0]}], got {list(y.shape)}")
    return Images(name, x, y)


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    """Class labels as int64: integers, or floats that are all whole numbers; never negative."""
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(
                f"{path}: y must hold integer class labels (found NaN, ±inf or fractions)"
            )
    elif y.dtype.kind not in "iu":
        raise DataError(f"{path}: y must hold integer class labels, got {y.dtype}")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: y has negative class labels (min {labels.min()})")
    return labels


def _check_float(path: Path, dtype: np.dtype[Any]) -> None:
    """Refuse integer or boolean images (raw pixels): the model expects normalized floats."""
    if np.issubdtype(dtype, np.floating):
        return
    what = "uint8 0–255" if dtype == np.uint8 else str(dtype)
    raise DataError(
        f"{path}: x is {what}: convert to float32 and normalize as the model was trained "
        "(e.g. x / 255, then subtract the training set's mean and divide by its std, per channel)"
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR python batches contain (numpy arrays, dtypes)."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"),
        ("__builtin__", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict[bytes, Any]:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{where}: not a CIFAR python batch ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR python batch (no dictionary)")
    return obj


#: the largest CIFAR batch file is CIFAR-100's train (~155 MB)
MAX_CIFAR_MEMBER = 256 << 20
#: the largest image (pixels) read from an ImageFolder; ImageNet's largest are ~ 10⁷
MAX_IMAGE_PIXELS = 50_000_000


def _check_member_size(where: str, size: int) -> None:
    """Refuse a CIFAR batch file larger than any real one, before reading it."""
    if size > MAX_CIFAR_MEMBER:
        raise DataError(
            f"{where}: {size:,} bytes is larger than any CIFAR batch (limit "
            f"{MAX_CIFAR_MEMBER:,}); the archive is not the CIFAR python version"
        )


def _cifar_members(name: str, split: str, root: Path) -> Iterator[tuple[str, bytes]]:
    spec = CIFAR[name]
    members = spec["train" if split == "train" else "test"]
    folder, archive = root / spec["folder"], root / spec["archive"]
    if folder.is_dir():
        for m in members:
            f = folder / m
            if not f.is_file():
                raise DataError(f"{name}: {f} is missing (re-extract {spec['archive']})")
            _check_member_size(str(f), f.stat().st_size)
            yield str(f), f.read_bytes()
    elif archive.is_file():
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for m in members:
                    info = tar.getmember(f"{spec['folder']}/{m}")
                    _check_member_size(f"{archive}[{m}]", info.size)
                    member = tar.extractfile(info)
                    if member is None:
                        raise KeyError(m)
                    yield f"{archive}[{m}]", member.read(MAX_CIFAR_MEMBER + 1)
        except (tarfile.TarError, KeyError, OSError, EOFError) as e:
            raise DataError(f"{archive}: unreadable or incomplete archive ({e})") from None
    else:
        raise DataError(
            f"{name} not found: place {spec['archive']} (the python version, from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted folder "
            f"{spec['folder']}/ in {root.resolve()} (set --data-dir or BSNNC_DATA)"
        )


def _load_cifar(name: str, split: str, root: Path) -> Images:
    spec = CIFAR[name]
    xs, ys = [], []
    for where, data in _cifar_members(name, split, root):
        batch = _unpickle(data, where)
        try:
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[spec["labels"]], dtype=np.int64))
        except (KeyError, ValueError) as e:
            raise DataError(f"{where}: not a {name} batch ({e})") from None
    x = np.concatenate(xs).astype(np.float32) / 255.0
    return Images(f"{name}:{split}", _normalize(x, spec["mean"], spec["std"]), np.concatenate(ys))


def _normalize(x: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x - m) / s, dtype=np.float32)


def _imagenet_files(
    root: Path, split: str, limit: int | None
) -> tuple[list[tuple[Path, int]], int]:
    base = root / "imagenet" / split
    if not base.is_dir():
        raise DataError(
            f"imagenet not found: expected an ImageFolder directory {base.resolve()} with one "
            "sub-folder of JPEGs per class (set --data-dir or BSNNC_DATA)"
        )
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{base}: no class folders")
    per_class = [
        sorted(p for p in (base / c).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        for c in classes
    ]
    order: list[tuple[Path, int]] = []
    for i in range(max(len(f) for f in per_class)):
        order += [(files[i], label) for label, files in enumerate(per_class) if i < len(files)]
    return order[:limit] if limit is not None else order, len(classes)


def _load_imagenet(
    root: Path, split: str, limit: int | None, start: int = 0, stop: int | None = None
) -> Images:
    try:
        from PIL import Image
    except ImportError:
        raise DataError("imagenet needs Pillow: pip install 'bsnnc[imagenet]'") from None
    split = "val" if split == "test" else split
    files, _ = _imagenet_files(root, split, limit)
    if not files:
        raise DataError(f"{root / 'imagenet' / split}: the class folders hold no images")
    files = files[start:stop]
    x = np.empty((len(files), 3, 224, 224), np.float32)
    for i, (path, _label) in enumerate(files):
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: {w}×{h} pixels is more than {MAX_IMAGE_PIXELS:,}: not a "
                        "photo this loader decodes (a decompression bomb?)"
                    )
                x[i] = _preprocess(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{path}: unreadable image ({e})") from None
    y = np.array([label for _, label in files], np.int64)
    return Images(f"imagenet:{split}", _normalize(x, IMAGENET_MEAN, IMAGENET_STD), y)


def _preprocess(im: Any) -> np.ndarray:
    """Resize the short side to 256 (bilinear), center-crop 224, CHW in [0, 1]."""
    w, h = im.size
    scale = 256 / min(w, h)
    im = im.resize((max(224, round(w * scale)), max(224, round(h * scale))), resample=2)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    arr = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return arr.transpose(2, 0, 1)
