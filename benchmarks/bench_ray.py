"""Per-shard overhead of ``bsnnc simulate --executor ray`` and the projected wall time of a
large evaluation on a cluster.

    python benchmarks/bench_ray.py [--artifact A.tiles --images I] [-T 64] [--shards 2,4,8,16]
                                   [--project-images 50000 --project-T 128]

Needs the ``ray`` extra. Starts one local Ray instance with this machine's CPUs, then (every
run with ``--no-ann``: the spiking evaluation alone; the ANN accuracy is a one-step pass):

1. runs the artifact (default: the embedded digits model on its 450 test images) as one local
   process (``--executor local``, kernels on every core) — the reference JSON;
2. runs it with ``--executor ray --shards S`` for each S, checks that every field of the JSON
   but the timings equals the local run's, and reports the wall time, the shards' own
   simulation seconds (one CPU each), and fits CPU-seconds = wall · CPUs = a + W/r + o·S by
   least squares over the runs (W the image·timesteps, r one core's rate measured as
   W / Σ shard seconds): o is the **per-shard overhead** in CPU-seconds (scheduling, the
   task's reading of the artifact and its images, the ANN pass of its images, chunk start-up),
   a / CPUs the fixed cost of a run (counting the images, the merge);
3. projects the wall time of ``--project-images`` images at ``--project-T`` steps on N nodes
   of C cores with one shard per core: W / (N·C·r) + o + a / CPUs — run it on the artifact
   the projection is about (``--artifact`` VGG-15 ImageNet: see ``bench_compile.py --keep``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bsnnc.compiler.cli import main as bsnnc

TIMING = ("seconds", "image_timesteps_per_second", "executor")


def _simulate(argv: list[str]) -> tuple[dict[str, Any], float]:
    """``bsnnc simulate argv --json`` in this process: (the JSON, wall seconds)."""
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = bsnnc(["simulate", *argv, "--json"])
    wall = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"bsnnc simulate {' '.join(argv)} exited {code}")
    result: dict[str, Any] = json.loads(out.getvalue())
    return result, wall


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--artifact", type=Path, help="a .tiles artifact (default: digits)")
    ap.add_argument("--images", default="digits", help="its images (default: digits)")
    ap.add_argument("--limit", type=int, help="the first N images")
    ap.add_argument("-T", "--timesteps", type=int, default=64)
    ap.add_argument("--shards", default="2,4,8,16", help="shard counts to time")
    ap.add_argument("--project-images", type=int, default=50_000)
    ap.add_argument("--project-T", type=int, default=128)
    args = ap.parse_args()
    import ray

    tmp = tempfile.TemporaryDirectory()
    art = args.artifact
    if art is None:
        art = Path(tmp.name) / "digits.tiles"
        with contextlib.redirect_stderr(io.StringIO()):
            assert bsnnc(["compile", "digits", "-o", str(art)]) == 0
    run = [str(art), "--images", args.images, "-T", str(args.timesteps), "--no-ann"]
    run += ["--limit", str(args.limit)] if args.limit else []
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        _simulate([*run, "--executor", "ray", "--shards", str(cpus)])  # workers warm up
        local, local_wall = _simulate(run)
        work = local["images"] * args.timesteps
        print(f"machine: {cpus} CPUs; {local['images']} images × T = {args.timesteps}")
        print(f"local process: {local_wall:.2f} s wall, {local['seconds']:.2f} s simulating")
        print("shards  wall s  Σ shard s  image·T/s per core  same JSON")
        runs = []
        for shards in (int(v) for v in args.shards.split(",")):
            got, wall = _simulate([*run, "--executor", "ray", "--shards", str(shards)])
            same = all(got[k] == local[k] for k in local if k not in TIMING)
            shard_s = sum(got["executor"]["seconds_per_shard"])
            runs.append((shards, wall, shard_s))
            rate = work / shard_s
            print(f"{shards:6d}  {wall:6.2f}  {shard_s:9.2f}  {rate:18.1f}  {same}")
    finally:
        ray.shutdown()
    r = work / min(s for _, _, s in runs)  # the least start-up per image
    # CPU-seconds beyond the images' own: a + o·S
    shards_x = np.array([float(s) for s, _, _ in runs])
    extra = np.array([wall * cpus - work / r for _, wall, _ in runs])
    o, a = np.polyfit(shards_x, extra, 1)
    print(f"\nper-shard overhead o = {o:.3f} CPU-s; fixed per run a / CPUs = {a / cpus:.2f} s")
    w = args.project_images * args.project_T
    print(
        f"projection: {args.project_images:,} images × T = {args.project_T} = {w:,} "
        f"image·timesteps at r = {r:.1f} per core, one shard per core"
    )
    print("nodes × cores  wall")
    for nodes, cores in [(1, cpus), (1, 32), (8, 32), (32, 32), (128, 32)]:
        seconds = w / (nodes * cores * r) + max(o, 0.0) + max(a, 0.0) / cpus
        print(f"{nodes:5d} × {cores:<5d}  {_human(seconds)}")
    return 0


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


if __name__ == "__main__":
    raise SystemExit(main())
