"""Time and peak memory of ``bsnnc compile`` on the paper's VGG-15 at ImageNet shape.

    python benchmarks/bench_compile.py [--calib-images 80] [--keep DIR]

Builds the model with random binary weights (~122 M parameters, 486 MB of external data),
writes 80 random 3×224×224 calibration images (the paper calibrated ImageNet on 80), and runs
the whole default pipeline — import, conversion, calibration (percentile 99.9), artifact —
in a child process under ``/usr/bin/time -v``. Reports wall time and maximum resident set
size (issue 10's budget: 25 s and 1.0 GB on a 2-core machine), and a floor measured in the
same run: calibration runs the ANN in float64 (thresholds must not depend on the BLAS kernel),
so every calibration image costs at least the float64 products of the network's layers as
calibration computes them — a large 3×3 layer as Winograd F(4×4, 3×3)'s 36 products
[tiles × C] by [C × O], the others as one im2col product (OH·OW × C·kH·kW by C·kH·kW × O) —
timed here as numpy ``@`` (BLAS, both cores) on each shape for one image, summed and
multiplied by the images.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bsnnc.ir.graph import Graph
from bsnnc.runtime.ann import node_winograd_macs
from bsnnc.runtime.artifact import read_artifact

ROOT = Path(__file__).resolve().parents[1]
#: a timed product has at least this many rows
ROWS = 512


def float64_floor(g: Graph, images: int) -> tuple[float, float, float]:
    """(seconds, MACs done, MACs of the direct convolutions) of the float64 products of
    ``images`` images through the weighted layers of ``g`` as calibration computes them: a
    Winograd layer as 36 products [tiles, C] × [C, O] (tiles = ⌈OH/4⌉·⌈OW/4⌉ per image), the
    others as one im2col product; each shape timed with numpy's BLAS on both cores (best of
    two) for as many images as make :data:`ROWS` rows (calibration multiplies many images'
    rows at once)."""
    rng = np.random.default_rng(0)
    seconds = macs = direct = 0.0
    for n in g.nodes:
        if n.op not in ("conv2d", "dense"):
            continue
        w = g.constants[n.const_operands()[0]].type.shape
        o, k = int(w[0] or 1), math.prod(int(d or 1) for d in w[1:])
        conv = n.op == "conv2d"
        oh, ow = (int(n.type.shape[2] or 1), int(n.type.shape[3] or 1)) if conv else (1, 1)
        direct += oh * ow * k * o * images
        if conv and node_winograd_macs(g, n):
            m, k, times = -(-oh // 4) * -(-ow // 4), int(w[1] or 1), 36
        else:
            m, times = oh * ow, 1
        per_call = -(-ROWS // m)  # images per product, as calibration batches them
        a, b = rng.standard_normal((m * per_call, k)), rng.standard_normal((k, o))
        best = np.inf
        for _ in range(2):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        seconds += best / per_call * times * images
        macs += m * k * o * times * images
    return seconds, macs, direct


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--calib-images", type=int, default=80)
    ap.add_argument("--keep", type=Path, help="build into DIR and keep the files")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    d = args.keep or Path(tmp.name)
    d.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.spec_from_file_location("vgg15", ROOT / "examples" / "vgg15.py")
    assert spec is not None and spec.loader is not None
    vgg = importlib.util.module_from_spec(spec)
    sys.modules["vgg15"] = vgg
    spec.loader.exec_module(vgg)
    model = d / "vgg15_imagenet.onnx"
    vgg.save_model(vgg.build_vgg15("imagenet", seed=0), model, external_data=True)
    calib = d / "calib.npz"
    x = np.random.default_rng(0).standard_normal((args.calib_images, 3, 224, 224), dtype=np.float32)
    np.savez(calib, x=x)
    del x
    cmd = [
        "/usr/bin/time", "-v", sys.executable, "-m", "bsnnc", "compile", str(model),
        "--calib", str(calib), "--calib-limit", str(args.calib_images), "--percentile", "99.9",
        "-o", str(d / "vgg15_imagenet.tiles"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        return proc.returncode
    wall = re.search(r"Elapsed \(wall clock\) time .*: (.+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    assert wall is not None and rss is not None
    mib = int(rss.group(1)) / 1024
    floor, macs, direct = float64_floor(
        read_artifact(d / "vgg15_imagenet.tiles").graph, args.calib_images
    )
    print(f"bsnnc compile VGG-15 ImageNet shape, {args.calib_images} calibration images")
    print(f"  wall time        {wall.group(1)}   (budget 25 s)")
    print(f"  peak memory      {mib:,.0f} MiB    (budget 1,000 MB = 954 MiB)")
    print(
        f"  float64 floor    {floor:.1f} s: calibration's products, {macs / 1e12:.2f} T MACs "
        f"(Winograd; {direct / 1e12:.2f} T direct) at {macs / floor / 1e9:.0f} GMAC/s "
        "(BLAS, both cores, this machine, this run)"
    )
    print(f"  artifact         {(d / 'vgg15_imagenet.tiles').stat().st_size / 1e6:,.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
