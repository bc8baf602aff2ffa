"""Build binary ResNet-20 (CIFAR form) and ResNet-18 (ImageNet form) directly as ONNX.

The residual networks people binarize (XNOR-Net / Bi-Real style, He et al. 2016 topology): the
first conv and the classifier stay full precision, every convolution inside the blocks is
binary, BatchNorm follows every convolution::

    ResNet-20  stem  Conv3x3(3 -> 16, pad 1) -> BN -> Relu
               3 stages x 3 basic blocks, widths 16 32 64 (stride 2 in the first block of
               stages 2 and 3)
    ResNet-18  stem  Conv7x7(3 -> 64, stride 2, pad 3) -> BN -> Relu
                     -> MaxPool(3, stride 2, pad 1)
               4 stages x 2 basic blocks, widths 64 128 256 512 (stride 2 at stages 2-4)
    both       GlobalAveragePool -> Flatten -> Gemm(classes, with bias)

A basic block is ``Conv3x3(stride s) -> BN -> Relu -> Conv3x3 -> BN -> Add(shortcut) -> Relu``
(``Add``'s first operand is the main branch). The shortcut is the identity when the shape is
unchanged, else a projection ``AveragePool(2, stride 2) -> Conv1x1 (binary) -> BN`` (the Bi-Real
/ "option D" shortcut: no information is dropped by a strided 1x1 conv). Convolutions have no
bias. The input is 3x32x32 for CIFAR and 3x224x224 for ImageNet; all channel counts are divided
by ``width_div`` for small test models.

Weights are random He-normal from ``np.random.default_rng(seed)`` (float32); binary tensors are
``alpha * sign(W)`` with ``alpha = mean|W|`` per tensor (or per output channel), exactly
``+-alpha`` in float32, as in ``vgg15.py`` (whose helpers this module reuses). BatchNorm
parameters come from the same generator: ``gamma ~ U(0.5, 1.5)``, ``beta ~ N(0, 0.1)``, running
mean ``~ N(0, 0.1)``, running variance ``~ U(0.5, 1.5)``, ``epsilon = 1e-5``.

Names (torchvision-like): input ``input`` (shape ``[batch, 3, H, W]``, dynamic ``batch``),
output ``logits``; nodes ``conv1``, ``bn1``, ``relu``, ``maxpool`` (ResNet-18) for the stem,
``layer{s}.{b}.{conv1,bn1,relu1,conv2,bn2,add,relu2}`` per block (``s`` from 1, ``b`` from 0),
``layer{s}.{b}.downsample.{pool,conv,bn}`` for a projection shortcut, then ``avgpool``,
``flatten``, ``fc``. Initializers ``<conv>.weight``, ``<bn>.{weight,bias,running_mean,
running_var}``, ``fc.weight``, ``fc.bias``.

Only numpy and onnx are needed. Usable as a module (``build_resnet``, ``save_model``) and as a
script::

    python examples/resnet.py --arch resnet20 --dataset cifar10 -o resnet20.onnx [--seed N]
        [--width-div K] [--external-data] [--per-channel-alpha]

ResNet-20 has ~0.27 M parameters, ResNet-18 (ImageNet) ~11.7 M (~47 MB, saved inline unless
``--external-data``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# The examples are scripts, not a package: make the sibling vgg15.py importable also when this
# file is loaded by path (tests/conftest.py's load_example puts nothing on sys.path).
_EXAMPLES = str(Path(__file__).resolve().parent)
if _EXAMPLES not in sys.path:
    sys.path.insert(0, _EXAMPLES)

from vgg15 import (  # noqa: E402
    DATASETS,
    _check_binary,
    _he_normal,
    binarize_inplace,
    classifier_model,
    save_model,
)

__all__ = ["ARCHS", "DATASETS", "build_resnet", "save_model"]

#: arch -> (stem kernel, stem stride, max-pool after the stem, blocks per stage, stage widths).
ARCHS: dict[str, tuple[int, int, bool, int, tuple[int, ...]]] = {
    "resnet20": (3, 1, False, 3, (16, 32, 64)),
    "resnet18": (7, 2, True, 2, (64, 128, 256, 512)),
}
BN_EPSILON = 1e-5


def build_resnet(
    arch: str = "resnet20",
    dataset: str = "cifar10",
    *,
    seed: int = 0,
    width_div: int = 1,
    per_channel_alpha: bool = False,
    opset: int = 13,
) -> onnx.ModelProto:
    """Build a binary ResNet as an ONNX model with random He-normal weights and BatchNorm.

    Args:
        arch: ``"resnet20"`` (CIFAR form) or ``"resnet18"`` (ImageNet form).
        dataset: ``"cifar10"``, ``"cifar100"`` (input 3x32x32) or ``"imagenet"`` (3x224x224).
        seed: seed of ``np.random.default_rng`` for the weights and BatchNorm parameters.
        width_div: divide every channel count by this (must divide the first stage's width).
        per_channel_alpha: one ``alpha`` per output channel instead of one per tensor.
        opset: default-domain opset version of the model.

    Returns:
        The model; its ``metadata_props`` record arch, dataset, seed, width_div and the binary
        layers.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    stem_k, stem_stride, stem_pool, blocks, widths = ARCHS[arch]
    if width_div < 1 or widths[0] % width_div:
        raise ValueError(
            f"width_div must be a positive divisor of {widths[0]} for {arch}, got {width_div}"
        )
    size, classes, _ = DATASETS[dataset]
    rng = np.random.default_rng(seed)

    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    binary_layers: list[str] = []

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Append node ``name`` (its output is also called ``name``); returns the output."""
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(x: str, name: str, cin: int, cout: int, k: int, stride: int, binary: bool) -> str:
        w = _he_normal(rng, (cout, cin, k, k), cin * k * k)
        if binary:
            alpha = binarize_inplace(w, per_channel=per_channel_alpha)
            _check_binary(w, alpha)
            binary_layers.append(name)
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        return node(
            "Conv",
            [x, f"{name}.weight"],
            name,
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            strides=[stride, stride],
        )

    def batchnorm(x: str, name: str, channels: int) -> str:
        params = {
            "weight": rng.uniform(0.5, 1.5, channels),
            "bias": rng.normal(0.0, 0.1, channels),
            "running_mean": rng.normal(0.0, 0.1, channels),
            "running_var": rng.uniform(0.5, 1.5, channels),
        }
        for key, value in params.items():
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}.{key}"))
        return node(
            "BatchNormalization",
            [x, *(f"{name}.{key}" for key in params)],
            name,
            epsilon=BN_EPSILON,
        )

    # Stem (full precision).
    cin = widths[0] // width_div
    x = conv("input", "conv1", 3, cin, stem_k, stem_stride, binary=False)
    x = node("Relu", [batchnorm(x, "bn1", cin)], "relu")
    if stem_pool:
        x = node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)

    # Residual stages of basic blocks (binary).
    for s, width in enumerate(widths, start=1):
        cout = width // width_div
        for b in range(blocks):
            stride = 2 if s > 1 and b == 0 else 1
            p = f"layer{s}.{b}"
            y = conv(x, f"{p}.conv1", cin, cout, 3, stride, binary=True)
            y = node("Relu", [batchnorm(y, f"{p}.bn1", cout)], f"{p}.relu1")
            y = batchnorm(conv(y, f"{p}.conv2", cout, cout, 3, 1, binary=True), f"{p}.bn2", cout)
            shortcut = x
            if stride != 1:
                shortcut = node(
                    "AveragePool",
                    [x],
                    f"{p}.downsample.pool",
                    kernel_shape=[stride, stride],
                    strides=[stride, stride],
                )
            if stride != 1 or cin != cout:
                shortcut = conv(shortcut, f"{p}.downsample.conv", cin, cout, 1, 1, binary=True)
                shortcut = batchnorm(shortcut, f"{p}.downsample.bn", cout)
            x = node("Relu", [node("Add", [y, shortcut], f"{p}.add")], f"{p}.relu2")
            cin = cout

    # Head (full precision).
    x = node("Flatten", [node("GlobalAveragePool", [x], "avgpool")], "flatten", axis=1)
    w = _he_normal(rng, (classes, cin), cin)
    inits.append(numpy_helper.from_array(w, "fc.weight"))
    inits.append(
        numpy_helper.from_array(rng.normal(0.0, 0.1, classes).astype(np.float32), "fc.bias")
    )
    nodes.append(
        helper.make_node("Gemm", [x, "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)
    )

    return classifier_model(
        nodes,
        inits,
        f"{arch}_{dataset}",
        (size, classes, opset),
        "bsnnc-examples-resnet",
        f"{arch} ({dataset} shape), random He-normal weights and BatchNorm, "
        "XNOR-binary block convolutions",
        {
            "arch": arch,
            "dataset": dataset,
            "seed": str(seed),
            "width_div": str(width_div),
            "alpha": "per_channel" if per_channel_alpha else "per_tensor",
            "binary_layers": ",".join(binary_layers),
        },
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build, check and save a binary ResNet ONNX model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet20")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("-o", "--output", type=Path, help="output .onnx path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width-div", type=int, default=1, help="divide all widths by K")
    parser.add_argument("--opset", type=int, default=13)
    parser.add_argument("--external-data", action="store_true", help="weights in <out>.data")
    parser.add_argument(
        "--per-channel-alpha", action="store_true", help="one alpha per output channel"
    )
    args = parser.parse_args(argv)

    out: Path = args.output or Path(f"{args.arch}_{args.dataset}.onnx")
    t0 = time.perf_counter()
    model = build_resnet(
        args.arch,
        args.dataset,
        seed=args.seed,
        width_div=args.width_div,
        per_channel_alpha=args.per_channel_alpha,
        opset=args.opset,
    )
    t_build = time.perf_counter() - t0
    n_params = sum(math.prod(t.dims) for t in model.graph.initializer)
    save_model(model, out, args.external_data)
    del model
    onnx.checker.check_model(str(out))
    t_total = time.perf_counter() - t0
    data = out.with_name(out.name + ".data")
    files = [out, data] if data.exists() else [out]
    print(f"{args.arch} {args.dataset} width/{args.width_div}: {n_params:,} parameters")
    print("wrote " + " + ".join(f"{f} ({f.stat().st_size:,} bytes)" for f in files))
    print(f"build {t_build:.1f}s, total {t_total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
