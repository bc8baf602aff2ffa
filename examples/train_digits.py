"""Train a constrained binary-weight CNN on scikit-learn's UCI digits and export it to ONNX.

The network follows the recipe bsnnc compiles (Lu & Sengupta 2020, see ``PAPER.md``): no
biases, no batch-norm, dropout only in training, analog ReLU activations, average pooling
*before* the ReLU, first and last layers full precision and every other layer binarized
XNOR-Net style as ``W_b = alpha * sign(W)`` with one ``alpha = mean(|W|)`` per layer::

    conv1  Conv2d(1, 32, 3, pad 1)      FP      -> ReLU
    conv2  BinConv2d(32, 64, 3, pad 1)  binary  -> AvgPool2d(2) -> ReLU
    conv3  BinConv2d(64, 64, 3, pad 1)  binary  -> AvgPool2d(2) -> ReLU
    Flatten -> fc1 BinLinear(256, 128)  binary  -> ReLU -> Dropout (training only)
    fc2    Linear(128, 10)              FP

Training: full precision first (Adam), then fine-tuning with the binarized layers (forward pass
uses ``alpha * sign(W)``, gradient via a clipped straight-through estimator).

Outputs (paths relative to the repository root unless ``--out-dir``/``--fixtures-dir`` given):

* ``runtime/data/digits.onnx``          classic exporter (``dynamo=False``), opset 13;
* ``tests/fixtures/digits_dynamo.onnx`` dynamo exporter (``dynamo=True``), opset 18;
* ``runtime/data/digits_{train,test}.npz`` with ``x`` (float32 [N,1,8,8], normalized),
  ``y`` (int64), ``mean``/``std`` (float32 scalars, from the training split);
* ``tests/fixtures/digits_torch.json``  reference accuracy / predictions of the exported model.

Requires the ``examples`` extra (torch, onnxscript, scikit-learn). No network access is needed:
the digits data ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

# Bit-identical training on any x86-64 CPU (set before torch loads): ATen's generic kernels
# (one vector width, so one reduction order, whatever the CPU supports), MKL's conditional
# numerical reproducibility (the same results on every instruction set), and no oneDNN (see
# seed_everything).
os.environ.setdefault("ATEN_CPU_CAPABILITY", "default")
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import numpy as np
import onnx
import torch
import torch.nn.functional as nnf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
BINARY_LAYERS: tuple[str, ...] = ("conv2", "conv3", "fc1")
SEED = 0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_data() -> dict[str, np.ndarray]:
    """Load UCI digits, split 75/25 (stratified, ``random_state=0``) and normalize.

    Pixels are scaled to [0, 1] (``/16``) and then standardized with the *training* split's
    scalar mean and standard deviation. Returns ``x_train``, ``y_train``, ``x_test``, ``y_test``
    (float32 [N,1,8,8] / int64 [N]) and float32 scalars ``mean``, ``std``.
    """
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    mean = np.float32(X_train.astype(np.float64).mean())
    std = np.float32(X_train.astype(np.float64).std())

    def norm(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32).reshape(-1, 1, 8, 8)

    return {
        "x_train": norm(X_train),
        "y_train": y_train,
        "x_test": norm(X_test),
        "y_test": y_test,
        "mean": np.asarray(mean, dtype=np.float32),
        "std": np.asarray(std, dtype=np.float32),
    }


# --------------------------------------------------------------------------------------------
# Binarization (XNOR-Net, one alpha per layer, clipped straight-through estimator)
# --------------------------------------------------------------------------------------------


def sign_nonzero(w: torch.Tensor) -> torch.Tensor:
    """``sign`` that maps 0 to +1, so every binarized weight is exactly ``+-alpha``."""
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


class _SignSTE(torch.autograd.Function):
    """Forward ``sign_nonzero(w)``; backward passes the gradient where ``|w| <= 1`` (clipped)."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return sign_nonzero(w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * (w.abs() <= 1).to(grad.dtype)


def binarize(w: torch.Tensor) -> torch.Tensor:
    """XNOR-Net binarization ``alpha * sign(w)`` with ``alpha = mean(|w|)`` (per tensor).

    The gradient reaches ``w`` through the straight-through sign and through ``alpha``.
    """
    alpha = w.abs().mean()
    return alpha * _SignSTE.apply(w)


class BinConv2d(nn.Conv2d):
    """Bias-free 3x3-style convolution whose weight is binarized when ``self.binary`` is set."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=padding, bias=False)
        self.binary = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with ``alpha*sign(W)`` (binary mode) or ``W`` (full-precision mode)."""
        w = binarize(self.weight) if self.binary else self.weight
        return nnf.conv2d(x, w, None, self.stride, self.padding)


