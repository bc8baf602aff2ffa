"""The ANN reference run in stages, each on as many images at a time as its memory allows.

A CNN's activations shrink with depth while its weights grow: VGG-15 at ImageNet shape holds
26 MB per image (float64) after its first layer and 0.2 MB before its first dense layer,
whose weights (103 M) are converted to float64 once per batch. One batch size for the whole
network is set by the widest layer (a few images), so the heavy late layers would see a few
images per call, their weights converted again each time. Here the node sequence is cut into
stages, each with its own batch: the largest number of images whose values in flight fit in
``budget`` bytes, never decreasing along the graph (each stage's batch is a multiple of the
previous one's, so a stage concatenates whole batches of its predecessor). Values that cross
a cut are handed on; every other value is freed after its last reader, and the values the
caller observes are shown to it as they are computed, never kept.

Every ANN kernel treats each image on its own, so the results are those of :func:`run_ann`
on the same images, up to the float64 rounding of BLAS products, whose summation order may
depend on the number of rows — which calibration's float32 rounding of λ absorbs
(:mod:`bsnnc.compiler.calibrate`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from bsnnc.ir.graph import Graph
from bsnnc.runtime.ann import ANN_KERNELS, Kernel, check_input, last_uses, run_nodes

Values = dict[str, np.ndarray]


@dataclass(frozen=True)
class Stage:
    """Nodes ``first`` ≤ i < ``stop``, run on ``batch`` images at a time; ``hand_on``: the
    values that later stages read."""

    first: int
    stop: int
    batch: int
    hand_on: tuple[str, ...]


def node_bytes(g: Graph, itemsize: int = 8) -> list[int]:
    """Per image, the bytes in flight while node i runs: every value alive across it, plus
    twice its operands and result (a kernel's padded or reordered copies)."""
    size = {n.result: n.type.numel_per_sample() * itemsize for n in g.nodes}
    last: dict[str, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.value_operands():
            last[v] = i
    out, live = [], 0
    born: dict[int, list[str]] = {}
    for i, n in enumerate(g.nodes):
        own = size[n.result] + sum(size[v] for v in n.value_operands())
        out.append(live + 2 * own)
        live += size[n.result]
        born.setdefault(last.get(n.result, len(g.nodes)), []).append(n.result)
        live -= sum(size[v] for v in born.pop(i, []))
    return out


def plan_stages(g: Graph, images: int, at_most: int, budget: int, itemsize: int = 8) -> list[Stage]:
    """Cut ``g``'s nodes into stages: node i may run on ``budget // node_bytes[i]`` images
    (at least 1, at most ``min(images, at_most)``); the batch of a node is the least over
    it and every later node, rounded down to a multiple of the previous stage's batch."""
    cap = max(1, min(images, at_most))
    fits = [max(1, min(cap, budget // max(b, 1))) for b in node_bytes(g, itemsize)]
    for i in range(len(fits) - 2, -1, -1):
        fits[i] = min(fits[i], fits[i + 1])
    bounds: list[tuple[int, int, int]] = []
    for i, b in enumerate(fits):
        if bounds:
            prev = bounds[-1][2]
            b = prev * max(1, b // prev)
            if b == prev:
                bounds[-1] = (bounds[-1][0], i + 1, prev)
                continue
        bounds.append((i, i + 1, b))
    last: dict[str, int] = {v: len(g.nodes) for v in g.outputs}
    for i, n in enumerate(g.nodes):
        for v in n.value_operands():
            last[v] = max(last.get(v, i), i)
    made = {n.result: i for i, n in enumerate(g.nodes)}
    return [
        Stage(
            first,
            stop,
            batch,
            tuple(v for v, i in made.items() if i < stop and last.get(v, -1) >= stop),
        )
        for first, stop, batch in bounds
    ]


#: a batch of images in flight between stages: (images, the values handed on)
Batch = tuple[int, Values]


def _merge(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    values = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    return sum(p[0] for p in parts), values


def _run_stage(
    g: Graph,
    stage: Stage,
    upstream: Iterator[Batch],
    frees: dict[int, list[str]],
    observe: Callable[[str, np.ndarray], None],
    kernels: Mapping[str, Kernel],
) -> Iterator[Batch]:
    """``stage`` over the batches of its predecessor, joined ``stage.batch`` images at a time."""
    pending: list[Batch] = []

    def flush() -> Batch:
        images, env = _merge(pending)
        pending.clear()
        run_nodes(g, stage.first, stage.stop, env, frees, observe, kernels)
        return images, {v: env[v] for v in stage.hand_on}

    for part in upstream:
        pending.append(part)
        if sum(p[0] for p in pending) >= stage.batch:
            yield flush()
    if pending:
        yield flush()


def run_staged(
    g: Graph,
    batches: Iterator[np.ndarray],
    stages: list[Stage],
    observe: Callable[[str, np.ndarray], None],
    dtype: type[np.floating] = np.float64,
    kernels: Mapping[str, Kernel] = ANN_KERNELS,
) -> None:
    """Run ``g`` in ``dtype`` on the image batches ``batches`` (each of ``stages[0].batch``
    images, the last one maybe fewer) through ``stages`` (:func:`plan_stages`), calling
    ``observe(name, value)`` for every value as it is computed, a stage's batch at a time,
    with ``kernels`` (e.g. :func:`bsnnc.runtime.ann.kernels_for`)."""

    def source() -> Iterator[Batch]:
        for x in batches:
            name = check_input(g, x)
            if x.shape[0]:
                yield x.shape[0], {name: np.ascontiguousarray(x, dtype=dtype)}

    frees = last_uses(g)  # a value handed on is read after its stage: never freed in it
    flow: Iterator[Batch] = source()
    for stage in stages:
        flow = _run_stage(g, stage, flow, frees, observe, kernels)
    for _ in flow:
        pass
