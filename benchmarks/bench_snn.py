"""Throughput of the numpy spiking runtime on the paper's VGG-15 (CIFAR shape), against the
machine's own GEMM rates measured in the same run.

    python benchmarks/bench_snn.py [--timesteps 32] [--batch 16] [--json]

Reports image·timesteps per second; the float32 and int8 GEMM rates of this machine (numpy's
BLAS and onnxruntime's MLAS, on an 8192×2304×256 product); the network's multiply-accumulates
per image·timestep; the float32 dense roofline = best float32 GEMM rate ÷ MACs per
image·timestep (the throughput of a perfect dense float32 implementation); and the ratio of
the achieved throughput to that roofline. The issue's target is ≥ 2×.

Weights are random binary (examples/vgg15.py); calibration uses 32 random images, so accuracy
is meaningless here — only speed is measured. Spike rates are reported because the
simulator's work does not depend on them (dense products).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.compiler.report import layer_table
from bsnnc.runtime.datasets import Images
from bsnnc.runtime.simulate import metrics, run_chunks

ROOT = Path(__file__).resolve().parents[1]


def gemm_rates(m: int = 8192, k: int = 2304, n: int = 256, reps: int = 5) -> dict[str, float]:
    """Multiply-accumulates per second of float32 and int8 GEMMs (best of ``reps``)."""
    rng = np.random.default_rng(0)
    a8 = (rng.random((m, k)) < 0.1).astype(np.uint8)
    b8 = np.where(rng.random((k, n)) < 0.5, 1, -1).astype(np.int8)
    a32, b32 = a8.astype(np.float32), b8.astype(np.float32)

    def best(fn: object) -> float:
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t)
        return m * k * n / min(times)

    def session(op: str, x_type: int, y_type: int, w: np.ndarray) -> ort.InferenceSession:
        g = helper.make_graph(
            [helper.make_node(op, ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", x_type, None)],
            [helper.make_tensor_value_info("y", y_type, None)],
            [numpy_helper.from_array(w, "w")],
        )
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    f32 = session("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, b32)
    i8 = session("MatMulInteger", TensorProto.UINT8, TensorProto.INT32, b8)
    return {
        "numpy_f32": best(lambda: a32 @ b32),
        "onnxruntime_f32": best(lambda: f32.run(None, {"x": a32})),
        "onnxruntime_int8": best(lambda: i8.run(None, {"x": a8})),
    }


def build_vgg(path: Path) -> None:
    spec = importlib.util.spec_from_file_location("vgg15", ROOT / "examples" / "vgg15.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["vgg15"] = mod
    spec.loader.exec_module(mod)
    onnx.save(mod.build_vgg15("cifar100", seed=0), path)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="timed simulation runs (best is kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vgg15_cifar100.onnx"
        build_vgg(path)
        g0 = import_onnx(path)
    rng = np.random.default_rng(0)
    calib = Images("random", rng.standard_normal((32, 3, 32, 32)).astype(np.float32), None)
    g = run_pipeline(g0, PassOptions(calib=lambda: calib)).graph
    x = Images("random", rng.standard_normal((args.batch, 3, 32, 32)).astype(np.float32), None)
    T = args.timesteps
    run_chunks(g, Images("warm", x.x[:2], None), 2, 2, None)  # build sessions, warm caches
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        chunks = run_chunks(g, x, T, args.batch, None)
        best = min(best, time.perf_counter() - t0)
    m = metrics(g, x, chunks, T, None)
    macs = sum(r.ops for r in layer_table(g))
    rates = gemm_rates()
    f32 = max(rates["numpy_f32"], rates["onnxruntime_f32"])
    throughput = args.batch * T / best
    roofline = f32 / macs
    report = {
        "model": "VGG-15 CIFAR-100 shape, random binary weights",
        "timesteps": T,
        "batch": args.batch,
        "seconds": best,
        "image_timesteps_per_second": throughput,
        "macs_per_image_timestep": macs,
        "gemm_macs_per_second": rates,
        "int8_over_f32_gemm": rates["onnxruntime_int8"] / f32,
        "f32_roofline_image_timesteps_per_second": roofline,
        "ratio_to_f32_roofline": throughput / roofline,
        "mean_spike_rate": float(np.mean(list(m["spike_rates"].values()))),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"VGG-15 CIFAR shape, T={T}, batch {args.batch}: {best:.2f} s")
        print(f"  throughput              {throughput:10.1f} image·timesteps/s")
        print(f"  MACs per image·timestep {macs / 1e6:10.1f} M")
        for k, v in rates.items():
            print(f"  GEMM {k:<18} {v / 1e9:10.1f} GMAC/s")
        print(f"  f32 dense roofline      {roofline:10.1f} image·timesteps/s")
        print(f"  ratio to f32 roofline   {throughput / roofline:10.2f}×  (target ≥ 2×)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
