"""Simulation driver: runs a spiking graph over an image set in memory-bounded chunks and
computes the metrics.

Metrics (T timesteps, N images):

* accuracy per timestep: ``mean_n [argmax V_n[t] = y_n]`` for t = 1..T;
* spike rate of an IF layer: spikes / (neurons · Σ_n steps_n), where steps_n is the number of
  steps image n ran (T, or its exit step under early exit) — the mean firing probability per
  step actually simulated;
* IFR of a binary layer's input (the paper): spikes arriving over the window / input neurons,
  averaged over images;
* normalized #OPS (the paper): ``Σ_l IFR_l·OPS_l / Σ_l OPS_l`` over binary layers, with
  ``OPS_l`` the ANN operation count (conv ``nIP·kH·kW·nOP·oH·oW``, linear ``iS·oS``); 1.0 is the
  work of one ANN pass;
* early exit at V: an image stops at the first step where ``max_k V[t, k] > V`` (else at T);
  its prediction and its spikes (hence its #OPS) are counted up to that step. Spikes at step t
  depend only on steps ≤ t, so this equals stopping the simulation there;
* the spike digest: sha256 over, per image in order, the sha256 of every IF layer's spike
  count per neuron over the window — equal whenever two runs produce the same spikes,
  whatever the batch size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.ops import Trait, has_trait, is_binary_layer, layer_ops
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import Images
from bsnnc.runtime.snn import SnnRuntime, SnnTrace, add_seconds

Progress = Callable[[int], None]


@dataclass
class Chunks:
    """Per-image results gathered chunk by chunk."""

    preds: list[np.ndarray] = field(default_factory=list)  # [T, n] argmax per step
    exit_step: list[np.ndarray] = field(default_factory=list)  # [n], 1-based
    spikes: dict[str, list[np.ndarray]] = field(default_factory=dict)  # IF → [T, n]
    inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)  # binary → [T, n]
    image_digests: list[bytes] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # node → wall seconds

    def extend(self, other: Chunks) -> None:
        """Append the results of the images that follow (another shard of the same run)."""
        self.preds += other.preds
        self.exit_step += other.exit_step
        for k, v in other.spikes.items():
            self.spikes.setdefault(k, []).extend(v)
        for k, v in other.inputs.items():
            self.inputs.setdefault(k, []).extend(v)
        self.image_digests += other.image_digests
        self.seconds = add_seconds(self.seconds, other.seconds)


#: the most a chunk of images should hold: beyond it larger chunks run no faster (measured
#: 2026-12-02: digits at --batch 4 ran 1.3× faster than at 64, VGG-15 alike at 1 and 16) and
#: only cost memory
WORKING_SET = 8 << 20


def step_bytes(g: Graph) -> int:
    """Bytes one image needs for one timestep at the busiest node: its input and output (4
    bytes per value) plus, for a full-precision weighted layer, its patch matrix — positions ×
    kh·kw·C values, 16 bytes each (float64 patches of a float64 copy of the input); a binary
    layer's bit-packed input adds 1 bit per input value (rounded up: 1 byte)."""
    nodes = g.node_map()
    peak = 0
    for n in g.nodes:
        ins = n.value_operands()
        x = nodes[ins[0]].type.numel_per_sample() if ins else 0
        out = n.type.numel_per_sample()
        scratch = 0
        if has_trait(n.op, Trait.WEIGHTED):
            w = g.constants[n.const_operands()[0]].type.shape
            k = int(np.prod([int(d or 1) for d in w[1:]]))
            positions = out // max(int(w[0] or 1), 1)
            scratch = x if is_binary_layer(g, n) else positions * k * 16
        peak = max(peak, 4 * (x + out) + scratch)
    return peak


def bytes_per_image(g: Graph, T: int, per_step: int = 0) -> int:
    """A rough peak of memory per image over T steps: T × (:func:`step_bytes` + ``per_step``,
    what a backend keeps besides the values, e.g. the tile simulator's event counts), plus
    every IF layer's float64 membranes (kept across time windows)."""
    membranes = sum(n.type.numel_per_sample() for n in g.nodes if n.op == "if")
    return int(T * (step_bytes(g) + per_step) + 8 * membranes)


