"""The tile simulator's cost against the numpy SNN reference, measured in the same run.

    python benchmarks/bench_tilesim.py [--timesteps 32] [--images 16]

Compiles VGG-15 (CIFAR-100 shape, random binary weights; 64 random calibration images) to a
.tiles artifact, then simulates the same images with both backends and reports both times,
their ratio (issue 4's budget: about 2×) and whether the spikes are identical.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from bsnnc.backends.rram.cost import Counters
from bsnnc.backends.rram.sim import TileSimulator
from bsnnc.compiler.cli import main as bsnnc
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import Images
from bsnnc.runtime.simulate import metrics, run_chunks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    import vgg15  # examples/vgg15.py

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        model, calib, tiles = Path(d) / "vgg.onnx", Path(d) / "calib.npz", Path(d) / "vgg.tiles"
        onnx.save(vgg15.build_vgg15("cifar100", seed=0), model)
        np.savez(calib, x=rng.standard_normal((64, 3, 32, 32)).astype(np.float32))
        if bsnnc(["compile", str(model), "--calib", str(calib), "-o", str(tiles)]) != 0:
            return 1
        art = read_artifact(tiles)
        sim = TileSimulator(art, str(tiles))
    g, T = art.graph, args.timesteps
    x = Images("random", rng.standard_normal((args.images, 3, 32, 32)).astype(np.float32), None)
    warm = Images("warm", x.x[:1], None)  # load the compiled kernels before timing
    run_chunks(g, warm, 2, 1, None)
    run_chunks(g, warm, 2, 1, None, runner=lambda a, t: sim.run(a, t, Counters.zeros(t)))
    t0 = time.perf_counter()
    ref = metrics(g, x, run_chunks(g, x, T, args.images, None), T, None)
    t_ref = time.perf_counter() - t0
    c = Counters.zeros(T)
    t0 = time.perf_counter()
    got = metrics(
        g, x, run_chunks(g, x, T, args.images, None, runner=lambda a, t: sim.run(a, t, c)), T, None
    )
    t_sim = time.perf_counter() - t0
    print(f"VGG-15 CIFAR shape, T={T}, {args.images} images")
    print(f"  numpy reference   {t_ref:8.2f} s")
    print(f"  tile simulator    {t_sim:8.2f} s   ({t_sim / t_ref:.2f}× the reference; budget ~2×)")
    print(f"  identical spikes  {got['spike_digest'] == ref['spike_digest']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
