"""Build the paper's VGG-15 (avg-pool before ReLU, binary middle layers) directly as ONNX.

VGG-15 is VGG-16 with one fewer linear layer (Lu & Sengupta 2020, ``VGG_15_avg_before_relu``)::

    13 x Conv3x3 (pad 1, no bias): 64 64 P 128 128 P 256 256 256 P 512 512 512 P 512 512 512 P
    Flatten -> fc1 Gemm(512*s*s -> 4096, no bias) -> Relu -> fc2 Gemm(4096 -> classes, no bias)

where a conv followed by ``P`` is ``Conv -> AveragePool(2, stride 2) -> Relu`` (the pool pools
input currents, *before* the ReLU; the last three pools use ``ceil_mode=1``) and every other
conv is ``Conv -> Relu``. ``s = 1`` for CIFAR (input 3x32x32) and ``s = 7`` for ImageNet
(3x224x224). All channel counts and the 4096 are divided by ``width_div`` for small test models.

Weights are random He-normal from ``np.random.default_rng(seed)`` (float32). The first conv and
the last Gemm stay full precision; every other weight tensor is XNOR-Net binary,
``alpha * sign(W)`` with ``alpha = mean|W|`` per tensor (or per output channel), so each value is
exactly ``+alpha`` or ``-alpha`` in float32 (``sign(0)`` counts as +1).

Names: input ``input`` (shape ``[batch, 3, H, W]``, dynamic ``batch``), output ``logits``; nodes
``conv1..conv13``, ``pool1..pool5``, ``relu1..relu14`` (``relu{i}`` follows weight layer ``i``;
``relu14`` follows ``fc1``), ``flatten``, ``fc1``, ``fc2``; initializers ``<node>.weight``.

Only numpy and onnx are needed. Usable as a module (``build_vgg15``, ``save_model``) and as a
script::

    python examples/vgg15.py --dataset cifar100 -o vgg15_cifar100.onnx [--seed N]
        [--width-div K] [--external-data] [--per-channel-alpha]

The ImageNet model (~120 M parameters, ~490 MB) is saved with external data by default.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: VGG-15 conv configuration: output channels, ``"P"`` = pool after the preceding conv.
VGG15_CFG: tuple[int | str, ...] = (
    64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P",
)  # fmt: skip
#: Indices (1-based) of the pools that use ``ceil_mode=1`` (the last three, as in the paper).
CEIL_MODE_POOLS: frozenset[int] = frozenset({3, 4, 5})
#: dataset -> (input spatial size, number of classes, final feature-map side ``s``).
DATASETS: dict[str, tuple[int, int, int]] = {
    "cifar10": (32, 10, 1),
    "cifar100": (32, 100, 1),
    "imagenet": (224, 1000, 7),
}
HIDDEN = 4096
#: Models whose initializers exceed this many bytes are always saved with external data
#: (protobuf cannot serialize more than 2 GiB).
EXTERNAL_DATA_LIMIT = 1_500_000_000
#: Initializers smaller than this stay inline when saving with external data.
INLINE_THRESHOLD = 1024
_CHUNK_ELEMS = 1 << 22


def _he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-normal float32 weights ``N(0, 2/fan_in)``, generated in float32 and scaled in place."""
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(math.sqrt(2.0 / fan_in))
    return w