def check_fits(g: Graph, T: int, max_memory: int, per_step: int = 0) -> None:
    """Refuse a run whose single image needs more than ``max_memory`` bytes over ``T`` steps
    (by :func:`bytes_per_image`)."""
    need = bytes_per_image(g, T, per_step)
    if need > max_memory:
        raise BsnncError(
            f"one image at T={T} needs about {need / 2**20:,.0f} MiB, more than --max-memory "
            f"({max_memory / 2**20:,.0f} MiB): raise --max-memory or lower -T"
        )


def plan(g: Graph, T: int, batch: int, max_memory: int, per_step: int = 0) -> tuple[int, int]:
    """(images per chunk, timesteps per window) within ``max_memory``: whole runs of T steps
    for as many images as fit; when one image over T steps does not fit, one image at a time
    in windows of as many steps as fit (the runtimes carry the membranes and the readout
    across windows, so the results do not change); when not even one step fits, an error
    that says how much it would take. ``per_step``: see :func:`bytes_per_image`."""
    if bytes_per_image(g, T, per_step) <= max_memory:
        return chunk_size(g, T, batch, max_memory, per_step), T
    step = bytes_per_image(g, 2, per_step) - bytes_per_image(g, 1, per_step)
    fixed = bytes_per_image(g, 1, per_step) - step
    window = (max_memory - fixed) // step if step else T
    if window < 1:
        check_fits(g, 1, max_memory, per_step)
    return 1, int(min(window, T))


