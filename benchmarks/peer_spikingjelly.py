"""Peer timing: the same VGG-15 converted to a spiking network by SpikingJelly (CPU, torch).

    python benchmarks/peer_spikingjelly.py [--shape cifar100|imagenet] [--timesteps 32]
        [--batch 16 64] [--threads 2] [--json]

Needs torch and spikingjelly (2.0.0 was measured), which bsnnc itself does not depend on:
``pip install -e '.[peers]'`` (the extra pins torch 2.13.0). ``benchmarks/bench_snn.py`` calls
:func:`spikingjelly_rates` in the same run as ``bsnnc simulate``.

The ONNX model (``examples/vgg15.py``) is rebuilt as a plain ``torch.nn.Sequential`` straight
from its initializers (Conv / BatchNormalization / AveragePool / MaxPool / Relu / Flatten /
Gemm in graph order; no onnx2torch), checked against onnxruntime, and converted with
SpikingJelly's fx ``Converter`` and ``RateCodingRecipe`` (ReLU -> scaler, soft-reset
``IFNode`` with threshold 1, scaler; layer-wise ``"Max"`` thresholds from ``calib`` random
standard-normal images, ``np.random.default_rng(0)``). The recipe already swaps every
stateless torch module (Conv2d, AvgPool2d, Flatten, Linear, ...) for its ``layer.*`` twin, so
``functional.set_step_mode(net, "m")`` makes the whole converted graph multi-step.

What is measured, per ``(T, batch)`` case, on ``batch`` random standard-normal images
(``np.random.default_rng(1)``) presented as a constant input current for ``T`` timesteps,
with ``torch.set_num_threads(threads)`` under ``torch.inference_mode()``, after one warm-up
run, best of ``repeats`` timed runs (each starting with ``functional.reset_net``):

* multi-step: one forward of the input repeated along a leading time axis ``[T, B, C, H, W]``
  with every module in step mode ``"m"`` (convolutions then see ``T*B`` images at once);
* single-step: ``T`` forwards of ``[B, C, H, W]`` in step mode ``"s"``, summing the outputs.

The figure reported is image·timesteps per second, ``B * T / seconds``. Weights are random
(binary middle layers), so predictions mean nothing; the warm-up run also records each spiking
layer's mean firing rate and how often the SNN's prediction (time-averaged output) agrees with
the ANN's, as a sanity check that the converted network spikes at all.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import itertools
import json
import os
import resource
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
#: ``--shape`` -> (dataset name of examples/vgg15.py, input shape ``(C, H, W)``).
SHAPES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "cifar100": ("cifar100", (3, 32, 32)),
    "imagenet": ("imagenet", (3, 224, 224)),
}
#: Default ``(T, batches)`` per ``--shape``.
DEFAULT_CASES: dict[str, tuple[int, list[int]]] = {
    "cifar100": (32, [16, 64]),
    "imagenet": (8, [8]),
}


def _sj(name: str) -> Any:
    """``spikingjelly.activation_based.<name>``, imported lazily (the package is untyped)."""
    return importlib.import_module(f"spikingjelly.activation_based.{name}")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pool_args(node: onnx.NodeProto) -> dict[str, Any]:
    """Keyword arguments of ``nn.AvgPool2d`` / ``nn.MaxPool2d`` for an ONNX 2-D pool node."""
    a = _attrs(node)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NotImplementedError(f"{node.name}: auto_pad is not supported")
    k = list(a["kernel_shape"])
    pads = list(a.get("pads", [0] * 2 * len(k)))
    if len(k) != 2 or pads[:2] != pads[2:] or any(d != 1 for d in a.get("dilations", [1, 1])):
        raise NotImplementedError(f"{node.name}: only symmetric, undilated 2-D pools")
    return {
        "kernel_size": tuple(k),
        "stride": tuple(a.get("strides", [1, 1])),
        "padding": tuple(pads[:2]),
        "ceil_mode": bool(a.get("ceil_mode", 0)),
    }


def onnx_to_torch(model: onnx.ModelProto) -> torch.nn.Sequential:
    """Rebuild a single-input, single-path ONNX CNN as a float32 ``torch.nn.Sequential``.

    Supported nodes, each of which must consume the previous node's output: ``Conv`` (2-D,
    optional bias), ``BatchNormalization`` (inference form), ``Relu``, ``AveragePool``,
    ``MaxPool``, ``Flatten`` (``axis=1``) and ``Gemm`` (``transA=0``, ``alpha=beta=1``, optional
    bias). Module names are the ONNX node names (dots replaced), weights are copied from the
    initializers. Every ``Relu`` gets its own ``nn.ReLU`` so SpikingJelly's converter puts one
    spiking layer in its place.
    """
    import torch
    from torch import nn

    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in inits]
    if len(graph_inputs) != 1 or len(g.output) != 1:
        raise NotImplementedError("expected one graph input and one graph output")

    def param(name: str) -> nn.Parameter:
        return nn.Parameter(torch.from_numpy(np.array(inits[name], np.float32, copy=True)), False)

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    cur = graph_inputs[0]
    for i, node in enumerate(g.node):
        if node.input[0] != cur:
            raise NotImplementedError(f"{node.name}: the graph is not a single chain")
        a = _attrs(node)
        op = node.op_type
        mod: nn.Module
        if op == "Conv":
            w = inits[node.input[1]]
            if w.ndim != 4 or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise NotImplementedError(f"{node.name}: only explicit-pad 2-D Conv")
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise NotImplementedError(f"{node.name}: asymmetric pads")
            has_bias = len(node.input) > 2 and bool(node.input[2])
            groups = int(a.get("group", 1))
            mod = nn.Conv2d(
                w.shape[1] * groups,
                w.shape[0],
                kernel_size=tuple(w.shape[2:]),
                stride=tuple(a.get("strides", [1, 1])),
                padding=tuple(pads[:2]),
                dilation=tuple(a.get("dilations", [1, 1])),
                groups=groups,
                bias=has_bias,
            )
            mod.weight = param(node.input[1])
            if has_bias:
                mod.bias = param(node.input[2])
        elif op == "BatchNormalization":
            scale, bias, mean, var = (inits[n] for n in node.input[1:5])
            mod = nn.BatchNorm2d(scale.shape[0], eps=float(a.get("epsilon", 1e-5)))
            mod.weight = param(node.input[1])
            mod.bias = param(node.input[2])
            mod.running_mean = torch.from_numpy(np.array(mean, np.float32, copy=True))
            mod.running_var = torch.from_numpy(np.array(var, np.float32, copy=True))
            del bias
        elif op == "Relu":
            mod = nn.ReLU()
        elif op == "AveragePool":
            if a.get("count_include_pad", 0) and any(_pool_args(node)["padding"]):
                raise NotImplementedError(f"{node.name}: count_include_pad=1 with padding")
            mod = nn.AvgPool2d(**_pool_args(node), count_include_pad=False)
        elif op == "MaxPool":
            mod = nn.MaxPool2d(**_pool_args(node))
        elif op == "Flatten":
            if int(a.get("axis", 1)) != 1:
                raise NotImplementedError(f"{node.name}: Flatten axis must be 1")
            mod = nn.Flatten(1)
        elif op == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise NotImplementedError(f"{node.name}: only Gemm(transA=0, alpha=beta=1)")
            w = inits[node.input[1]]
            if not a.get("transB", 0):
                w = w.T
            has_bias = len(node.input) > 2 and bool(node.input[2])
            mod = nn.Linear(w.shape[1], w.shape[0], bias=has_bias)
            w = np.array(w, np.float32, order="C", copy=True)
            mod.weight = nn.Parameter(torch.from_numpy(w), False)
            if has_bias:
                mod.bias = param(node.input[2])
        else:
            raise NotImplementedError(f"ONNX op {op} ({node.name}) is not supported")
        name = (node.name or f"{op.lower()}{i}").replace(".", "_")
        layers[name] = mod
        cur = node.output[0]
    if cur != g.output[0].name:
        raise NotImplementedError("the last node does not produce the graph output")
    return nn.Sequential(layers).eval()


def max_rel_error_vs_onnxruntime(
    model: onnx.ModelProto,
    net: torch.nn.Module,
    shape: tuple[int, int, int],
    n: int = 4,
    seed: int = 2,
) -> float:
    """``max|torch - ort| / max|ort|`` of the ANN outputs on ``n`` random standard-normal images."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).standard_normal((n, *shape), dtype=np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.inference_mode():
        out = net(torch.from_numpy(x)).numpy()
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def convert_to_snn(
    ann: torch.nn.Module, calib_images: np.ndarray, mode: str | float = "Max"
) -> torch.nn.Module:
    """SpikingJelly's fx ``Converter`` with ``RateCodingRecipe(dataloader, mode)``.

    The recipe fuses Conv-BN, records each ReLU's activation scale (``mode``: ``"Max"``, a
    percentile string such as ``"99.9%"``, or a fraction of the max) on ``calib_images`` (one
    batch), replaces every ReLU by ``VoltageScaler(1/s) -> IFNode(v_reset=None) ->
    VoltageScaler(s)`` and wraps the stateless modules as step-mode ``layer.*`` modules.
    """
    import copy

    import torch

    ann2snn = _sj("ann2snn")
    recipe = ann2snn.RateCodingRecipe(dataloader=[torch.from_numpy(calib_images)], mode=mode)
    snn: torch.nn.Module = ann2snn.Converter(recipe=recipe, device="cpu").convert(
        copy.deepcopy(ann)
    )
    snn.eval()
    return snn


