"""Train a small binary-weight ResNet on UCI digits (8x8) and export it with both torch exporters.

A residual network of the kind people binarize (XNOR-Net / Bi-Real style: first and last layers
full precision, every 3x3 convolution inside the blocks binary with one ``alpha = mean|W|`` per
layer, BatchNorm after every convolution), scaled to digits::

    stem    Conv2d(1, 32, 3, pad 1) FP -> BN -> ReLU                                   8x8
    block1  BinConv(32, 32, 3) -> BN -> ReLU -> BinConv(32, 32, 3) -> BN  (+ identity)  -> ReLU
    block2  BinConv(32, 64, 3, stride 2) -> BN -> ReLU -> BinConv(64, 64, 3) -> BN        4x4
            (+ projection: AvgPool2d(2) -> BinConv(32, 64, 1) -> BN)                   -> ReLU
    block3  BinConv(64, 64, 3) -> BN -> ReLU -> BinConv(64, 64, 3) -> BN  (+ identity)  -> ReLU
    head    global average pool -> Linear(64, 10) FP (with bias)

Training: full precision first (Adam), then fine-tuning with the binarized convolutions
(``alpha * sign(W)`` forward, clipped straight-through gradient), on ``train_digits.py``'s
data split, seeding and loop. The export module holds the exact ``alpha * sign(W)`` weights
and BatchNorm in eval mode.

Outputs (in ``--out-dir``, default ``tests/fixtures``):

* ``digits_resnet.onnx``         classic exporter (``dynamo=False``, opset 13) with
  ``do_constant_folding=False``: BatchNorm stays, and initializers pass through ``Identity``
  nodes (what users get from that setting);
* ``digits_resnet_dynamo.onnx``  the ``torch.export``-based exporter (opset 18), which folds
  BatchNorm into the convolutions (per-channel ``±alpha·gamma/sigma`` weights and a bias);
* ``digits_resnet_torch.json``   test accuracy and predictions of the exported model.

The images are ``digits`` (bsnnc's embedded ``digits_{train,test}.npz``, the same split).
Requires the ``examples`` extra (torch, scikit-learn).
"""

from __future__ import annotations

import argparse
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
    add_training_flags,
    check_onnx,
    evaluate,
    export_dynamo,
    load_data,
    seed_everything,
)
from train_digits_deep import exact_alpha_sign, split_tensors, train

assert train_digits  # imported for its side effect on the environment (see above)

FIXTURES = REPO_ROOT / "tests" / "fixtures"
#: (name, in, out, kernel, stride) of every binary convolution
BINARY_CONVS = (
    ("b1c1", 32, 32, 3, 1),
    ("b1c2", 32, 32, 3, 1),
    ("b2c1", 32, 64, 3, 2),
    ("b2c2", 64, 64, 3, 1),
    ("b2sc", 32, 64, 1, 1),
    ("b3c1", 64, 64, 3, 1),
    ("b3c2", 64, 64, 3, 1),
)


class ResNetDigits(nn.Module):
    """The network; ``conv`` builds the binary convolutions (switchable :class:`BinConv2d` for
    training, plain ``Conv2d`` for export)."""

    def __init__(self, binary: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(32)
        for name, cin, cout, k, s in BINARY_CONVS:
            conv: nn.Conv2d
            if binary:
                conv = BinConv2d(cin, cout, k, padding=k // 2)
                conv.stride = (s, s)
            else:
                conv = nn.Conv2d(cin, cout, k, stride=s, padding=k // 2, bias=False)
            setattr(self, name, conv)
            setattr(self, name + "_bn", nn.BatchNorm2d(cout))
        self.fc = nn.Linear(64, 10)

    def set_binary(self, flag: bool) -> None:
        """Switch the binary convolutions between full-precision and binarized forward passes."""
        for name, *_ in BINARY_CONVS:
            getattr(self, name).binary = flag

    def _cb(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name + "_bn")(getattr(self, name)(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a [N,1,8,8] batch."""
        x = nnf.relu(self.stem_bn(self.stem(x)))
        x = nnf.relu(self._cb("b1c2", nnf.relu(self._cb("b1c1", x))) + x)
        shortcut = self._cb("b2sc", nnf.avg_pool2d(x, 2))
        x = nnf.relu(self._cb("b2c2", nnf.relu(self._cb("b2c1", x))) + shortcut)
        x = nnf.relu(self._cb("b3c2", nnf.relu(self._cb("b3c1", x))) + x)
        return self.fc(torch.flatten(nnf.adaptive_avg_pool2d(x, 1), 1))


def materialize(model: ResNetDigits) -> tuple[ResNetDigits, dict[str, float]]:
    """The export module (eval mode): exact ``alpha*sign(W)`` binary weights, the rest copied."""
    inf = ResNetDigits(binary=False)
    inf.load_state_dict(model.state_dict())
    alphas: dict[str, float] = {}
    with torch.no_grad():
        for name, *_ in BINARY_CONVS:
            w = getattr(model, name).weight.detach().cpu().numpy().astype(np.float32)
            wb, alphas[name] = exact_alpha_sign(name, w)
            getattr(inf, name).weight.copy_(torch.from_numpy(wb))
    return inf.eval(), alphas


def export_classic(model: nn.Module, path: Path) -> None:
    """TorchScript exporter without constant folding (BatchNorm and ``Identity`` kept); the
    output renamed ``logits``."""
    export_traced(model, torch.zeros(1, 1, 8, 8), path, fold=False)
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = "logits" if name == "output" else name
    for value in proto.graph.output:
        value.name = "logits" if value.name == "output" else value.name
    onnx.save_model(proto, str(path))


def main(argv: list[str] | None = None) -> int:
    """Train, export with both exporters, check them with onnxruntime, write the fixtures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    out_help = "where the .onnx and .json files go (default: tests/fixtures)"
    parser.add_argument("--out-dir", type=Path, default=FIXTURES, help=out_help)
    add_training_flags(parser, 10, 12)
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo export")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    seed_everything(args.seed)
    data = load_data()
    model, acc = train(data, args, ResNetDigits())
    assert isinstance(model, ResNetDigits)
    inf, alphas = materialize(model)
    xte, yte = split_tensors(data, "test")
    acc["test"], pred = evaluate(inf, xte, yte)

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    classic, dynamo = out / "digits_resnet.onnx", out / "digits_resnet_dynamo.onnx"
    export_classic(inf, classic)
    if not args.no_dynamo:
        export_dynamo(inf, dynamo)
    for path in (classic,) if args.no_dynamo else (classic, dynamo):
        check_onnx(path, data["x_test"], pred)
    facts = {
        "test_accuracy": acc["test"],
        "test_predictions": [int(p) for p in pred],
        "fp_test_accuracy": acc["fp_test"],
        "alphas": alphas,
        "torch_version": torch.__version__,
        **{key: getattr(args, key) for key in ("seed", "fp_epochs", "bin_epochs")},
    }
    (out / "digits_resnet_torch.json").write_text(json.dumps(facts, indent=1) + "\n")
    print(
        f"full precision test {acc['fp_test']:.4f}; binary (exact alpha*sign) test "
        f"{acc['test']:.4f}\nwrote {classic} and {dynamo}; onnxruntime argmax == torch on all "
        f"{len(yte)} test images\ntotal {time.perf_counter() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