def chunk_size(g: Graph, T: int, batch: int, max_memory: int, per_step: int = 0) -> int:
    """Images per chunk: at most ``batch``, within ``max_memory`` bytes and, when more than one
    image fits, within :data:`WORKING_SET` (results never depend on the chunk size)."""
    need = max(bytes_per_image(g, T, per_step), 1)
    return max(1, min(batch, max_memory // need, WORKING_SET // need))


def exit_steps(final: np.ndarray, threshold: float | None) -> np.ndarray:
    """1-based step at which each image exits (T when it never crosses the threshold)."""
    T = final.shape[0]
    if threshold is None:
        return np.full(final.shape[1], T, np.int64)
    crossed = final.max(axis=2) > threshold  # [T, n]
    first = np.argmax(crossed, axis=0) + 1
    return np.asarray(np.where(crossed.any(axis=0), first, T), dtype=np.int64)


def _digests(trace: SnnTrace) -> list[bytes]:
    n = trace.final.shape[1]
    out = []
    for i in range(n):
        h = hashlib.sha256()
        for layer in sorted(trace.per_neuron, key=_numeric):
            h.update(layer.encode())
            h.update(np.ascontiguousarray(trace.per_neuron[layer][i], dtype="<i4").tobytes())
        out.append(h.digest())
    return out


def _numeric(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)


def run_chunks(
    g: Graph,
    images: Images,
    T: int,
    size: int,
    early_exit: float | None,
    progress: Progress | None = None,
    runner: Callable[[np.ndarray, int], SnnTrace] | None = None,
) -> Chunks:
    """Simulate every image, ``size`` at a time, with ``runner`` (default: the numpy
    reference)."""
    run = runner or SnnRuntime(g).run
    acc = Chunks()
    for s in range(0, len(images), size):
        trace = run(images.x[s : s + size], T)
        acc.preds.append(trace.final.argmax(axis=2).astype(np.int32))
        acc.exit_step.append(exit_steps(trace.final, early_exit))
        for k, v in trace.spikes.items():
            acc.spikes.setdefault(k, []).append(v)
        for k, v in trace.layer_input.items():
            acc.inputs.setdefault(k, []).append(v)
        acc.image_digests.extend(_digests(trace))
        acc.seconds = add_seconds(acc.seconds, trace.seconds)
        if progress is not None:
            progress(trace.final.shape[1])
    return acc


def _upto(counts: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Per image, the sum of counts[t] for t < its exit step."""
    T = counts.shape[0]
    mask = np.arange(1, T + 1)[:, None] <= steps[None, :]
    return np.asarray((counts * mask).sum(axis=0))


def spike_rate(parts: list[np.ndarray], steps: np.ndarray, neurons: int) -> float:
    """Spikes per neuron and simulated step of one IF layer: ``parts`` are its spike counts
    per step and image ([T, n] per chunk), ``steps`` each image's 1-based exit step."""
    counts = np.concatenate(parts, axis=1)
    spikes = int(_upto(counts, steps).sum())
    ran = int(steps.sum())
    return spikes / (neurons * ran) if ran else 0.0


class Labelled(Protocol):
    """What :func:`metrics` reads of the images: their labels (``Images`` is one)."""

    @property
    def y(self) -> np.ndarray | None: ...


def metrics(
    g: Graph, images: Labelled, chunks: Chunks, T: int, early_exit: float | None
) -> dict[str, Any]:
    """Every number ``bsnnc simulate --json`` reports (see the README for the schema).

    The spike rate of an IF layer counts only the steps each image ran (up to its exit step
    under early exit, else T), like #OPS: ``Σ_n Σ_{t ≤ exit_n} spikes_n[t] / (neurons ·
    Σ_n exit_n)``, the mean firing probability per neuron and step actually simulated.
    Without early exit that is ``spikes / (neurons · T · N)``."""
    nodes = g.node_map()
    preds = np.concatenate(chunks.preds, axis=1)  # [T, N]
    steps = np.concatenate(chunks.exit_step)
    n_img = preds.shape[1]
    final_pred = preds[steps - 1, np.arange(n_img)]
    out: dict[str, Any] = {"images": n_img, "timesteps": T, "predictions": final_pred.tolist()}
    if images.y is not None:
        curve = (preds == images.y[None, :]).mean(axis=1)
        out["accuracy_per_timestep"] = [float(a) for a in curve]
        out["final_accuracy"] = float(np.mean(final_pred == images.y))
    out["spike_rates"] = {
        _label(nodes[k]): spike_rate(parts, steps, nodes[k].type.numel_per_sample())
        for k, parts in chunks.spikes.items()
    }
    ifr, ops = {}, {}
    for k, parts in chunks.inputs.items():
        counts = np.concatenate(parts, axis=1)
        x = nodes[nodes[k].value_operands()[0]]
        ifr[_label(nodes[k])] = float(_upto(counts, steps).mean() / x.type.numel_per_sample())
        ops[_label(nodes[k])] = layer_ops(g, nodes[k])
    out["ifr"] = ifr
    out["layer_ops"] = ops
    total_ops = sum(ops.values())
    out["normalized_ops"] = sum(ifr[k] * ops[k] for k in ops) / total_ops if total_ops else 0.0
    digest = hashlib.sha256(b"".join(chunks.image_digests)).hexdigest()
    out["spike_digest"] = digest
    if early_exit is not None:
        out["early_exit"] = early_exit
        out["mean_exit_step"] = float(steps.mean())
        out["exit_step_histogram"] = np.bincount(steps, minlength=T + 1)[1:].tolist()
    return out


def _label(n: Any) -> str:
    return f"%{n.result}" + (f" {n.loc}" if n.loc else "")


def ann_accuracy(g: Graph, images: Images, batch: int = 256) -> tuple[float | None, np.ndarray]:
    """Accuracy and predictions of the graph read as an ANN (``if`` = relu(x)/θ)."""
    preds = []
    for s in range(0, len(images), batch):
        logits = run_ann(g, images.x[s : s + batch])[g.outputs[0]]
        preds.append(logits.argmax(axis=1))
    p = np.concatenate(preds)
    acc = float(np.mean(p == images.y)) if images.y is not None else None
    return acc, p


def conversion_summary(out: dict[str, Any], ann_acc: float | None) -> None:
    """Adds ``ann_accuracy``, ``conversion_loss`` and ``first_timestep_within_1pt``."""
    out["ann_accuracy"] = ann_acc
    curve = out.get("accuracy_per_timestep")
    if ann_acc is None or curve is None:
        return
    out["conversion_loss"] = ann_acc - curve[-1]
    within = [t + 1 for t, a in enumerate(curve) if a >= ann_acc - 0.01]
    out["first_timestep_within_1pt"] = within[0] if within else None