def _abs_mean_rows(w2d: np.ndarray) -> np.ndarray:
    """Per-row ``mean(|w|)`` in float64, computed in row chunks to bound temporary memory."""
    rows, cols = w2d.shape
    step = max(1, _CHUNK_ELEMS // max(cols, 1))
    out = np.empty(rows, dtype=np.float64)
    for r in range(0, rows, step):
        out[r : r + step] = np.abs(w2d[r : r + step]).mean(axis=1, dtype=np.float64)
    return out


def binarize_inplace(w: np.ndarray, *, per_channel: bool = False) -> np.ndarray:
    """Overwrite float32 ``w`` with ``alpha * sign(w)`` (``sign(0) = +1``) and return ``alpha``.

    ``alpha = mean|w|`` over the whole tensor (shape ``()``) or, with ``per_channel``, over each
    output channel (axis 0; shape ``[out, 1, ...]`` broadcastable to ``w``). Every resulting
    value is exactly ``+alpha`` or ``-alpha`` in float32.
    """
    if w.dtype != np.float32:
        raise TypeError(f"expected float32 weights, got {w.dtype}")
    row_means = _abs_mean_rows(w.reshape(w.shape[0], -1))
    if per_channel:
        alpha = row_means.astype(np.float32).reshape((w.shape[0],) + (1,) * (w.ndim - 1))
    else:
        alpha = np.asarray(row_means.mean(), dtype=np.float32)
    if not np.all(alpha > 0):
        raise ValueError("alpha must be positive")
    neg = w < 0
    np.copyto(w, np.broadcast_to(alpha, w.shape))
    np.negative(w, out=w, where=neg)
    del neg
    return alpha


def _check_binary(w: np.ndarray, alpha: np.ndarray) -> None:
    """Raise unless every element of ``w`` is exactly ``+alpha`` or ``-alpha`` (float32)."""
    flat = w.reshape(w.shape[0], -1)
    a = np.broadcast_to(alpha.reshape(-1, 1) if alpha.ndim else alpha, (flat.shape[0], 1))
    step = max(1, _CHUNK_ELEMS // max(flat.shape[1], 1))
    for r in range(0, flat.shape[0], step):
        if not np.all(np.abs(flat[r : r + step]) == a[r : r + step]):
            raise AssertionError("binarized weights are not exactly +-alpha")


def build_vgg15(
    dataset: str = "cifar100",
    *,
    seed: int = 0,
    binary: bool = True,
    per_channel_alpha: bool = False,
    width_div: int = 1,
    opset: int = 13,
) -> onnx.ModelProto:
    """Build VGG-15 (avg-pool before ReLU) as an ONNX model with random He-normal weights.

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` (input 3x32x32) or ``"imagenet"`` (3x224x224).
        seed: seed of ``np.random.default_rng`` for the weights.
        binary: binarize every layer except the first conv and the last Gemm.
        per_channel_alpha: one ``alpha`` per output channel instead of one per tensor.
        width_div: divide every channel count and the hidden width 4096 by this (must divide 64).
        opset: default-domain opset version of the model.

    Returns:
        The model; its ``metadata_props`` record dataset, seed, width_div and the binary layers.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    if width_div < 1 or 64 % width_div:
        raise ValueError(f"width_div must be a positive divisor of 64, got {width_div}")
    size, classes, side = DATASETS[dataset]
    rng = np.random.default_rng(seed)

    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    binary_layers: list[str] = []

    def add_weight(name: str, w: np.ndarray, is_binary: bool) -> str:
        init_name = f"{name}.weight"
        if is_binary:
            alpha = binarize_inplace(w, per_channel=per_channel_alpha)
            _check_binary(w, alpha)
            binary_layers.append(name)
        inits.append(numpy_helper.from_array(w, init_name))
        return init_name

    x = "input"
    cin = 3
    conv_i = 0
    pool_i = 0
    n_convs = sum(1 for c in VGG15_CFG if c != "P")
    for j, c in enumerate(VGG15_CFG):
        if c == "P":
            continue
        conv_i += 1
        cout = int(c) // width_div
        name = f"conv{conv_i}"
        w = _he_normal(rng, (cout, cin, 3, 3), cin * 9)
        wname = add_weight(name, w, binary and conv_i > 1)
        del w
        nodes.append(
            helper.make_node(
                "Conv",
                [x, wname],
                [name],
                name=name,
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[1, 1],
            )
        )
        x = name
        if j + 1 < len(VGG15_CFG) and VGG15_CFG[j + 1] == "P":
            pool_i += 1
            pname = f"pool{pool_i}"
            nodes.append(
                helper.make_node(
                    "AveragePool",
                    [x],
                    [pname],
                    name=pname,
                    kernel_shape=[2, 2],
                    strides=[2, 2],
                    ceil_mode=1 if pool_i in CEIL_MODE_POOLS else 0,
                )
            )
            x = pname
        rname = f"relu{conv_i}"
        nodes.append(helper.make_node("Relu", [x], [rname], name=rname))
        x = rname
        cin = cout

    nodes.append(helper.make_node("Flatten", [x], ["flatten"], name="flatten", axis=1))
    feat = cin * side * side
    hidden = HIDDEN // width_div
    w = _he_normal(rng, (hidden, feat), feat)
    wname = add_weight("fc1", w, binary)
    del w
    nodes.append(helper.make_node("Gemm", ["flatten", wname], ["fc1"], name="fc1", transB=1))
    relu_fc = f"relu{n_convs + 1}"
    nodes.append(helper.make_node("Relu", ["fc1"], [relu_fc], name=relu_fc))
    w = _he_normal(rng, (classes, hidden), hidden)
    wname = add_weight("fc2", w, False)
    del w
    nodes.append(helper.make_node("Gemm", [relu_fc, wname], ["logits"], name="fc2", transB=1))

    return classifier_model(
        nodes,
        inits,
        f"vgg15_{dataset}",
        (size, classes, opset),
        "bsnnc-examples-vgg15",
        "VGG-15 (avg-pool before ReLU), random He-normal weights, "
        + ("XNOR-binary middle layers" if binary else "full precision"),
        {
            "dataset": dataset,
            "seed": str(seed),
            "width_div": str(width_div),
            "alpha": "per_channel" if per_channel_alpha else "per_tensor",
            "binary_layers": ",".join(binary_layers),
        },
    )


def classifier_model(
    nodes: list[onnx.NodeProto],
    inits: list[TensorProto],
    name: str,
    shape: tuple[int, int, int],
    producer: str,
    doc: str,
    props: dict[str, str],
) -> onnx.ModelProto:
    """The model of an image classifier's nodes: input ``input`` [batch, 3, size, size],
    output ``logits`` [batch, classes] (``shape`` = (size, classes, opset)), metadata ``props``."""
    size, classes, opset = shape
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name=producer,
        doc_string=doc,
    )
    # The lowest IR version that supports the opset keeps older onnxruntime releases happy.
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    helper.set_model_props(model, props)
    return model


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Total size in bytes of the model's inline initializer data."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _copy_fields(src: Any, dst: Any, *, skip: str) -> None:
    """Copy every set protobuf field of ``src`` into ``dst`` except the field named ``skip``."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str], external_data: bool) -> None:
    """Save ``model`` to ``path``, optionally with all large tensors in ``<name>.onnx.data``.

    External data is used when ``external_data`` is true or the initializers exceed
    :data:`EXTERNAL_DATA_LIMIT` bytes. The data file (one per model, beside it, referenced by
    the relative ``location`` ``<file name>.data``) is written from scratch; tensors below
    :data:`INLINE_THRESHOLD` bytes stay inline. ``model`` itself is not modified and its tensor
    data are not copied. Without external data a stale ``.data`` file of the same name is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + ".data")
    if not (external_data or initializer_bytes(model) > EXTERNAL_DATA_LIMIT):
        onnx.save_model(model, str(path))
        if data_path.exists():
            data_path.unlink()
        return

    # Every top-level field except the graph, then every graph field except the initializers.
    shell = onnx.ModelProto()
    _copy_fields(model, shell, skip="graph")
    _copy_fields(model.graph, shell.graph, skip="initializer")
    with open(data_path, "wb") as f:
        for t in model.graph.initializer:
            if not t.HasField("raw_data") or len(t.raw_data) < INLINE_THRESHOLD:
                shell.graph.initializer.append(t)
                continue
            ext = TensorProto()
            ext.name = t.name
            ext.data_type = t.data_type
            ext.dims.extend(t.dims)
            align = 4096 if len(t.raw_data) >= (1 << 20) else 64  # page-align big tensors
            pad = (-f.tell()) % align
            if pad:
                f.write(b"\0" * pad)
            offset = f.tell()
            f.write(t.raw_data)
            ext.data_location = TensorProto.EXTERNAL
            for key, val in (
                ("location", data_path.name),
                ("offset", str(offset)),
                ("length", str(len(t.raw_data))),
            ):
                entry = ext.external_data.add()
                entry.key = key
                entry.value = val
            shell.graph.initializer.append(ext)
    onnx.save_model(shell, str(path))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: build, check and save a VGG-15 ONNX model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar100")
    parser.add_argument("-o", "--output", type=Path, help="output .onnx path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width-div", type=int, default=1, help="divide all widths by K")
    parser.add_argument("--opset", type=int, default=13)
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="weights in <out>.data (always for imagenet)",
    )
    parser.add_argument(
        "--per-channel-alpha", action="store_true", help="one alpha per output channel"
    )
    parser.add_argument("--full-precision", action="store_true", help="do not binarize")
    args = parser.parse_args(argv)

    out: Path = args.output or Path(f"vgg15_{args.dataset}.onnx")
    t0 = time.perf_counter()
    model = build_vgg15(
        args.dataset,
        seed=args.seed,
        binary=not args.full_precision,
        per_channel_alpha=args.per_channel_alpha,
        width_div=args.width_div,
        opset=args.opset,
    )
    t_build = time.perf_counter() - t0
    n_params = sum(math.prod(t.dims) for t in model.graph.initializer)
    external = args.external_data or args.dataset == "imagenet"
    save_model(model, out, external)
    del model
    onnx.checker.check_model(str(out))
    t_total = time.perf_counter() - t0
    data_path = out.with_name(out.name + ".data")
    size = out.stat().st_size
    data_size = data_path.stat().st_size if external and data_path.exists() else 0
    print(f"VGG-15 {args.dataset} width/{args.width_div}: {n_params:,} parameters")
    print(f"wrote {out} ({size:,} bytes)" + (f" + {data_path} ({data_size:,} bytes)" * external))
    print(f"build {t_build:.1f}s, total {t_total:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
