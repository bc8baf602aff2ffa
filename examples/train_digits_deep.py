"""Train a deeper binary VGG-style CNN on UCI digits upsampled to 16x16 and export it to ONNX.

The companion of ``examples/train_digits.py`` with ten weight layers instead of five, eight of
them binary, on the same data (scikit-learn's UCI digits, same stratified 75/25 split) with
every 8x8 image upsampled bilinearly to 16x16 in numpy. The network follows the recipe bsnnc
compiles (Lu & Sengupta 2020, see ``PAPER.md``): no biases, no batch-norm, dropout only in
training, analog ReLU activations, average pooling *before* the ReLU, first and last layers
full precision and every other layer binarized XNOR-Net style as ``W_b = alpha * sign(W)`` with
one ``alpha = mean(|W|)`` per layer::

    conv1  Conv2d(1, 32, 3, pad 1)        FP      16x16            -> ReLU
    conv2  BinConv2d(32, 32, 3, pad 1)    binary  16x16            -> ReLU
    conv3  BinConv2d(32, 64, 3, pad 1)    binary  16x16 -> AvgPool2d(2) -> ReLU   (8x8)
    conv4  BinConv2d(64, 64, 3, pad 1)    binary  8x8              -> ReLU
    conv5  BinConv2d(64, 128, 3, pad 1)   binary  8x8   -> AvgPool2d(2) -> ReLU   (4x4)
    conv6  BinConv2d(128, 128, 3, pad 1)  binary  4x4              -> ReLU
    conv7  BinConv2d(128, 64, 3, pad 1)   binary  4x4   -> AvgPool2d(2) -> ReLU   (2x2)
    Flatten -> fc1 BinLinear(256, 128)    binary  -> ReLU -> Dropout (training only)
    fc2    BinLinear(128, 128)            binary  -> ReLU -> Dropout (training only)
    fc3    Linear(128, 10)                FP

Training: full precision first (Adam), then fine-tuning with the binarized layers (forward pass
uses ``alpha * sign(W)``, gradient via a clipped straight-through estimator).

Outputs (in ``--out-dir``, default ``tests/fixtures``):

* ``digits_deep.onnx``       classic exporter (``dynamo=False``), opset 13, weights inline;
* ``digits_deep_test.npz``   the full test split: ``x`` (float32 [450,1,16,16], normalized),
  ``y`` (int64), ``mean``/``std`` (float32 scalars, from the upsampled training split);
* ``digits_deep_train.npz``  the first 256 training images (calibration), same format;
* ``digits_deep_torch.json`` reference accuracy / predictions of the exported model.

The data split, the binary layers (``BinConv2d``/``BinLinear``), seeding, the training loop and
the onnxruntime check are ``train_digits.py``'s, imported from it. Requires the ``examples``
extra (torch, scikit-learn). No network access is needed: the digits data ship with
scikit-learn.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

# Imported before anything loads torch: train_digits sets the environment for bit-identical
# training (see there). The isort split keeps it first.
import train_digits

# isort: split

import numpy as np
import onnx
import torch
import torch.nn.functional as nnf
from export_torch_fixtures import export_classic as export_traced
from torch import nn
from train_digits import (
    REPO_ROOT,
    BinConv2d,
    BinLinear,
    add_training_flags,
    check_onnx,
    evaluate,
    seed_everything,
    train_phase,
)

SIZE = 16  # side of the upsampled images
CALIB_IMAGES = 256  # training images written to digits_deep_train.npz

# (name, in channels, out channels, AvgPool2d(2) before the ReLU)
CONVS: tuple[tuple[str, int, int, bool], ...] = (
    ("conv1", 1, 32, False),
    ("conv2", 32, 32, False),
    ("conv3", 32, 64, True),
    ("conv4", 64, 64, False),
    ("conv5", 64, 128, True),
    ("conv6", 128, 128, False),
    ("conv7", 128, 64, True),
)
# (name, in features, out features); every one but the last is followed by a ReLU
FCS: tuple[tuple[str, int, int], ...] = (
    ("fc1", 64 * 2 * 2, 128),
    ("fc2", 128, 128),
    ("fc3", 128, 10),
)
LAYERS: tuple[str, ...] = tuple(c[0] for c in CONVS) + tuple(f[0] for f in FCS)
BINARY_LAYERS: tuple[str, ...] = LAYERS[1:-1]  # all but the first and the last


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def bilinear_matrix(n_in: int, scale: int) -> np.ndarray:
    """[n_in*scale, n_in] matrix of 1-D bilinear interpolation (half-pixel centres, edges clamped).

    The same sampling as ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``: output pixel ``o`` reads source position ``(o + 0.5)/scale - 0.5``.
    """
    n_out = n_in * scale
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        src = max((o + 0.5) / scale - 0.5, 0.0)
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        m[o, i0] += 1.0 - frac
        m[o, i1] += frac
    return m


def upsample(x: np.ndarray) -> np.ndarray:
    """Bilinear x2 upsampling of [N,8,8] images to [N,16,16] (float64)."""
    m = bilinear_matrix(x.shape[-1], SIZE // x.shape[-1])
    return np.einsum("oh,nhw,pw->nop", m, x.astype(np.float64), m)


def pixels(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The [N,8,8] float32 pixels (``/16``) behind ``train_digits.load_data``'s normalized ``x``.

    UCI digits pixels are integers 0..16, so ``x * std + mean`` rounded to the nearest 1/16
    recovers them exactly (float32 rounding moves it by ~1e-6); checked by normalizing again.
    """
    px = (np.rint((x.astype(np.float64) * std + mean) * 16.0) / 16.0).astype(np.float32)
    if not np.array_equal(((px - mean) / std).astype(np.float32), x):
        raise AssertionError("the normalized digits do not map back to pixels k/16")
    return px.reshape(-1, 8, 8)


