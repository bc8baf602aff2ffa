"""``bsnnc simulate`` on the paper's VGG-15 against SpikingJelly and this machine's rooflines,
all measured in the same run.

    python benchmarks/bench_snn.py [--shape cifar100|imagenet] [--timesteps T]
        [--batch B [B ...]] [--repeats 2] [--no-peer] [--json]

Defaults: CIFAR-100 shape at T = 32 with 16 and 64 images; ImageNet shape at T = 8 with 8.
VGG-15 with random binary weights (``examples/vgg15.py``, seed 0) is compiled with
``bsnnc compile`` (32 random calibration images, seed 0); the test images are random too
(seed 1), so accuracy means nothing here: only speed is measured.

Reported, per case:

* ``bsnnc``: the whole ``bsnnc simulate ART --images X.npz -T T --no-ann --json`` process
  (start-up, loading, simulation, report), best of ``--repeats`` runs, as image·timesteps per
  second (B·T / wall seconds), its peak RSS, and the simulator's own timer;
* the peer: SpikingJelly 2.0.0's fx ``Converter`` with ``RateCodingRecipe`` on the same
  weights, multi-step mode (its fastest CPU configuration) and the single-step loop
  (``benchmarks/peer_spikingjelly.py``; needs ``pip install -e '.[peers]'``, else skipped);
* the ratios bsnnc ÷ peer;
* rooflines of this machine measured in the same run (before and after the cases, the best
  kept) on an 8192×2304×256 product: float32
  GEMM (numpy's BLAS, onnxruntime), int8 GEMM (onnxruntime MatMulInteger) and the bit-packed
  AND-popcount kernel of ``runtime/bitkernels.py`` on dense random spikes (no silent word to
  skip); each as image·timesteps per second for the network's multiply-accumulates, and the
  whole command's fraction of it;
* the binary layers' own rate: their multiply-accumulates (dense-equivalent, as the roofline
  counts them) over the wall seconds ``simulate --profile`` reports for them (packing their
  input spikes, the product, the input spike counts, and the IF layer fused into a
  convolution that alone feeds it), and its fraction of the packed roofline — what issue 10
  asks to be ≥ 50 %.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bsnnc.compiler.report import layer_table
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.bitkernels import _conv, _geometry, _pack, pack_weights
from bsnnc.runtime.threads import blas_single_threaded

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]

import peer_spikingjelly as peer  # noqa: E402
from rss import MEASURED  # noqa: E402

SHAPES = {"cifar100": ((3, 32, 32), 32, [16, 64]), "imagenet": ((3, 224, 224), 8, [8])}


def _best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_rates(m: int = 8192, k: int = 2304, n: int = 256, reps: int = 5) -> dict[str, float]:
    """Multiply-accumulates per second of float32, int8 and bit-packed products (best of
    ``reps``)."""
    rng = np.random.default_rng(0)
    a8 = (rng.random((m, k)) < 0.1).astype(np.uint8)
    b8 = np.where(rng.random((k, n)) < 0.5, 1, -1).astype(np.int8)
    a32, b32 = a8.astype(np.float32), b8.astype(np.float32)

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
        options = ort.SessionOptions()
        # its idle threads would otherwise spin on both cores after each run and slow down
        # whatever is timed next (the packed kernel's rate varied 768-2,366 GMAC/s so)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )

    f32 = session("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, b32)
    i8 = session("MatMulInteger", TensorProto.UINT8, TensorProto.INT32, b8)
    dense = (rng.random((m, k)) < 0.5).astype(np.uint8).reshape(m, 1, 1, k)
    packed, wt = _pack(dense, True, 0, 0, 1, 1), pack_weights(b8.T)
    out = np.empty((m, 1, 1, n), np.float32)
    one = _geometry((1, 1), (1, 1), (1, 1))
    macs = m * k * n
    with blas_single_threaded():  # OpenBLAS's spinning threads would slow the packed kernel
        packed_rate = macs / _best(lambda: _conv(packed, wt, one, out), reps)
    return {
        "numpy_f32": macs / _best(lambda: a32 @ b32, reps),
        "onnxruntime_f32": macs / _best(lambda: f32.run(None, {"x": a32}), reps),
        "onnxruntime_int8": macs / _best(lambda: i8.run(None, {"x": a8}), reps),
        "packed_and_popcount": packed_rate,
    }


def _run(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of ``python -m bsnnc argv``, run as the child of
    a small process (``tests/rss.py``: this process's own high-water mark would count)."""
    with tempfile.TemporaryDirectory() as d:
        rss = Path(d) / "peak-rss"
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", MEASURED, str(rss), *argv], capture_output=True, text=True
        )
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"bsnnc {' '.join(argv)} failed:\n{proc.stderr}")
        return wall, int(rss.read_text()) * 1024, proc.stdout


def _build(shape_name: str, d: Path) -> tuple[onnx.ModelProto, Path, float, int]:
    """The model, its compiled artifact, and the compile's wall seconds and peak RSS."""
    model = peer.build_model(shape_name)
    path = d / "vgg15.onnx"
    big = model.ByteSize() > 1 << 30
    onnx.save(model, path, save_as_external_data=big, location="vgg15.onnx.data")
    shape = SHAPES[shape_name][0]
    calib = d / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32))
    tiles = d / "vgg15.tiles"
    wall, rss, _ = _run(["compile", str(path), "--calib", str(calib), "-o", str(tiles)])
    return model, tiles, wall, rss