class BinLinear(nn.Linear):
    """Bias-free linear layer whose weight is binarized when ``self.binary`` is set."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.binary = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Multiply by ``alpha*sign(W)^T`` (binary mode) or ``W^T`` (full-precision mode)."""
        w = binarize(self.weight) if self.binary else self.weight
        return nnf.linear(x, w)


class DigitsNet(nn.Module):
    """Training-time network: FP conv1/fc2, switchable binary conv2/conv3/fc1."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.conv2 = BinConv2d(32, 64, 3, padding=1)
        self.conv3 = BinConv2d(64, 64, 3, padding=1)
        self.fc1 = BinLinear(64 * 2 * 2, 128)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, 10, bias=False)

    def set_binary(self, flag: bool) -> None:
        """Switch the binary layers between full-precision and binarized forward passes."""
        for name in BINARY_LAYERS:
            getattr(self, name).binary = flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a [N,1,8,8] batch."""
        x = nnf.relu(self.conv1(x))
        x = nnf.relu(nnf.avg_pool2d(self.conv2(x), 2))
        x = nnf.relu(nnf.avg_pool2d(self.conv3(x), 2))
        x = torch.flatten(x, 1)
        x = self.drop(nnf.relu(self.fc1(x)))
        return self.fc2(x)


class DigitsInference(nn.Module):
    """Plain export module: ordinary Conv2d/Linear layers, no dropout, no biases.

    The binary layers hold materialized ``alpha * sign(W)`` weights; the graph the exporters see
    is Conv/AveragePool/Relu/Flatten/Gemm(or MatMul) only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.fc1 = nn.Linear(256, 128, bias=False)
        self.fc2 = nn.Linear(128, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a [N,1,8,8] batch."""
        x = nnf.relu(self.conv1(x))
        x = nnf.relu(nnf.avg_pool2d(self.conv2(x), 2))
        x = nnf.relu(nnf.avg_pool2d(self.conv3(x), 2))
        x = torch.flatten(x, 1)
        x = nnf.relu(self.fc1(x))
        return self.fc2(x)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; force deterministic single-process CPU kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    torch.backends.mkldnn.enabled = False  # oneDNN picks its kernels by CPU


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, np.ndarray]:
    """Return (accuracy, argmax predictions) of ``model`` in eval mode."""
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    return int((pred == y).sum()) / len(y), pred.numpy().astype(np.int64)


def train_phase(
    model: DigitsNet,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """Train ``model`` with Adam + cosine LR decay and cross-entropy over seeded mini-batches."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    n = x.shape[0]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = nnf.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()


def materialize(model: DigitsNet) -> tuple[DigitsInference, dict[str, float]]:
    """Copy ``model`` into a :class:`DigitsInference` with exact ``alpha*sign(W)`` weights.

    Every binary weight tensor is checked with numpy to hold only the two values ``+-alpha``
    (float32, sign(0) mapped to +1). Returns the module and the per-layer alphas.
    """
    inf = DigitsInference()
    alphas: dict[str, float] = {}
    with torch.no_grad():
        for name in ("conv1", "conv2", "conv3", "fc1", "fc2"):
            w = getattr(model, name).weight.detach().cpu().numpy().astype(np.float32)
            if name in BINARY_LAYERS:
                alpha = np.float32(np.abs(w).mean(dtype=np.float32))
                wb = np.where(w >= 0, alpha, -alpha).astype(np.float32)
                if not (alpha > 0 and np.all(np.abs(wb) == alpha)):
                    raise AssertionError(f"{name}: binarized weights are not exactly +-alpha")
                if set(np.unique(wb).tolist()) != {float(alpha), float(-alpha)}:
                    raise AssertionError(f"{name}: expected exactly two values +-alpha")
                alphas[name] = float(alpha)
                w = wb
            getattr(inf, name).weight.copy_(torch.from_numpy(w))
    inf.eval()
    return inf, alphas


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_classic(model: nn.Module, path: Path) -> None:
    """Export with the TorchScript-based exporter (``dynamo=False``), opset 13, dynamic batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export"
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )


def strip_stack_traces(model: onnx.ModelProto) -> None:
    """Drop the dynamo exporter's per-node ``pkg.torch.onnx.stack_trace`` metadata in place.

    The traces hold absolute paths of this script and of the torch install, which would make
    the fixture bytes machine-dependent; all other metadata is kept.
    """
    for g in (model.graph, *model.functions):
        for node in g.node:
            props = [(p.key, p.value) for p in node.metadata_props]
            keep = [(k, v) for k, v in props if k != "pkg.torch.onnx.stack_trace"]
            if len(keep) != len(props):
                del node.metadata_props[:]
                for k, v in keep:
                    node.metadata_props.add(key=k, value=v)