def load_data() -> dict[str, np.ndarray]:
    """``train_digits.load_data``'s images, upsampled to 16x16 and normalized again.

    The split (75/25, stratified, ``random_state=0``) and labels are those of ``train_digits.py``.
    The pixels (scaled to [0, 1]) are upsampled bilinearly and standardized with the *upsampled
    training* split's scalar mean and standard deviation. Returns ``x_train``, ``y_train``,
    ``x_test``, ``y_test`` (float32 [N,1,16,16] / int64 [N]) and float32 scalars ``mean``, ``std``.
    """
    base = train_digits.load_data()
    up = {
        split: upsample(pixels(base[f"x_{split}"], base["mean"], base["std"])).astype(np.float32)
        for split in ("train", "test")
    }
    mean = np.float32(up["train"].astype(np.float64).mean())
    std = np.float32(up["train"].astype(np.float64).std())
    normalized = {
        f"x_{split}": ((a - mean) / std).astype(np.float32).reshape(-1, 1, SIZE, SIZE)
        for split, a in up.items()
    }
    stats = {"mean": np.asarray(mean, dtype=np.float32), "std": np.asarray(std, dtype=np.float32)}
    return {**base, **normalized, **stats}


# --------------------------------------------------------------------------------------------
# Model (binary layers: train_digits.BinConv2d / BinLinear)
# --------------------------------------------------------------------------------------------


def deep_forward(model: nn.Module, x: torch.Tensor, drop: nn.Module | None = None) -> torch.Tensor:
    """Logits of the ``CONVS``/``FCS`` stack for a [N,1,16,16] batch.

    Average pooling comes before the ReLU; ``drop`` (if given) follows every hidden fc ReLU.
    """
    for name, _, _, pool in CONVS:
        x = getattr(model, name)(x)
        if pool:
            x = nnf.avg_pool2d(x, 2)
        x = nnf.relu(x)
    x = torch.flatten(x, 1)
    for name, _, _ in FCS[:-1]:
        x = nnf.relu(getattr(model, name)(x))
        if drop is not None:
            x = drop(x)
    return getattr(model, FCS[-1][0])(x)


class DeepDigitsNet(nn.Module):
    """Training-time network: FP conv1/fc3, switchable binary conv2..conv7/fc1/fc2."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        for name, cin, cout, _ in CONVS:
            conv = (
                BinConv2d(cin, cout, 3, padding=1)
                if name in BINARY_LAYERS
                else nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            )
            self.add_module(name, conv)
        for name, fin, fout in FCS:
            fc = BinLinear(fin, fout) if name in BINARY_LAYERS else nn.Linear(fin, fout, bias=False)
            self.add_module(name, fc)
        self.drop = nn.Dropout(dropout)
        self.reset_weights()

    def reset_weights(self) -> None:
        """He (Kaiming) normal initialization, fan-in, for the ReLU layers.

        Without biases or batch-norm the default PyTorch initialization (uniform, gain 1/sqrt(3)
        per layer) lets the activations shrink by ~3x in variance at every one of the nine ReLU
        layers, and full-precision training barely moves in the first epochs.
        """
        for name in LAYERS:
            w = getattr(self, name).weight
            if name == LAYERS[-1]:
                nn.init.kaiming_normal_(w, nonlinearity="linear")
            else:
                nn.init.kaiming_normal_(w, nonlinearity="relu")

    def set_binary(self, flag: bool) -> None:
        """Switch the binary layers between full-precision and binarized forward passes."""
        for name in BINARY_LAYERS:
            getattr(self, name).binary = flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a [N,1,16,16] batch."""
        return deep_forward(self, x, self.drop)


