"""The cost model of the RRAM backend: event counters, the pipeline cycle model, and the
compile-time facts a simulation must agree with (the artifact's ``mapping.json``, decoded by
one typed loader, and the hardware geometry it was mapped for).

Cycle-approximate counters (per timestep and array): driven rows (event-driven: only rows whose
input spiked), MVM reads issued vs skipped (no input row spiked), sense/ADC conversions (one per
block column per issued read), partial-sum additions across row blocks, neuron updates and
spike packets × hops. Cycles per timestep of a layer = the busiest array's issued reads ×
⌈block rows / max_rows_driven⌉ × (columns_per_adc + 1) (row drive, then the multiplexed
conversions); the layers form a pipeline over timesteps, bounded below by Σ_t max_l and above
by Σ_t Σ_l of the per-layer cycles. A ``send`` with hops > 0 is a stage of its own:
hops × ``noc_hop_cycles`` in every step that sends a spike (latency; links are not modelled
as a bandwidth limit). Events are kept per image and timestep while a chunk runs, so that with
early exit each image contributes only the steps before its exit (``Counters.absorb``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bsnnc.backends.rram.hw import HwConfig
from bsnnc.ir.errors import ArtifactError, BsnncError

#: the event counts kept per timestep (fields of :class:`Counters`)
COUNT_NAMES = (
    "row_activations",
    "reads_issued",
    "reads_skipped",
    "conversions",
    "psum_adds",
    "neuron_updates",
    "spike_packets",
    "packet_hops",
    "cell_reads",
)


@dataclass
class Counters:
    """Event counts, summed over images; per-timestep vectors have length T."""

    T: int
    row_activations: np.ndarray
    reads_issued: np.ndarray
    reads_skipped: np.ndarray
    conversions: np.ndarray
    psum_adds: np.ndarray
    neuron_updates: np.ndarray
    spike_packets: np.ndarray
    packet_hops: np.ndarray
    cell_reads: np.ndarray
    #: per layer: [T] cycles of its busiest array, summed over images
    layer_cycles: dict[str, np.ndarray] = field(default_factory=dict)
    #: per layer: [T] row activations
    layer_rows: dict[str, np.ndarray] = field(default_factory=dict)

    @staticmethod
    def zeros(T: int) -> Counters:
        zeros: dict[str, Any] = {name: np.zeros(T, np.int64) for name in COUNT_NAMES}
        return Counters(T, **zeros)

    def merge(self, other: Counters) -> None:
        """Adds another run's counts (a shard of the images: every count is a sum over
        images, so the shards' sums are the whole run's)."""
        for name in COUNT_NAMES:
            getattr(self, name)[:] += getattr(other, name)
        for mine, theirs in (
            (self.layer_cycles, other.layer_cycles),
            (self.layer_rows, other.layer_rows),
        ):
            for layer, values in theirs.items():
                _add_at(mine, layer, self.T, 0, values)

    def add_layer_cycles(self, layer: str, cycles: np.ndarray, t0: int = 0) -> None:
        """Adds a layer's busiest-array cycles for the steps t0+1 .. t0+len(cycles)."""
        _add_at(self.layer_cycles, layer, self.T, t0, cycles)

    def absorb(self, ev: Events, steps: np.ndarray, t0: int = 0) -> None:
        """Adds the events of one chunk over the steps t0+1 .. t0+ev.T (a time window; the
        whole run when t0 = 0 and ev.T = T), each image's only for the steps before it exits
        (``steps``: its 1-based exit step, T when it runs to the end)."""
        at = np.arange(t0 + 1, t0 + ev.T + 1)[:, None]
        active = (at <= steps[None, :]).astype(np.int64)
        for name, per_image in ev.counts.items():
            total = getattr(self, name)
            total[t0 : t0 + ev.T] += (per_image * active).sum(axis=1)
        for layer, per_image in ev.rows.items():
            _add_at(self.layer_rows, layer, self.T, t0, (per_image * active).sum(axis=1))
        stages: dict[str, np.ndarray] = {}
        for (layer, _block, _copy), busy in sorted(ev.busy.items()):
            # copies and row blocks work in parallel: the busiest one sets each image's time
            # (per image and step, so that the sum over images does not depend on chunking)
            stage = np.broadcast_to(busy * active, active.shape)
            stages[layer] = np.maximum(stages.get(layer, np.zeros_like(active)), stage)
        for layer, stage in stages.items():
            self.add_layer_cycles(layer, stage.sum(axis=1), t0)


def _add_at(into: dict[str, np.ndarray], key: str, T: int, t0: int, values: np.ndarray) -> None:
    """``into[key][t0 : t0 + len(values)] += values`` (a zero [T] vector when missing)."""
    total = into.setdefault(key, np.zeros(T, np.int64))
    total[t0 : t0 + len(values)] += values