def _spiking_layers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    neuron = _sj("neuron")
    return {n: m for n, m in net.named_modules() if isinstance(m, neuron.BaseNode)}


def _check_multi_step_ready(net: torch.nn.Module) -> None:
    """Raise unless every node of the converted fx graph is a step-mode aware module.

    A plain torch module or function in the graph would see ``[T, B, ...]`` in multi-step mode
    and mix the time and batch axes (e.g. ``Flatten(1)`` or ``Linear`` after it).
    """
    base = _sj("base")
    for node in net.graph.nodes:  # type: ignore[union-attr]
        if node.op in ("call_function", "call_method"):
            raise RuntimeError(f"fx node {node.name} ({node.target}) is not step-mode aware")
        if node.op == "call_module":
            m = net.get_submodule(node.target)
            if not isinstance(m, base.StepModule):
                raise RuntimeError(f"module {node.target} ({type(m).__name__}) has no step mode")


def _time_multi(net: torch.nn.Module, x: torch.Tensor, T: int) -> tuple[float, torch.Tensor]:
    import torch

    functional = _sj("functional")
    functional.reset_net(net)
    t0 = time.perf_counter()
    out = net(x.unsqueeze(0).repeat(T, *([1] * x.dim())))
    dt = time.perf_counter() - t0
    assert isinstance(out, torch.Tensor) and out.shape[:2] == (T, x.shape[0])
    return dt, out.mean(0)


