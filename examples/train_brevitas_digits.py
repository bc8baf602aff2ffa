"""Train binary-weight CNNs with quantized activations on UCI digits (Brevitas) and export QONNX.

The networks follow the recipe bsnnc compiles (see ``train_digits.py``: no biases, no batch-norm,
average pooling *before* the activation, first and last layers full precision), but are built
from Brevitas 0.13 layers and trained quantization-aware, once for each activation bit width
``b`` in {2, 4}::

    conv1  Conv2d(1, 16, 3, pad 1)          FP      -> QuantReLU(b)
    conv2  QuantConv2d(16, 32, 3, pad 1)    binary  -> AvgPool2d(2) -> QuantReLU(b)
    conv3  QuantConv2d(32, 32, 3, pad 1)    binary  -> AvgPool2d(2) -> QuantReLU(b)
    Flatten -> fc1 QuantLinear(128, 64)     binary  -> QuantReLU(b)
    fc2    Linear(64, 10)                   FP

Binary weights (:class:`BinaryWeightAbsMean`, Brevitas ``BinaryQuant``), XNOR-Net style with
one scale per layer recomputed from the latent float weights ``W`` at every step::

    W_b = alpha * sign(W),   alpha = mean(|W|),   sign(0) = +1

(straight-through gradient for ``sign``; ``alpha`` is differentiated as it stands).

Activations (:class:`UintActQuant`, Brevitas ``QuantReLU``): unsigned ``b``-bit, zero point 0,
not narrow, round half to even, one learned float scale ``s`` per layer (initialized as the
moving average, momentum 0.1, of the ReLU output's per-batch 99.999th percentile over the first 30
training batches, divided by ``2^b - 1``)::

    q(x) = s * clip(round(relu(x) / s), 0, 2^b - 1)      (straight-through gradient for round)

Training: quantization-aware from scratch (Adam + cosine LR decay, cross-entropy), on one CPU
thread (deterministic; also much faster than two threads for this tiny model on a busy machine).

QONNX export (``brevitas.export.export_qonnx``, custom domain ``qonnx.custom_op.general``): each
binary layer's latent float weight is an initializer feeding ``BipolarQuant(W, alpha)`` (``alpha``
a [1] initializer); each quantized activation is ``Relu`` -> ``Quant(x, s, 0, b; signed=0,
narrow=0, rounding_mode=ROUND)``. Written to ``--out-dir`` (default ``tests/fixtures``):

* ``brevitas_digits_a{2,4}.onnx``      classic exporter (``dynamo=False``), opset 13, weights
  inline, input ``input`` / output ``logits`` with a dynamic batch dimension;
* ``brevitas_digits_a2_dynamo.onnx``   ``torch.export`` exporter (Brevitas' default on torch
  >= 2.9), opset 18, same names and dynamic batch, stack-trace metadata stripped, saved as one
  self-contained file (see :func:`export_dynamo` for the ``.onnx.data`` file torch writes);
* ``brevitas_digits_ref.npz``          ``x`` (the first 64 test images, float32 [64,1,8,8]),
  ``y`` (their labels, int64), ``logits_a{2,4}`` (the Brevitas model's float logits on ``x``),
  ``acc_a{2,4}`` (the quantized network's accuracy on the full test split) and, when ``qonnx``
  is installed, ``qonnx_logits_a{2,4}`` / ``qonnx_logits_a2_dynamo`` (``execute_onnx`` on the
  exported files for ``x``).

Data: scikit-learn's UCI digits with exactly ``train_digits.py``'s 75/25 stratified split and
normalization (its ``load_data``; its seeding and training loop are reused too). Requires the
``brevitas`` extra (torch, brevitas, onnxoptimizer, onnxscript, scikit-learn); ``qonnx`` is
optional. No network access is needed.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

# Imported before anything loads torch: train_digits sets the environment for bit-identical
# training (see there). The isort split keeps it first.
import train_digits
from qonnx_exec import run_qonnx

# isort: split

import numpy as np
import onnx
import torch
import torch.nn.functional as nnf
from torch import nn
from train_digits import (
    BINARY_LAYERS,
    REPO_ROOT,
    SEED,
    evaluate,
    load_data,
    strip_stack_traces,
    train_phase,
)

with warnings.catch_warnings():
    # brevitas.graph.equalize: "fast_hadamard_transform package not found"
    warnings.simplefilter("ignore", UserWarning)
    from brevitas.export import export_qonnx
    from brevitas.inject.enum import QuantType, StatsOp
    from brevitas.nn import QuantConv2d, QuantLinear, QuantReLU
    from brevitas.quant import Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"  # default --out-dir
ACT_BITS: tuple[int, ...] = (2, 4)
N_REF = 64


# --------------------------------------------------------------------------------------------
# Quantizers and model
# --------------------------------------------------------------------------------------------


class BinaryWeightAbsMean(Int8WeightPerTensorFloat):
    """1-bit weights ``mean(|W|) * sign(W)`` (Brevitas ``BinaryQuant``, per-tensor stats scale).

    ``quant_type = BINARY`` makes the weight solver pick ``BinaryQuant`` (``sign`` with
    ``sign(0) = +1``), which the QONNX exporter writes as ``BipolarQuant``; ``StatsOp.AVE`` is the
    mean of the absolute weights.
    """

    quant_type = QuantType.BINARY
    bit_width = 1
    scaling_stats_op = StatsOp.AVE


class UintActQuant(Uint8ActPerTensorFloat):
    """Unsigned, non-narrow, round-to-nearest activations with one learned float scale.

    The bit width is given per layer (``QuantReLU(bit_width=b)``); the scale is initialized from
    statistics of the first 30 training batches (Brevitas' default, 300, is ~14 epochs here).
    """

    collect_stats_steps = 30


class BrevitasDigitsNet(nn.Module):
    """FP conv1/fc2, binary conv2/conv3/fc1, ``b``-bit unsigned activations after every ReLU."""

    def __init__(self, act_bits: int) -> None:
        super().__init__()

        def act() -> QuantReLU:
            return QuantReLU(act_quant=UintActQuant, bit_width=act_bits, return_quant_tensor=False)

        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.act1 = act()
        self.conv2 = QuantConv2d(16, 32, 3, padding=1, bias=False, weight_quant=BinaryWeightAbsMean)
        self.act2 = act()
        self.conv3 = QuantConv2d(32, 32, 3, padding=1, bias=False, weight_quant=BinaryWeightAbsMean)
        self.act3 = act()
        self.fc1 = QuantLinear(32 * 2 * 2, 64, bias=False, weight_quant=BinaryWeightAbsMean)
        self.act4 = act()
        self.fc2 = nn.Linear(64, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a [N,1,8,8] batch."""
        x = self.act1(self.conv1(x))
        x = self.act2(nnf.avg_pool2d(self.conv2(x), 2))
        x = self.act3(nnf.avg_pool2d(self.conv3(x), 2))
        x = self.act4(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


# --------------------------------------------------------------------------------------------
# Training (the data, training loop and accuracy: train_digits)
# --------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """``train_digits.seed_everything``, but with torch on one CPU thread.

    The results depend on the thread count; two threads crawl when the machine is busy.
    """
    train_digits.seed_everything(seed)
    torch.set_num_threads(1)


def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Float32 logits of ``model`` in eval mode for the images ``x``."""
    model.eval()
    with torch.no_grad():
        logits: torch.Tensor = model(torch.from_numpy(x))
    return logits.numpy().astype(np.float32)


def check_binary_weights(model: BrevitasDigitsNet) -> dict[str, float]:
    """Check every binary layer's quantized weight holds exactly ``+-alpha``; return the alphas."""
    alphas: dict[str, float] = {}
    with torch.no_grad():
        for name in BINARY_LAYERS:
            layer = getattr(model, name)
            qw = layer.quant_weight()
            alpha = np.float32(qw.scale.detach().numpy().reshape(-1)[0])
            values = set(np.unique(qw.value.detach().numpy()).tolist())
            if not (alpha > 0 and values == {float(alpha), float(-alpha)}):
                raise AssertionError(f"{name}: quantized weights {sorted(values)[:4]} != +-alpha")
            mean_abs = np.float32(layer.weight.detach().abs().mean())
            if not np.isclose(alpha, mean_abs, rtol=1e-6):
                raise AssertionError(f"{name}: alpha {alpha} != mean|W| {mean_abs}")
            alphas[name] = float(alpha)
    return alphas


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_classic(model: nn.Module, path: Path) -> None:
    """QONNX via the TorchScript exporter (``dynamo=False``), opset 13, dynamic batch.

    Brevitas' defaults are kept otherwise (``keep_initializers_as_inputs=True``, then the
    onnxoptimizer passes ``extract_constant_to_initializer`` and ``eliminate_unused_initializer``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    export_qonnx(
        model,
        args=torch.zeros(1, 1, 8, 8),
        export_path=str(path),
        dynamo=False,
        opset_version=13,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def uses_external_data(model: onnx.ModelProto) -> bool:
    """True if any initializer of ``model`` (loaded without external data) lives in a side file."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def export_dynamo(model: nn.Module, path: Path) -> list[str]:
    """QONNX via the ``torch.export`` exporter (Brevitas' default), opset 18, dynamic batch.

    torch's defaults are kept (``optimize=True``, ``external_data=True``), so torch writes the
    initializers to ``<path>.data``; Brevitas then re-loads the model (with its external data)
    and saves it again as one self-contained file, leaving the side file behind unreferenced.
    Such a stale side file is deleted; one the model still references is kept. The stack-trace
    metadata is stripped afterwards. Returns notes on what happened, for the summary.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data_path = path.with_name(path.name + ".data")
    data_path.unlink(missing_ok=True)
    batch = torch.export.Dim("batch", min=1, max=4096)
    export_qonnx(
        model,
        args=(torch.zeros(2, 1, 8, 8),),
        export_path=str(path),
        opset_version=18,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    notes: list[str] = []
    proto = onnx.load(str(path), load_external_data=False)
    external = uses_external_data(proto)
    if data_path.exists():
        size = data_path.stat().st_size
        if external:
            notes.append(f"{data_path.name} ({size} bytes) is referenced by the model: kept")
        else:
            data_path.unlink()
            notes.append(f"torch wrote {data_path.name} ({size} bytes); unreferenced: removed")
    strip_stack_traces(proto)
    if external:
        onnx.load_external_data_for_model(proto, str(path.parent))
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path.name,
            size_threshold=0,
        )
    else:
        onnx.save_model(proto, str(path), save_as_external_data=False)
    return notes


def save_npz(path: Path, arrays: dict[str, Any]) -> None:
    """``np.savez_compressed`` with fixed zip member timestamps, so the bytes are reproducible.

    (numpy dates every member with the current time.) Loads with ``np.load`` as usual.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            zf.writestr(info, buf.getvalue())


def describe(path: Path) -> str:
    """One line per file: size, opsets and node op types in graph order."""
    m = onnx.load(str(path), load_external_data=False)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in m.opset_import)
    ops = " ".join(n.op_type for n in m.graph.node)
    return f"{path.name} ({path.stat().st_size} bytes; {opsets}): {ops}"


def quiet_torch_onnx_logs() -> None:
    """Silence torch.onnx's "torchvision is not installed" registration warnings."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def train_one(
    act_bits: int, data: dict[str, np.ndarray], args: argparse.Namespace
) -> tuple[BrevitasDigitsNet, float, float]:
    """Train one model with ``act_bits``-bit activations; return it, test accuracy, seconds."""
    seed_everything(args.seed)
    xtr, ytr = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xte, yte = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    gen = torch.Generator().manual_seed(args.seed)
    model = BrevitasDigitsNet(act_bits)
    t0 = time.perf_counter()
    train_phase(
        model, xtr, ytr, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, generator=gen
    )
    seconds = time.perf_counter() - t0
    acc, _ = evaluate(model, xte, yte)
    return model, acc, seconds


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train both models, export, verify and write the fixtures.

    Returns 0; a failed check raises an AssertionError.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=FIXTURES_DIR,
        help="the .onnx files and brevitas_digits_ref.npz go here (default: tests/fixtures)",
    )
    parser.add_argument("--epochs", type=int, default=40, help="quantization-aware epochs")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo export")
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    quiet_torch_onnx_logs()
    data = load_data()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    x_ref = np.ascontiguousarray(data["x_test"][:N_REF])
    ref: dict[str, Any] = {"x": x_ref, "y": data["y_test"][:N_REF].astype(np.int64)}
    lines: list[str] = []
    written: list[Path] = []
    qonnx_missing = False

    def check_qonnx(key: str, path: Path, brevitas_logits: np.ndarray) -> None:
        nonlocal qonnx_missing
        logits = run_qonnx(path, x_ref)
        if logits is None:
            qonnx_missing = True
            return
        diff = float(np.abs(logits - brevitas_logits).max())
        agree = int((logits.argmax(1) == brevitas_logits.argmax(1)).sum())
        if agree != N_REF:
            raise AssertionError(f"{path.name}: qonnx argmax differs on {N_REF - agree} images")
        ref[f"qonnx_{key}"] = logits
        lines.append(f"  qonnx execute_onnx({path.name}): max |qonnx - brevitas| = {diff:.3g}")

    for bits in ACT_BITS:
        model, acc, seconds = train_one(bits, data, args)
        alphas = check_binary_weights(model)
        logits = predict_logits(model, x_ref)
        ref[f"logits_a{bits}"] = logits
        ref[f"acc_a{bits}"] = np.float64(acc)
        lines.append(f"a{bits}: test accuracy {acc:.4f}  (trained {seconds:.1f}s)")
        lines.append("  alphas: " + ", ".join(f"{k}={v:.6g}" for k, v in alphas.items()))

        classic_path = out_dir / f"brevitas_digits_a{bits}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_classic(model, classic_path)
        written.append(classic_path)
        check_qonnx(f"logits_a{bits}", classic_path, logits)

        if bits == 2 and not args.no_dynamo:
            dynamo_path = out_dir / "brevitas_digits_a2_dynamo.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                notes = export_dynamo(model, dynamo_path)
            written.append(dynamo_path)
            lines.extend(f"  {n}" for n in notes)
            check_qonnx("logits_a2_dynamo", dynamo_path, logits)

    ref_path = out_dir / "brevitas_digits_ref.npz"
    save_npz(ref_path, ref)
    written.append(ref_path)

    print(f"train/test images: {len(data['y_train'])}/{len(data['y_test'])}")
    print(f"normalization (training split): mean={data['mean']:.6f} std={data['std']:.6f}")
    for line in lines:
        print(line)
    if qonnx_missing:
        print("qonnx is not installed: no qonnx_* reference logits written")
    for path in written:
        if path.suffix == ".onnx":
            print(describe(path))
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"total {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
