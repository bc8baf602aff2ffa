"""One simulation over a contiguous range of images (a shard), and shards merged into one run.

``bsnnc simulate`` runs one shard over all images in its own process (the local executor) or
many on a Ray cluster (``--executor ray``, :mod:`bsnnc.compiler.ray_executor`). A shard's
result is what the metrics are computed from — per image: predictions per step, exit step,
spikes per step, binary-layer inputs, the spike digest of its counts; per run: the tile
simulator's event counters (sums over images) and per-node seconds — so the merge of shards
``[0, a), [a, b), …`` in image order is exactly a run over ``[0, N)``: lists concatenate,
sums add. Nothing is computed across images before the merge.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bsnnc.backends.rram.cost import Counters
from bsnnc.backends.rram.hw import HwConfig
from bsnnc.backends.rram.sim import NonIdeal, TileSimulator
from bsnnc.ir.graph import Graph
from bsnnc.runtime.artifact import Artifact
from bsnnc.runtime.datasets import Images
from bsnnc.runtime.simulate import Chunks, ann_accuracy, chunk_size, plan, run_chunks
from bsnnc.runtime.snn import SnnRuntime, SnnTrace


@dataclass(frozen=True)
class SimOptions:
    """What every shard of one ``simulate`` run is run with."""

    timesteps: int
    batch: int
    max_memory: int
    early_exit: float | None
    backend: str  # "numpy" or "rram"
    nonideal: NonIdeal = field(default_factory=NonIdeal)
    hw: HwConfig | None = None
    hw_spec: str | None = None
    ann: bool = True


@dataclass
class ShardResult:
    """A shard's per-image results and its sums (see the module docstring)."""

    chunks: Chunks
    counters: Counters | None
    labels: np.ndarray | None
    ann_predictions: np.ndarray | None
    seconds: float
    #: the image set's name (``digits:test``, a path, …)
    name: str = ""


def tile_simulator(art: Artifact, where: str, opts: SimOptions) -> TileSimulator | None:
    """The tile simulator of ``--backend rram`` (None for the numpy reference)."""
    if opts.backend != "rram":
        return None
    return TileSimulator(art, where, opts.hw, nonideal=opts.nonideal, hw_spec=opts.hw_spec)


def runner(
    g: Graph,
    sim: TileSimulator | None,
    counters: Counters,
    early_exit: float | None,
    window: int,
) -> Callable[[np.ndarray, int], SnnTrace]:
    """How one chunk of images is simulated, in time windows of ``window`` steps: the tile
    simulator (counting events), or the numpy reference."""
    if sim is not None:
        tiles = sim
        return lambda x, t: tiles.run(x, t, counters, early_exit, window)
    reference = SnnRuntime(g)
    return lambda x, t: reference.run(x, t, window)


def run_shard(
    g: Graph,
    sim: TileSimulator | None,
    opts: SimOptions,
    images: Images,
    progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Simulate ``images`` (chunked within ``opts.max_memory``), then read them as the ANN
    (unless ``opts.ann`` is off); ``progress`` gets the images of each finished chunk."""
    T = opts.timesteps
    per_step = sim.bytes_per_step() if sim is not None else 0
    size, window = plan(g, T, opts.batch, opts.max_memory, per_step)
    counters = Counters.zeros(T)
    run = runner(g, sim, counters, opts.early_exit, window)
    t0 = time.perf_counter()
    chunks = run_chunks(g, images, T, size, opts.early_exit, progress, run)
    seconds = time.perf_counter() - t0
    ann = None
    if opts.ann:  # one step per image, in chunks of the same budget
        ann = ann_accuracy(g, images, chunk_size(g, 1, opts.batch, opts.max_memory))[1]
    counted = counters if sim is not None else None
    return ShardResult(chunks, counted, images.y, ann, seconds, images.name)


def merge(results: list[ShardResult], T: int) -> ShardResult:
    """The shards of one run, in image order, as one result (their seconds summed)."""
    out = Chunks()
    counters: Counters | None = None
    for r in results:
        out.extend(r.chunks)
        if r.counters is not None:
            counters = counters or Counters.zeros(T)
            counters.merge(r.counters)
    labels = _concat([r.labels for r in results])
    ann = _concat([r.ann_predictions for r in results])
    name = results[0].name if results else ""
    return ShardResult(out, counters, labels, ann, sum(r.seconds for r in results), name)


def _concat(parts: list[np.ndarray | None]) -> np.ndarray | None:
    """The shards' arrays in order; None when a shard has none (e.g. unlabelled images)."""
    arrays = [p for p in parts if p is not None]
    return np.concatenate(arrays) if arrays and len(arrays) == len(parts) else None