def _time_single(net: torch.nn.Module, x: torch.Tensor, T: int) -> tuple[float, torch.Tensor]:
    functional = _sj("functional")
    functional.reset_net(net)
    t0 = time.perf_counter()
    acc = net(x)
    for _ in range(T - 1):
        acc = acc + net(x)
    dt = time.perf_counter() - t0
    return dt, acc / T


def spikingjelly_rates(
    model: onnx.ModelProto,
    shape: tuple[int, int, int],
    cases: list[tuple[int, int]],
    calib: int = 32,
    *,
    threads: int = 2,
    repeats: int = 2,
    mode: str | float = "Max",
    single_step: bool = True,
) -> list[dict[str, Any]]:
    """Time SpikingJelly's rate-coded conversion of ``model`` on CPU; one dict per case.

    ``shape`` is the ``(C, H, W)`` input shape; ``cases`` are ``(T, batch)`` pairs. Measured per
    case (see the module docstring): seconds of one multi-step forward over ``[T, B, C, H, W]``
    and of ``T`` single-step forwards over ``[B, C, H, W]``, each the best of ``repeats`` after
    one warm-up, with ``torch.set_num_threads(threads)``; reported as image·timesteps per
    second ``B * T / seconds``. Conversion and calibration (``calib`` images) are not timed
    into the rates but reported as ``conversion_seconds``. Each dict also holds the versions,
    thread count, the 1-minute load average before the case, the process's peak RSS, the
    ANN's error against onnxruntime, per-spiking-layer mean firing rates of the warm-up run,
    the fraction of images whose SNN prediction (time-averaged output) matches the ANN's, and
    the largest difference between the multi- and single-step outputs.
    """
    from importlib.metadata import version

    import torch

    functional = _sj("functional")
    torch.set_num_threads(threads)
    sj_version = version("spikingjelly")

    ann = onnx_to_torch(model)
    try:
        ann_rel_err: float | None = max_rel_error_vs_onnxruntime(model, ann, shape)
    except ImportError:
        ann_rel_err = None

    calib_x = np.random.default_rng(0).standard_normal((calib, *shape), dtype=np.float32)
    t0 = time.perf_counter()
    snn = convert_to_snn(ann, calib_x, mode)
    conversion_seconds = time.perf_counter() - t0
    del calib_x
    _check_multi_step_ready(snn)
    spiking = _spiking_layers(snn)

    info: dict[str, Any] = {
        "peer": "spikingjelly",
        "spikingjelly": sj_version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shape": list(shape),
        "calib": calib,
        "calib_mode": mode,
        "converter": f"ann2snn.Converter(RateCodingRecipe(dataloader, mode={mode!r}))",
        "spiking_layers": len(spiking),
        "conversion_seconds": conversion_seconds,
        "ann_max_rel_err_vs_onnxruntime": ann_rel_err,
    }
    results: list[dict[str, Any]] = []
    for T, batch in cases:
        x = torch.from_numpy(
            np.random.default_rng(1).standard_normal((batch, *shape), dtype=np.float32)
        )
        load = os.getloadavg()[0]
        with torch.inference_mode():
            ann_pred = ann(x).argmax(1)

            # Warm-up in multi-step mode, recording each spiking layer's output spikes.
            functional.set_step_mode(snn, "m")
            rates: dict[str, float] = {}
            hooks = [
                m.register_forward_hook(
                    lambda _m, _i, o, n=n, r=rates: r.__setitem__(n, float(o.float().mean()))
                )
                for n, m in spiking.items()
            ]
            _, warm_out = _time_multi(snn, x, T)
            for h in hooks:
                h.remove()
            best_m = min(_time_multi(snn, x, T)[0] for _ in range(repeats))

            row: dict[str, Any] = {
                "T": T,
                "batch": batch,
                "multi_step_image_timesteps_per_second": batch * T / best_m,
                "seconds_multi": best_m,
                "single_step_image_timesteps_per_second": None,
                "seconds_single": None,
            }
            if single_step:
                functional.set_step_mode(snn, "s")
                _, single_out = _time_single(snn, x, T)  # warm-up
                best_s = min(_time_single(snn, x, T)[0] for _ in range(repeats))
                row["single_step_image_timesteps_per_second"] = batch * T / best_s
                row["seconds_single"] = best_s
                row["multi_vs_single_max_abs_diff"] = float((warm_out - single_out).abs().max())
            functional.set_step_mode(snn, "m")
        row.update(info)
        row["loadavg_1min_before"] = load
        row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        row["mean_firing_rate"] = float(np.mean(list(rates.values())))
        row["firing_rates"] = rates
        row["last_spiking_layer_firing_rate"] = rates[list(spiking)[-1]]
        row["agreement_with_ann"] = float((warm_out.argmax(1) == ann_pred).float().mean())
        row["ann_distinct_predictions"] = len(set(ann_pred.tolist()))
        results.append(row)
    return results


