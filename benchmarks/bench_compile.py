"""Time and peak memory of ``bsnnc compile`` on the paper's VGG-15 at ImageNet shape.

    python benchmarks/bench_compile.py [--calib-images 80] [--keep DIR]

Builds the model with random binary weights (~122 M parameters, 486 MB of external data),
writes 80 random 3×224×224 calibration images (the paper calibrated ImageNet on 80), and runs
the whole default pipeline — import, conversion, calibration (percentile 99.9), artifact —
in a child process under ``/usr/bin/time -v``. Reports wall time and maximum resident set
size; issue 4's budget is 60 s and 1.5 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


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
    mb = int(rss.group(1)) / 1024
    print(f"bsnnc compile VGG-15 ImageNet shape, {args.calib_images} calibration images")
    print(f"  wall time        {wall.group(1)}   (budget 60 s)")
    print(f"  peak memory      {mb:,.0f} MB     (budget 1,536 MB)")
    print(f"  artifact         {(d / 'vgg15_imagenet.tiles').stat().st_size / 1e6:,.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