def export_dynamo(model: nn.Module, path: Path) -> None:
    """Export with the ``torch.export``-based exporter (``dynamo=True``), opset 18.

    The result is saved as one self-contained ``.onnx`` file (initializers embedded).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    prog = torch.onnx.export(
        model,
        (torch.zeros(2, 1, 8, 8),),
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        external_data=False,
        verbose=False,
    )
    if prog is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    proto = prog.model_proto
    strip_stack_traces(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def check_onnx(path: Path, x: np.ndarray, expected_pred: np.ndarray) -> np.ndarray:
    """Check the model with ``onnx.checker`` and that onnxruntime's argmax matches torch's."""
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    pred = logits.argmax(axis=1)
    mismatches = int((pred != expected_pred).sum())
    if mismatches:
        raise AssertionError(f"{path}: onnxruntime disagrees with torch on {mismatches} images")
    return np.asarray(logits)


def add_training_flags(parser: argparse.ArgumentParser, fp_epochs: int, bin_epochs: int) -> None:
    """The epochs, batch size and seed flags every digits training script takes."""
    parser.add_argument("--fp-epochs", type=int, default=fp_epochs, help="full-precision epochs")
    parser.add_argument(
        "--bin-epochs", type=int, default=bin_epochs, help="binarized fine-tuning epochs"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=SEED)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train, export, verify and write the fixtures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "runtime" / "data",
        help="digits.onnx and digits_{train,test}.npz go here (default: runtime/data)",
    )
    parser.add_argument(
        "--fixtures-dir",
        type=Path,
        default=REPO_ROOT / "tests" / "fixtures",
        help="digits_dynamo.onnx and digits_torch.json go here (default: tests/fixtures)",
    )
    add_training_flags(parser, 30, 30)
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo export")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    seed_everything(args.seed)
    data = load_data()
    xtr, ytr = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xte, yte = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    gen = torch.Generator().manual_seed(args.seed)

    model = DigitsNet()
    train_phase(
        model, xtr, ytr, epochs=args.fp_epochs, lr=2e-3, batch_size=args.batch_size, generator=gen
    )
    fp_acc, _ = evaluate(model, xte, yte)
    fp_train_acc, _ = evaluate(model, xtr, ytr)

    model.set_binary(True)
    bin_before, _ = evaluate(model, xte, yte)
    train_phase(
        model, xtr, ytr, epochs=args.bin_epochs, lr=1e-3, batch_size=args.batch_size, generator=gen
    )
    train_time = time.perf_counter() - t0

    inf, alphas = materialize(model)
    test_acc, test_pred = evaluate(inf, xte, yte)
    train_acc, _ = evaluate(inf, xtr, ytr)
    train_model_acc, train_model_pred = evaluate(model, xte, yte)

    out_dir: Path = args.out_dir
    fix_dir: Path = args.fixtures_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    fix_dir.mkdir(parents=True, exist_ok=True)

    classic_path = out_dir / "digits.onnx"
    export_classic(inf, classic_path)
    check_onnx(classic_path, data["x_test"], test_pred)
    if not args.no_dynamo:
        dynamo_path = fix_dir / "digits_dynamo.onnx"
        export_dynamo(inf, dynamo_path)
        check_onnx(dynamo_path, data["x_test"], test_pred)

    for split in ("train", "test"):
        np.savez_compressed(
            out_dir / f"digits_{split}.npz",
            x=data[f"x_{split}"],
            y=data[f"y_{split}"],
            mean=data["mean"],
            std=data["std"],
        )

    ref = {
        "test_accuracy": test_acc,
        "test_predictions": [int(p) for p in test_pred],
        "train_accuracy": train_acc,
        "binary_layers": list(BINARY_LAYERS),
        "alphas": alphas,
        "torch_version": torch.__version__,
        "fp_test_accuracy": fp_acc,
        "seed": args.seed,
    }
    (fix_dir / "digits_torch.json").write_text(json.dumps(ref, indent=1) + "\n")

    total = time.perf_counter() - t0
    print(f"train/test images: {len(ytr)}/{len(yte)}")
    print(f"normalization (training split): mean={data['mean']:.6f} std={data['std']:.6f}")
    print(f"full precision : test {fp_acc:.4f}  train {fp_train_acc:.4f}")
    print(f"binarized (before fine-tuning) test {bin_before:.4f}")
    print(f"binary (exact alpha*sign export): test {test_acc:.4f}  train {train_acc:.4f}")
    if not np.array_equal(train_model_pred, test_pred):
        print(f"  note: training-module predictions differ (test acc {train_model_acc:.4f})")
    print("alphas: " + ", ".join(f"{k}={v:.6g}" for k, v in alphas.items()))
    print(f"onnxruntime argmax == torch argmax on all {len(yte)} test images")
    print(f"wrote {classic_path}")
    if not args.no_dynamo:
        print(f"wrote {fix_dir / 'digits_dynamo.onnx'}")
    print(f"training {train_time:.1f}s, total {total:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