def build_model(dataset: str, seed: int = 0) -> onnx.ModelProto:
    """``build_vgg15(dataset, seed=seed)`` from examples/vgg15.py (numpy + onnx only)."""
    spec = importlib.util.spec_from_file_location("vgg15", ROOT / "examples" / "vgg15.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vgg15"] = mod
    spec.loader.exec_module(mod)
    model: onnx.ModelProto = mod.build_vgg15(dataset, seed=seed)
    return model


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print SpikingJelly's image·timesteps/s for the given cases."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cifar100")
    ap.add_argument("--timesteps", type=int, nargs="+", help="T values (default 32; 8 imagenet)")
    ap.add_argument("--batch", type=int, nargs="+", help="batches (default 16 64; 8 imagenet)")
    ap.add_argument("--calib", type=int, default=32, help="calibration images")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs (best is kept)")
    ap.add_argument("--no-single-step", action="store_true", help="time multi-step only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    dataset, shape = SHAPES[args.shape]
    t_default, b_default = DEFAULT_CASES[args.shape]
    cases = list(itertools.product(args.timesteps or [t_default], args.batch or b_default))
    rows = spikingjelly_rates(
        build_model(dataset),
        shape,
        cases,
        args.calib,
        threads=args.threads,
        repeats=args.repeats,
        single_step=not args.no_single_step,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    r0 = rows[0]
    err = r0["ann_max_rel_err_vs_onnxruntime"]
    print(
        f"SpikingJelly {r0['spikingjelly']} (torch {r0['torch']}, {r0['threads']} threads), "
        f"VGG-15 {args.shape} shape {tuple(shape)}; ANN vs onnxruntime rel err "
        + ("n/a" if err is None else f"{err:.1e}")
        + f"; conversion {r0['conversion_seconds']:.1f} s"
    )
    for r in rows:
        single = r["single_step_image_timesteps_per_second"]
        print(
            f"  T={r['T']:<3} batch {r['batch']:<3} multi-step "
            f"{r['multi_step_image_timesteps_per_second']:9.1f} image·timesteps/s "
            f"({r['seconds_multi']:.2f} s)"
            + (
                f", single-step {single:9.1f} image·timesteps/s ({r['seconds_single']:.2f} s)"
                if single is not None
                else ""
            )
        )
        print(
            f"      mean firing rate {r['mean_firing_rate']:.3f} (last layer "
            f"{r['last_spiking_layer_firing_rate']:.3f}); agreement with ANN "
            f"{r['agreement_with_ann']:.0%} ({r['ann_distinct_predictions']} distinct ANN classes)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
