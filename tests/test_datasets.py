"""Data-set loaders on small files written in the real formats (never downloaded)."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bsnnc.ir.errors import DataError
from bsnnc.runtime import datasets
from bsnnc.runtime.datasets import CIFAR, ImageSource, load_images


def cifar_batch(n: int, seed: int, labels_key: bytes) -> tuple[dict[bytes, object], np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 100, n).tolist()
    batch: dict[bytes, object] = {
        b"data": data,
        labels_key: labels,
        b"batch_label": b"x",
        b"filenames": [b"f"] * n,
    }
    if labels_key == b"fine_labels":
        batch[b"coarse_labels"] = [0] * n
    return batch, data


def write_cifar(root: Path, name: str, archive: bool) -> dict[str, np.ndarray]:
    spec = CIFAR[name]
    key = spec["labels"]
    assert isinstance(key, bytes)
    blobs, datas = {}, {}
    for i, member in enumerate([*spec["train"], *spec["test"]]):
        batch, data = cifar_batch(3 + i, i, key)
        blobs[member] = pickle.dumps(batch, protocol=2)
        datas[member] = data
    folder = str(spec["folder"])
    if archive:
        with tarfile.open(root / str(spec["archive"]), "w:gz") as tar:
            for member, blob in blobs.items():
                info = tarfile.TarInfo(f"{folder}/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    else:
        (root / folder).mkdir()
        for member, blob in blobs.items():
            (root / folder / member).write_bytes(blob)
    return datas


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("archive", [True, False])
def test_cifar_loader(name: str, archive: bool, tmp_path: Path) -> None:
    datas = write_cifar(tmp_path, name, archive)
    spec = CIFAR[name]
    test = load_images(name, split="test", root=tmp_path)
    train = load_images(name, split="train", root=tmp_path, limit=5)
    n_train = sum(d.shape[0] for m, d in datas.items() if m in spec["train"])
    assert test.x.shape == (datas[spec["test"][0]].shape[0], 3, 32, 32)
    assert len(train) == min(5, n_train)
    raw = datas[spec["test"][0]].reshape(-1, 3, 32, 32).astype(np.float32) / 255
    mean = np.array(spec["mean"], np.float32).reshape(1, 3, 1, 1)
    std = np.array(spec["std"], np.float32).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(test.x, (raw - mean) / std, rtol=1e-6)
    assert test.y is not None and test.y.dtype == np.int64


def test_cifar_missing_names_the_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        load_images("cifar100", root=tmp_path)
    msg = str(e.value)
    assert "cifar-100-python.tar.gz" in msg and str(tmp_path.resolve()) in msg
    assert "--data-dir" in msg and "BSNNC_DATA" in msg


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path, "cifar10", archive=True)
    monkeypatch.setenv("BSNNC_DATA", str(tmp_path))
    assert len(load_images("cifar10", limit=2)) == 2


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    for m in [*CIFAR["cifar10"]["train"], *CIFAR["cifar10"]["test"]]:
        (folder / m).write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="is not allowed in a CIFAR batch"):
        load_images("cifar10", root=tmp_path)


def test_truncated_archive(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", archive=True)
    p = tmp_path / "cifar-10-python.tar.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match="unreadable or incomplete archive"):
        load_images("cifar10", root=tmp_path)


def test_imagenet_folder(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for c, cls in enumerate(["n01", "n02", "n03"]):
        (tmp_path / "imagenet" / "val" / cls).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (300 + 10 * i, 260 + 20 * c, 3), dtype=np.uint8)
            pil.fromarray(arr).save(tmp_path / "imagenet" / "val" / cls / f"img{i}.JPEG")
    images = load_images("imagenet", root=tmp_path)
    assert images.x.shape == (6, 3, 224, 224) and images.x.dtype == np.float32
    assert images.y is not None
    assert images.y.tolist() == [0, 1, 2, 0, 1, 2]  # round-robin over classes
    two = load_images("imagenet", root=tmp_path, limit=2)
    assert two.y is not None and two.y.tolist() == [0, 1]
    assert abs(float(images.x.mean())) < 1.0  # normalized
    # a shard decodes only its own files, and shards make up the whole set
    source = ImageSource("imagenet", limit=5, root=str(tmp_path))
    assert source.count() == 5
    parts = [source.load(a, b) for a, b in [(0, 2), (2, 5)]]
    assert np.array_equal(np.concatenate([p.x for p in parts]), images.x[:5])
    assert parts[1].y is not None and parts[1].y.tolist() == [2, 0, 1]


@pytest.mark.parametrize("spec", ["digits", "npz"])
def test_shards_of_an_image_set_make_up_the_whole_set(spec: str, tmp_path: Path) -> None:
    whole = load_images("digits", limit=100)
    if spec == "npz":
        spec = str(tmp_path / "set.npz")
        np.savez(spec, x=whole.x, y=whole.y)
    source = ImageSource(spec, limit=100)
    assert source.count() == 100 and ImageSource(spec).count() in (100, 450)
    parts = [source.load(a, b) for a, b in [(0, 33), (33, 66), (66, 100)]]
    assert np.array_equal(np.concatenate([p.x for p in parts]), whole.x)
    assert np.array_equal(np.concatenate([p.y for p in parts if p.y is not None]), whole.y)
    assert source.labelled()
    with pytest.raises(DataError, match=r"images 90\.\.109 asked for, 10 found"):
        source.load(90, 110)  # a shard beyond the set: another copy of it, say
    bare = tmp_path / "bare.npz"
    np.savez(bare, x=whole.x)
    assert not ImageSource(str(bare)).labelled()
    assert ImageSource(str(bare), name="given.npz").load(0, 2).name == "given.npz"


def test_an_npz_is_counted_from_its_header(tmp_path: Path) -> None:
    """Counting reads the shape in the header of ``x`` (no pixels) and refuses what is not
    [N, C, H, W]."""
    path = tmp_path / "big.npz"
    np.savez(path, x=np.zeros((40, 1, 8, 8), np.float32))
    assert ImageSource(str(path)).count() == 40
    np.savez(path, x=np.zeros((40, 64), np.float32))
    with pytest.raises(DataError, match="x must be"):
        ImageSource(str(path)).count()


def test_imagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ImageFolder directory"):
        load_images("imagenet", root=tmp_path)


def test_npz_and_digits() -> None:
    d = load_images("digits", split="train", limit=10)
    assert d.x.shape == (10, 1, 8, 8) and d.y is not None
    assert len(load_images("digits")) == 450


def test_unknown_name() -> None:
    with pytest.raises(DataError, match="digits, cifar10, cifar100, imagenet"):
        load_images("mnist")


@pytest.mark.parametrize("archive", [True, False])
def test_cifar_member_larger_than_any_real_batch_is_refused_before_reading(
    archive: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size a tar header (or the file system) declares is checked before a byte of the
    member is read (the real limit is 256 MiB; lowered here to keep the test small)."""
    write_cifar(tmp_path, "cifar10", archive=archive)
    monkeypatch.setattr(datasets, "MAX_CIFAR_MEMBER", 1000)
    with pytest.raises(DataError, match="larger than any CIFAR batch"):
        load_images("cifar10", split="test", root=tmp_path)