def _simulate(
    tiles: Path, d: Path, shape: tuple[int, ...], T: int, batch: int, reps: int
) -> dict[str, Any]:
    """``bsnnc simulate`` on ``batch`` random images (seed 1), best of ``reps`` runs."""
    x = np.random.default_rng(1).standard_normal((batch, *shape)).astype(np.float32)
    images = d / f"x{batch}.npz"
    np.savez(images, x=x)
    argv = [
        "simulate", str(tiles), "--images", str(images), "-T", str(T), "--no-ann", "--json",
        "--profile",
    ]  # fmt: skip
    runs = [_run(argv) for _ in range(reps)]
    wall = min(r[0] for r in runs)
    reports = [json.loads(r[2]) for r in runs]
    report = min(reports, key=lambda r: float(r["seconds"]))
    return {
        "T": T,
        "batch": batch,
        "wall_seconds": wall,
        "image_timesteps_per_second": batch * T / wall,
        "simulator_seconds": report["seconds"],
        "layer_seconds": report["layer_seconds"],
        "peak_rss_mib": max(r[1] for r in runs) / 2**20,
        "mean_spike_rate": float(np.mean(list(report["spike_rates"].values()))),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cifar100")
    ap.add_argument("--timesteps", type=int)
    ap.add_argument("--batch", type=int, nargs="+")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per case (best kept)")
    ap.add_argument("--no-peer", action="store_true", help="skip SpikingJelly")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    shape, t_default, b_default = SHAPES[args.shape]
    T, batches = args.timesteps or t_default, args.batch or b_default
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model, tiles, compile_s, compile_rss = _build(args.shape, d)
        table = layer_table(read_artifact(tiles).graph)
        macs = sum(r.ops for r in table)
        binary = {r.value: r.ops for r in table if r.binary}
        before = gemm_rates()
        cases = [_simulate(tiles, d, shape, T, b, args.repeats) for b in batches]
    # the best of the rooflines measured before and after the cases (a busy moment on a
    # shared machine lowers one measurement, never raises it)
    after = gemm_rates()
    rates = {k: max(v, after[k]) for k, v in before.items()}
    for c in cases:
        for name, rate in rates.items():
            c[f"fraction_of_{name}_roofline"] = c["image_timesteps_per_second"] * macs / rate
        seconds = sum(float(c["layer_seconds"][v]["seconds"]) for v in binary)
        c["binary_layer_seconds"] = seconds
        c["binary_layer_macs_per_second"] = sum(binary.values()) * c["batch"] * c["T"] / seconds
        c["binary_layers_fraction_of_packed_roofline"] = (
            c["binary_layer_macs_per_second"] / rates["packed_and_popcount"]
        )
    peer_rows: list[dict[str, Any]] = []
    if not args.no_peer and importlib.util.find_spec("spikingjelly") is not None:
        peer_rows = peer.spikingjelly_rates(model, shape, [(T, b) for b in batches])
        for c, p in zip(cases, peer_rows, strict=True):
            c["spikingjelly_multi_step"] = p["multi_step_image_timesteps_per_second"]
            c["spikingjelly_single_step"] = p["single_step_image_timesteps_per_second"]
            c["over_spikingjelly_multi_step"] = (
                c["image_timesteps_per_second"] / c["spikingjelly_multi_step"]
            )
            c["over_spikingjelly_single_step"] = (
                c["image_timesteps_per_second"] / c["spikingjelly_single_step"]
            )
    report = {
        "model": f"VGG-15 {args.shape} shape, random binary weights",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "macs_per_image_timestep": macs,
        "compile_seconds": compile_s,
        "compile_peak_rss_mib": compile_rss / 2**20,
        "roofline_macs_per_second": rates,
        "spikingjelly": peer_rows[0]["spikingjelly"] if peer_rows else None,
        "cases": cases,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']}, {macs / 1e6:.1f} M MACs per image·timestep ({report['date']})")
    print(f"  compile: {compile_s:.1f} s, peak RSS {compile_rss / 2**20:,.0f} MiB")
    for name, rate in rates.items():
        print(f"  roofline {name:<20} {rate / 1e9:8.1f} GMAC/s = {rate / macs:9.1f} image·T/s")
    for c in cases:
        print(
            f"  T={c['T']} batch {c['batch']}: bsnnc simulate "
            f"{c['image_timesteps_per_second']:8.1f} image·T/s "
            f"(whole command {c['wall_seconds']:.2f} s, simulator "
            f"{c['simulator_seconds']:.2f} s, peak RSS {c['peak_rss_mib']:,.0f} MiB)"
        )
        print(
            f"      of the packed roofline {c['fraction_of_packed_and_popcount_roofline']:.0%}, "
            f"of int8 {c['fraction_of_onnxruntime_int8_roofline']:.0%}"
        )
        print(
            f"      binary layers {c['binary_layer_macs_per_second'] / 1e9:,.0f} GMAC/s in "
            f"{c['binary_layer_seconds']:.2f} s = "
            f"{c['binary_layers_fraction_of_packed_roofline']:.0%} of the packed roofline"
        )
        if "spikingjelly_multi_step" in c:
            print(
                f"      SpikingJelly multi-step {c['spikingjelly_multi_step']:8.1f} image·T/s "
                f"({c['over_spikingjelly_multi_step']:.2f}×), single-step "
                f"{c['spikingjelly_single_step']:8.1f} ({c['over_spikingjelly_single_step']:.2f}×)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
