"""Export small PyTorch models to ONNX with both exporters as bsnnc frontend test fixtures.

Every model is exported twice into ``tests/fixtures/`` as single self-contained files:

* ``torch_classic_<name>.onnx``: TorchScript exporter (``dynamo=False``), opset 13;
* ``torch_dynamo_<name>.onnx``:  ``torch.export`` exporter (``dynamo=True``), opset 18;

plus ``torch_dynamo_mixed_noopt.onnx`` (dynamo exporter with ``optimize=False``: the raw graph
with Shape/Expand/CastLike/Constant/Concat shape plumbing and an unfused BatchNormalization).
See :data:`FIXTURES` for which files are exported with optimization / constant folding;

both with input ``input`` / output ``output`` and a dynamic batch dimension ``batch``. Beside each
file ``torch_<exporter>_<name>.npz`` holds ``x`` (float32 input, batch 3, seeded) and ``y`` (the
PyTorch output, float32) so tests can check the ONNX graph without torch.

Models (all seeded, eval mode):

``mixed``      input [N,3,12,12]: Conv(bias) -> BatchNorm (non-trivial running stats, some
               negative gamma) -> ReLU -> Conv 2x2 (bias, 10 -> 9) -> ReLU -> MaxPool(2,
               ceil_mode, 9 -> 5) -> binary Conv (exact alpha*sign, per-output-channel alpha)
               -> AvgPool(3, stride 2, pad 1; 5 -> 3) -> ReLU -> AdaptiveAvgPool(1) -> Flatten
               -> Dropout -> Linear(bias).
``signscale``  input [N,3,8,8]: FP Conv -> ReLU -> a conv whose weight is computed *in forward*
               as ``sign(w) * mean(|w|, dims 1,2,3)`` (so the graph holds Sign/Abs/ReduceMean/
               Mul on an initializer feeding the Conv weight; both exports are unoptimized
               since both exporters fold it otherwise) -> AvgPool(2) -> ReLU -> Flatten ->
               Linear.
``vgg_tiny``   input [N,3,16,16]: avg-pool-before-ReLU VGG-ish net, 4 bias-free convs (8-16
               wide, FP first, binary 2-4, exact alpha*sign per tensor) -> binary Linear -> ReLU
               -> FP Linear.

The script checks every file with ``onnx.checker`` and onnxruntime against torch and prints the
op types each file contains. A failing exporter is reported (with its error text) and the other
files are still written; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 3


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def exact_binary(w: torch.Tensor, *, per_channel: bool) -> torch.Tensor:
    """Return ``alpha * sign(w)`` (``sign(0) = +1``) with every value exactly ``+-alpha`` in fp32.

    ``alpha = mean|w|`` per tensor, or per output channel (dim 0) when ``per_channel``.
    """
    wn = w.detach().cpu().numpy().astype(np.float32)
    if per_channel:
        alpha = np.abs(wn).reshape(wn.shape[0], -1).mean(axis=1, dtype=np.float64)
        alpha = alpha.astype(np.float32).reshape((-1,) + (1,) * (wn.ndim - 1))
    else:
        alpha = np.asarray(np.abs(wn).mean(dtype=np.float64), dtype=np.float32)
    a = np.broadcast_to(alpha, wn.shape)
    wb = np.where(wn >= 0, a, -a).astype(np.float32)
    if not np.all(np.abs(wb) == a):
        raise AssertionError("binarized weights are not exactly +-alpha")
    return torch.from_numpy(wb)


def he_init(module: nn.Module) -> None:
    """He-normal (fan-in, ReLU gain) init of every Conv2d/Linear weight, so activations stay O(1).

    PyTorch's default init shrinks activations layer by layer (outputs ~1e-3 after a few binary
    layers), which would make absolute-tolerance comparisons in tests meaningless.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")


class MixedNet(nn.Module):
    """Conv+BN+ReLU, odd-size ceil-mode MaxPool, padded AvgPool, binary conv, GAP, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=0, bias=True)  # 12 -> 10
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 2, padding=0, bias=True)  # 10 -> 9
        self.pool1 = nn.MaxPool2d(2, ceil_mode=True)  # 9 -> 5
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)  # binary, per-channel alpha
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1)  # 5 -> 3 (count_include_pad)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(16, 7, bias=True)
        he_init(self)
        with torch.no_grad():
            c = self.bn1.num_features
            self.bn1.running_mean.copy_(torch.randn(c) * 0.5)
            self.bn1.running_var.copy_(torch.rand(c) * 1.5 + 0.25)
            gamma = torch.rand(c) + 0.5
            gamma[::3] *= -1  # some negative gammas: BN flips the sign of those channels
            self.bn1.weight.copy_(gamma)
            self.bn1.bias.copy_(torch.randn(c) * 0.2)
            self.conv3.weight.copy_(exact_binary(self.conv3.weight, per_channel=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N,7] for a [N,3,12,12] batch."""
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool1(torch.relu(self.conv2(x)))
        x = torch.relu(self.pool2(self.conv3(x)))
        x = torch.flatten(self.gap(x), 1)
        return self.fc(self.drop(x))


class SignScaleConv(nn.Module):
    """Bias-free conv; its weight ``sign(w) * mean|w|`` (per out channel) is built in forward."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(cout, cin, 3, 3) * (2.0 / (cin * 9)) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve (3x3, pad 1) with the on-the-fly binarized weight."""
        w = torch.sign(self.w) * self.w.abs().mean(dim=(1, 2, 3), keepdim=True)
        return nn.functional.conv2d(x, w, None, 1, 1)