def test_huge_image_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pil = pytest.importorskip("PIL.Image")
    d = tmp_path / "imagenet" / "val" / "n0"
    d.mkdir(parents=True)
    pil.new("RGB", (40, 30)).save(d / "a.png")
    monkeypatch.setattr(datasets, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    with pytest.raises(DataError, match="40×30 pixels"):
        load_images("imagenet", root=tmp_path)


def test_empty_imagenet_class_folders(tmp_path: Path) -> None:
    (tmp_path / "imagenet" / "val" / "n0").mkdir(parents=True)
    with pytest.raises(DataError, match="hold no images"):
        load_images("imagenet", root=tmp_path)


@pytest.mark.parametrize(
    ("x", "y", "fragment"),
    [
        (np.zeros((0, 1, 8, 8), np.float32), None, "holds no images"),
        (np.full((2, 1, 8, 8), np.nan, np.float32), None, "non-finite"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array([0.0, np.nan]), "integer class labels"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array([0.5, 1.0]), "integer class labels"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array([0, -1]), "negative class labels"),
        (np.zeros((2, 1, 8, 8), np.float32), np.array(["a", "b"]), "integer class labels"),
    ],
)
def test_bad_npz_image_sets(
    x: np.ndarray, y: np.ndarray | None, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, **({} if y is None else {"y": y}))
    with pytest.raises(DataError, match=fragment):
        load_images(str(path))


def test_whole_float_labels_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.npz"
    np.savez(path, x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([3.0, 1.0]))
    assert load_images(str(path)).y.tolist() == [3, 1]  # type: ignore[union-attr]