class DeepDigitsInference(nn.Module):
    """Plain export module: ordinary Conv2d/Linear layers, no dropout, no biases.

    The binary layers hold materialized ``alpha * sign(W)`` weights; the graph the exporter sees
    is Conv/AveragePool/Relu/Flatten/Gemm(or MatMul) only.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, cin, cout, _ in CONVS:
            self.add_module(name, nn.Conv2d(cin, cout, 3, padding=1, bias=False))
        for name, fin, fout in FCS:
            self.add_module(name, nn.Linear(fin, fout, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a [N,1,16,16] batch."""
        return deep_forward(self, x)


# --------------------------------------------------------------------------------------------
# Training (seeding, evaluation and the training loop: train_digits)
# --------------------------------------------------------------------------------------------


def split_tensors(data: dict[str, np.ndarray], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``split`` (``"train"`` or ``"test"``) as tensors sharing the arrays."""
    return torch.from_numpy(data[f"x_{split}"]), torch.from_numpy(data[f"y_{split}"])


def train(
    data: dict[str, np.ndarray], args: argparse.Namespace, model: nn.Module | None = None
) -> tuple[nn.Module, dict[str, float]]:
    """Train ``model`` (a fresh :class:`DeepDigitsNet` when None; it must have
    ``set_binary``) on ``train_digits.py``'s schedule.

    ``args.fp_epochs`` full-precision epochs (Adam, lr 2e-3), then ``args.bin_epochs`` of
    binarized fine-tuning (lr 1e-3), over mini-batches drawn by one generator seeded with
    ``args.seed``. Returns the model (in binary mode) and the accuracies on the way: ``fp_test``
    and ``fp_train`` after the first phase, ``bin_before`` (test) once binarized.
    """
    xtr, ytr = split_tensors(data, "train")
    xte, yte = split_tensors(data, "test")
    gen = torch.Generator().manual_seed(args.seed)
    model = DeepDigitsNet() if model is None else model
    fit = functools.partial(train_phase, model, xtr, ytr, batch_size=args.batch_size, generator=gen)
    fit(epochs=args.fp_epochs, lr=2e-3)
    acc = {"fp_test": evaluate(model, xte, yte)[0], "fp_train": evaluate(model, xtr, ytr)[0]}
    model.set_binary(True)
    acc["bin_before"] = evaluate(model, xte, yte)[0]
    fit(epochs=args.bin_epochs, lr=1e-3)
    return model, acc


def exact_alpha_sign(name: str, w: np.ndarray) -> tuple[np.ndarray, float]:
    """``alpha * sign(w)`` in float32 (``alpha = mean|w|``, sign(0) = +1) and ``alpha``.

    Checked to hold exactly the two values ``+-alpha`` (``alpha > 0``).
    """
    alpha = np.float32(np.abs(w).mean(dtype=np.float32))
    wb = np.where(w >= 0, alpha, -alpha).astype(np.float32)
    if not (alpha > 0 and set(np.unique(wb).tolist()) == {float(alpha), float(-alpha)}):
        raise AssertionError(f"{name}: binarized weights are not exactly +-alpha")
    return wb, float(alpha)


def materialize(model: DeepDigitsNet) -> tuple[DeepDigitsInference, dict[str, float]]:
    """A :class:`DeepDigitsInference` (eval mode) holding ``model``'s weights, the binary ones as
    exact ``alpha*sign(W)`` (see :func:`exact_alpha_sign`), and the per-layer alphas."""
    inf = DeepDigitsInference()
    alphas: dict[str, float] = {}
    with torch.no_grad():
        for name in LAYERS:
            w = getattr(model, name).weight.detach().cpu().numpy().astype(np.float32)
            if name in BINARY_LAYERS:
                w, alphas[name] = exact_alpha_sign(name, w)
            getattr(inf, name).weight.copy_(torch.from_numpy(w))
    return inf.eval(), alphas


# --------------------------------------------------------------------------------------------
# Outputs (the ONNX file is checked with train_digits.check_onnx)
# --------------------------------------------------------------------------------------------


def export_classic(model: nn.Module, path: Path) -> None:
    """Export as ``train_digits.export_classic`` does, but traced with a 16x16 image.

    TorchScript exporter (``dynamo=False``), opset 13, constant folding, input ``input`` /
    output ``logits`` with a dynamic batch dimension. ``train_digits.export_classic`` traces an
    8x8 image, so this exports with ``export_torch_fixtures.export_classic`` (which takes the
    example input but names the output ``output``) and renames the output to ``logits``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    export_traced(model, torch.zeros(1, 1, SIZE, SIZE), path, fold=True)
    proto = onnx.load(str(path))
    rename = {"output": "logits"}
    for node in proto.graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = rename.get(name, name)
    for value in proto.graph.output:
        value.name = rename.get(value.name, value.name)
    onnx.save_model(proto, str(path))


def write_image_sets(data: dict[str, np.ndarray], out_dir: Path) -> None:
    """``digits_deep_{train,test}.npz``: the first ``CALIB_IMAGES`` training images (a
    calibration subset) and the full test split, each with the normalization ``mean``/``std``."""
    for split, rows in (("train", slice(0, CALIB_IMAGES)), ("test", slice(None))):
        path = out_dir / f"digits_deep_{split}.npz"
        x, y = data[f"x_{split}"][rows], data[f"y_{split}"][rows]
        np.savez_compressed(path, x=x, y=y, mean=data["mean"], std=data["std"])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train, export, verify and write the fixtures.

    Returns 0; a failed check (binary weights not exactly ``+-alpha``, onnxruntime disagreeing
    with torch) raises an AssertionError.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "tests" / "fixtures",
        help="digits_deep.onnx, digits_deep_{train,test}.npz and digits_deep_torch.json go "
        "here (default: tests/fixtures)",
    )
    add_training_flags(parser, 12, 15)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    seed_everything(args.seed)
    data = load_data()
    model, acc = train(data, args)
    train_time = time.perf_counter() - t0

    inf, alphas = materialize(model)
    xte, yte = split_tensors(data, "test")
    acc["test"], test_pred = evaluate(inf, xte, yte)
    acc["train"] = evaluate(inf, *split_tensors(data, "train"))[0]
    train_model_acc, train_model_pred = evaluate(model, xte, yte)

    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "digits_deep.onnx"
    export_classic(inf, onnx_path)
    check_onnx(onnx_path, data["x_test"], test_pred)
    write_image_sets(data, out_dir)
    ref = {
        "test_accuracy": acc["test"],
        "test_predictions": [int(p) for p in test_pred],
        "train_accuracy": acc["train"],
        "binary_layers": list(BINARY_LAYERS),
        "alphas": alphas,
        "torch_version": torch.__version__,
        "fp_test_accuracy": acc["fp_test"],
        **{key: getattr(args, key) for key in ("seed", "fp_epochs", "bin_epochs")},
    }
    (out_dir / "digits_deep_torch.json").write_text(json.dumps(ref, indent=1) + "\n")

    lines = [
        f"train/test images: {len(data['y_train'])}/{len(yte)} ({SIZE}x{SIZE}, bilinear x2)",
        f"normalization (training split): mean={data['mean']:.6f} std={data['std']:.6f}",
        f"full precision : test {acc['fp_test']:.4f}  train {acc['fp_train']:.4f}",
        f"binarized (before fine-tuning) test {acc['bin_before']:.4f}",
        f"binary (exact alpha*sign export): test {acc['test']:.4f}  train {acc['train']:.4f}",
    ]
    if not np.array_equal(train_model_pred, test_pred):
        lines.append(f"  note: training-module predictions differ (test acc {train_model_acc:.4f})")
    lines += [
        "alphas: " + ", ".join(f"{k}={v:.6g}" for k, v in alphas.items()),
        f"onnxruntime argmax == torch argmax on all {len(yte)} test images",
        f"wrote {onnx_path} ({onnx_path.stat().st_size:,} bytes)",
        f"training {train_time:.1f}s, total {time.perf_counter() - t0:.1f}s",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
