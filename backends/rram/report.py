"""The crossbar backend's report of a simulation: events per inference, the pipeline's
cycles and latency, energy by component, and the mapping's arrays, bounds and utilization —
the JSON fields ``bsnnc simulate --backend rram`` adds (the CLI only prints them)."""

from __future__ import annotations

import dataclasses
from typing import Any

from bsnnc.backends.rram.cost import COUNT_NAMES, Counters, cycles
from bsnnc.backends.rram.energy import energy_report
from bsnnc.backends.rram.sim import TileSimulator
from bsnnc.ir.graph import Graph


def rram_report(
    sim: TileSimulator, c: Counters, images: int, energy: dict[str, Any]
) -> dict[str, Any]:
    """The tile simulator's numbers: events per inference (averaged over images, up to each
    image's exit step under early exit),
    cycles of the pipeline model, and the mapping's arrays, bounds and utilization."""
    per = {k: float(getattr(c, k).sum()) / images for k in COUNT_NAMES}
    cyc = cycles(c, images)
    mapping = sim.mapping.raw if sim.mapping is not None else {}
    keep = ("arrays", "arrays_bound_per_layer", "arrays_bound_global", "utilization", "bnn_arrays")
    bits = sim.nonideal.adc_bits or sim.hw.adc_bits
    return {
        **per,
        **cyc,
        "critical_layer_name": _stage_name(sim.g, cyc["critical_layer"]),
        **energy_report(per, energy, bits),
        "latency_s": cyc["cycles"] / sim.hw.clock_hz,
        "hw": sim.hw.name,
        "nonideal": dataclasses.asdict(sim.nonideal),
        **{k: mapping[k] for k in keep if k in mapping},
    }


def _stage_name(g: Graph, stage: str | None) -> str | None:
    """A pipeline stage of the cycle model (``%2``, or ``%5.send`` for a layer's spike
    packets) named as the tables name layers: the ONNX node's name (the loc), else ``%2``."""
    if stage is None:
        return None
    value, _, part = stage.removeprefix("%").partition(".")
    node = g.node_map().get(value)
    name = (node.loc if node is not None else "") or f"%{value}"
    return f"{name} ({part})" if part else name