@dataclass
class Events:
    """One chunk's events per timestep and image (each [T, b], or [1, b] when the same at
    every step), before early exit is applied (``Counters.absorb``)."""

    T: int
    b: int
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    #: layer → driven rows
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    #: (layer, row block, copy) → busy cycles of that copy's arrays of that row block
    busy: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)

    #: True while the ``once`` block runs: its events happen at the first step only
    once: bool = False

    def _zeros(self) -> np.ndarray:
        return np.zeros((self.T, self.b), np.int64)

    def _at(self, per_image: np.ndarray | int) -> np.ndarray | int:
        if not self.once:
            return per_image
        first = self._zeros()
        first[0] = np.asarray(per_image).reshape(-1) if np.ndim(per_image) else per_image
        return first

    def add(self, name: str, per_image: np.ndarray | int) -> None:
        """Adds ``per_image`` ([T, b], [1, b] or a scalar per image and step) to a count."""
        self.counts[name] = self.counts.get(name, self._zeros()) + self._at(per_image)

    def add_rows(self, layer: str, per_image: np.ndarray) -> None:
        self.rows[layer] = self.rows.get(layer, self._zeros()) + self._at(per_image)

    def add_busy(self, key: tuple[str, int, int], per_image: np.ndarray) -> None:
        self.busy[key] = self.busy.get(key, self._zeros()) + self._at(per_image)


@dataclass(frozen=True)
class MappingFile:
    """The artifact's ``mapping.json``, decoded once and typed: what the partitioner recorded
    (the report's numbers, the per-block list, the tile placement, the hardware it mapped
    for). ``raw`` keeps the whole document for reports that show it."""

    raw: dict[str, Any]
    #: the hardware configuration recorded at compile time, if any — so an artifact compiled
    #: with a custom ``--hw FILE`` simulates without that file
    hw: HwConfig | None
    #: the accumulator width the partial sums need (0 when not recorded)
    accumulator_bits_needed: int

    def summary(self) -> dict[str, Any]:
        """The report's numbers: everything but the per-block list."""
        return {k: v for k, v in self.raw.items() if k != "blocks"}


def load_mapping(extra: dict[str, bytes], path: str) -> MappingFile | None:
    """The artifact member ``mapping.json`` (``extra``: the artifact's members), or None when
    the artifact has none; malformed JSON or fields are an :class:`ArtifactError` naming
    ``path[mapping.json]``."""
    if "mapping.json" not in extra:
        return None
    where = f"{path}[mapping.json]"
    try:
        data = json.loads(extra["mapping.json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hw = None
    if "hw_config" in data:
        try:
            hw = HwConfig(**data["hw_config"])
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: hw_config is not a hardware configuration ({e})") from e
    needed = data.get("accumulator_bits_needed", 0)
    if isinstance(needed, bool) or not isinstance(needed, int) or needed < 0:
        raise ArtifactError(f"{where}: accumulator_bits_needed must be a non-negative integer")
    return MappingFile(data, hw, needed)


#: what the mapping and the program were built for: a simulation must use the same
GEOMETRY = ("rows", "columns", "rows_per_input", "reference_columns", "arrays_per_tile")


def check_hw(hw: HwConfig, mapping: MappingFile | None, path: str, spec: str) -> None:
    """A hardware configuration given at simulation time (``--hw spec``) may change the
    periphery (clock, ADC, row-drive limit, NoC latency, energy table) but not what the
    mapping (the artifact's mapping.json) depends on, and its accumulators must hold the
    partial sums."""
    compiled = mapping.hw if mapping is not None else None
    for key in GEOMETRY if compiled is not None else ():
        want, got = getattr(compiled, key), getattr(hw, key)
        if want != got:
            raise BsnncError(
                f"--hw {spec}: {key} = {got}, but {path} was compiled for {key} = {want}; "
                f"recompile with --hw {spec}"
            )
    needed = mapping.accumulator_bits_needed if mapping is not None else 0
    if needed > hw.accumulator_bits:
        raise BsnncError(
            f"--hw {spec}: accumulator_bits = {hw.accumulator_bits}, but the partial sums of "
            f"{path} need {needed} bits"
        )


def cycles(c: Counters, images: int) -> dict[str, Any]:
    """The pipeline model: per timestep the layers' cycles (per image, averaged)."""
    layers = sorted(c.layer_cycles)
    if not layers or images == 0:
        return {
            "cycles": 0,
            "cycles_lower_bound": 0,
            "cycles_upper_bound": 0,
            "critical_layer": None,
        }
    per = np.stack([c.layer_cycles[k] for k in layers]) / images  # [L, T]
    fill = float(per[:, 0].sum())
    steady = float(per[:, 1:].max(axis=0).sum())
    lower = float(per.max(axis=0).sum())
    upper = float(per.sum())
    critical = layers[int(np.argmax(per.sum(axis=1)))]
    return {
        "cycles": max(lower, fill + steady),
        "cycles_lower_bound": lower,
        "cycles_upper_bound": upper,
        "critical_layer": f"%{critical}",
    }