class SignScaleNet(nn.Module):
    """FP conv -> ReLU -> SignScaleConv -> AvgPool(2) -> ReLU -> Flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = SignScaleConv(8, 8)
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=False)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N,5] for a [N,3,8,8] batch."""
        x = torch.relu(self.conv1(x))
        x = torch.relu(nn.functional.avg_pool2d(self.conv2(x), 2))
        return self.fc(torch.flatten(x, 1))


class VggTiny(nn.Module):
    """Avg-pool-before-ReLU VGG-ish net with exact binary middle layers, no biases."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)  # FP
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)  # binary, pool 16 -> 8
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, bias=False)  # binary
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1, bias=False)  # binary, pool 8 -> 4
        self.fc1 = nn.Linear(16 * 4 * 4, 32, bias=False)  # binary
        self.fc2 = nn.Linear(32, 10, bias=False)  # FP
        he_init(self)
        with torch.no_grad():
            for layer in (self.conv2, self.conv3, self.conv4, self.fc1):
                layer.weight.copy_(exact_binary(layer.weight, per_channel=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N,10] for a [N,3,16,16] batch."""
        x = torch.relu(self.conv1(x))
        x = torch.relu(nn.functional.avg_pool2d(self.conv2(x), 2))
        x = torch.relu(self.conv3(x))
        x = torch.relu(nn.functional.avg_pool2d(self.conv4(x), 2))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


#: name -> (constructor, input shape without batch, seed)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "mixed": (MixedNet, (3, 12, 12), 1),
    "signscale": (SignScaleNet, (3, 8, 8), 2),
    "vgg_tiny": (VggTiny, (3, 16, 16), 3),
}

#: (file stem, model name, exporter, optimize): ``optimize`` is ``do_constant_folding`` for the
#: classic exporter and ``optimize`` (onnxscript graph optimizer) for the dynamo exporter.
#: signscale is exported unoptimized by both, else the Sign/Abs/ReduceMean/Mul weight pattern
#: is folded into a constant; ``mixed_noopt`` is the raw dynamo graph (it keeps the
#: BatchNormalization node that both optimizing exports fold into the preceding Conv).
FIXTURES: tuple[tuple[str, str, str, bool], ...] = (
    ("torch_classic_mixed", "mixed", "classic", True),
    ("torch_dynamo_mixed", "mixed", "dynamo", True),
    ("torch_dynamo_mixed_noopt", "mixed", "dynamo", False),
    ("torch_classic_signscale", "signscale", "classic", False),
    ("torch_dynamo_signscale", "signscale", "dynamo", False),
    ("torch_classic_vgg_tiny", "vgg_tiny", "classic", True),
    ("torch_dynamo_vgg_tiny", "vgg_tiny", "dynamo", True),
)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_classic(model: nn.Module, x: torch.Tensor, path: Path, *, fold: bool) -> None:
    """TorchScript-based export (``dynamo=False``), opset 13, dynamic batch, one file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript-based export"
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            opset_version=13,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            do_constant_folding=fold,
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


def export_dynamo(model: nn.Module, x: torch.Tensor, path: Path, *, optimize: bool) -> None:
    """``torch.export``-based export (``dynamo=True``), opset 18, dynamic batch, one file."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    prog = torch.onnx.export(
        model,
        (x,),
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: batch},),
        external_data=False,
        optimize=optimize,
        verbose=False,
    )
    if prog is None:
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    proto = prog.model_proto
    strip_stack_traces(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def op_types(model: onnx.ModelProto) -> dict[str, int]:
    """Count of each op type in the main graph (plus ``fn:<name>`` for local functions)."""
    counts = Counter(n.op_type for n in model.graph.node)
    counts.update(f"fn:{f.name}" for f in model.functions)
    return dict(counts)


def verify(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Check the ONNX file and return the max |ORT - torch| on ``x`` (batch 3) and batch 1."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise AssertionError(f"{path} is not self-contained")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    got1 = sess.run(None, {"input": x[:1]})[0]
    err = max(float(np.abs(got - y).max()), float(np.abs(got1 - y[:1]).max()))
    if not np.allclose(got, y, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{path}: onnxruntime differs from torch by {err:g}")
    return err


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: export every model with both exporters and verify them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "tests" / "fixtures")
    parser.add_argument("--only", choices=sorted(MODELS), action="append", help="subset")
    args = parser.parse_args(argv)
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)

    failures: list[str] = []
    names = args.only or list(MODELS)
    for name in names:
        ctor, shape, seed = MODELS[name]
        torch.manual_seed(seed)
        model = ctor().eval()
        gen = torch.Generator().manual_seed(1000 + seed)
        x = torch.randn((BATCH, *shape), generator=gen, dtype=torch.float32)
        with torch.no_grad():
            y = model(x).numpy().astype(np.float32)
        xn = x.numpy()
        for stem, model_name, exporter, optimize in FIXTURES:
            if model_name != name:
                continue
            path = out_dir / f"{stem}.onnx"
            try:
                if exporter == "classic":
                    export_classic(model, x, path, fold=optimize)
                else:
                    export_dynamo(model, x, path, optimize=optimize)
                err = verify(path, xn, y)
            except Exception as exc:
                text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                failures.append(f"{stem}: {text}")
                print(f"FAILED {stem}:\n{traceback.format_exc()}", file=sys.stderr)
                path.unlink(missing_ok=True)
                continue
            np.savez_compressed(out_dir / f"{stem}.npz", x=xn, y=y)
            ops = op_types(onnx.load(str(path)))
            print(f"{stem}.onnx ({path.stat().st_size:,} B, max|ORT-torch|={err:.2g}): {ops}")
            if name == "signscale" and "Sign" not in ops:
                failures.append(f"{stem}: the {exporter} exporter folded the Sign pattern")
    print(json.dumps({"failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
