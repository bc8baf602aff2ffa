"""Calibration: statistics of the ANN activations at every IF layer, for threshold balancing.

For IF layer l the calibration finds λ_l, the activation that maps to the maximum firing rate:
the ``p``-th percentile (numpy's linear interpolation; p = 100 is the maximum) of

* ``activations``: every activation value of the layer over all calibration images, zeros
  included — what the authors' code does (computed exactly from a running top-K, so memory
  stays at (1 − p/100) of the activations);
* ``image-max``: each image's maximum activation — the paper's wording.

With ``channel`` granularity the same is done per output channel.

The ANN runs in float64 and λ is then rounded to the nearest float32. BLAS kernels sum in
different orders on different CPUs (OpenBLAS's Haswell vs SkylakeX kernels, say); in float64
this moves an activation by ~1e-16 relative, and λ lands on the same float32 (grid 6e-8)
unless it sits within that distance of a rounding midpoint (odds ~1e-9 per layer): the
thresholds and golden files do not depend on the machine, and nothing in the process's BLAS
setup has to be pinned.

Speed (VGG-15 at ImageNet shape, 80 images: 1.24 T multiply-accumulates). The ANN runs in
stages (:mod:`bsnnc.runtime.staged`), each on as many images as its memory allows (the
dense layers' weights are converted to float64 once for 64 images, not once per image), and
3×3 stride-1 layers of ≥ 16 M multiply-accumulates per image run as Winograd F(4×4, 3×3)
(:mod:`bsnnc.runtime.winograd`: 4× fewer products) when they add up to enough work to pay
for numba's start-up (:func:`bsnnc.runtime.ann.kernels_for`). Winograd rounds differently from the
direct convolution, by ~1e-14 of the output's scale: the odds that λ's float32 rounding
notices are ~1e-7 per λ (a layer has one, or one per channel), and on every zoo model the
thresholds are the same bits either way (``tests/test_winograd.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from bsnnc.ir.graph import Graph, Node
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import Images


@dataclass
class _TopK:
    """The K largest of a stream of values, per row (channel); exact order statistics."""

    k: int
    rows: int
    top: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def add(self, values: np.ndarray) -> None:
        """Add values of shape [rows, m]."""
        merged = values if self.top.size == 0 else np.concatenate([self.top, values], axis=1)
        if merged.shape[1] > self.k:
            merged = np.partition(merged, merged.shape[1] - self.k, axis=1)[:, -self.k :]
        self.top = np.ascontiguousarray(merged)


def percentile_from_top(top: np.ndarray, n: int, p: float) -> np.ndarray:
    """np.percentile(all n values, p) per row, from each row's ``top`` (its K largest values)."""
    s = np.sort(top, axis=1).astype(np.float64)
    k = s.shape[1]
    r = p / 100.0 * (n - 1)
    lo, hi = math.floor(r), math.ceil(r)
    a, b = s[:, lo - (n - k)], s[:, hi - (n - k)]
    return np.asarray(a + (r - lo) * (b - a))


def to_float32_grid(v: np.ndarray) -> np.ndarray:
    """``v`` rounded to the nearest float32, as float64."""
    return np.asarray(v, np.float64).astype(np.float32).astype(np.float64)


def _channels_first(x: np.ndarray, channel: bool) -> np.ndarray:
    """[N, C, ...] → [C, N·...] (channel) or [1, N·C·...]."""
    if channel:
        return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    return x.reshape(1, -1)


@dataclass
class LayerStat:
    """Calibration result of one IF layer."""

    node: str
    loc: str
    lam: np.ndarray  # [1] (layer) or [C] (channel)
    maximum: np.ndarray


class Calibrator:
    """Streams batches through the ANN reference and accumulates the statistic per IF layer."""

    def __init__(self, g: Graph, n_images: int, p: float, statistic: str, channel: bool) -> None:
        self.g, self.p, self.statistic, self.channel = g, p, statistic, channel
        self.ifs: list[Node] = [n for n in g.nodes if n.op == "if"]
        self.n_images = n_images
        self.tops: dict[str, _TopK] = {}
        self.image_max: dict[str, list[np.ndarray]] = {n.result: [] for n in self.ifs}
        self.maximum: dict[str, np.ndarray] = {}
        for n in self.ifs:
            rows = int(n.type.shape[1] or 1) if channel else 1
            per_row = n.type.numel_per_sample() // rows
            total = n_images * per_row
            k = total - math.floor(p / 100.0 * (total - 1)) + 1
            self.tops[n.result] = _TopK(min(k, total), rows)

    def add(self, x: np.ndarray) -> None:
        """One batch of images, run in one piece."""
        names = [n.result for n in self.ifs]
        acts = run_ann(self.g, x, keep=names, dtype=np.float64)
        for name in names:
            self.observe(name, acts[name])

    def observe(self, name: str, a: np.ndarray) -> None:
        """The ANN value ``name`` of a batch of images (float64); values other than the IF
        layers' are ignored."""
        if name not in self.image_max:
            return
        if self.statistic == "activations":
            rows = _channels_first(a, self.channel)
            m = rows.max(axis=1)
            self.tops[name].add(rows)
        else:
            per_image = (
                a.reshape(a.shape[0], a.shape[1], -1).max(axis=2)
                if self.channel
                else a.reshape(a.shape[0], -1).max(axis=1, keepdims=True)
            )
            self.image_max[name].append(per_image)
            m = per_image.max(axis=0)  # the batch's maximum: one pass over the values, not two
        self.maximum[name] = np.maximum(self.maximum.get(name, m), m)

    def result(self) -> list[LayerStat]:
        """λ per IF layer (never 0: a silent layer falls back to its maximum, then to 1)."""
        out = []
        for n in self.ifs:
            if self.statistic == "activations":
                rows = self.tops[n.result].rows
                per_row = n.type.numel_per_sample() // rows
                lam = percentile_from_top(self.tops[n.result].top, self.n_images * per_row, self.p)
            else:
                maxima = np.concatenate(self.image_max[n.result]).astype(np.float64)
                lam = np.percentile(maxima, self.p, axis=0)
            mx = to_float32_grid(self.maximum[n.result])
            lam = to_float32_grid(np.where(lam > 0, lam, np.where(mx > 0, mx, 1.0)))
            out.append(LayerStat(n.result, n.loc or "", np.atleast_1d(lam), mx))
        return out


def batches(images: Images, batch: int) -> Iterator[np.ndarray]:
    """The images in chunks of ``batch``."""
    for s in range(0, len(images), batch):
        yield images.x[s : s + batch]
