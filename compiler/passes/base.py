"""Pass base class, pass options and context, the pass manager.

A pass is a pure function (Graph, PassContext) → Graph with a kebab-case name: the context
carries the explicit options (reset mode, percentile, calibration images) and collects facts
(calibration statistics) and notes (what was folded) for the report and the artifact. The
manager verifies the graph after every pass and can hand each intermediate graph to a dump
callback (``--dump-ir-after``, ``--dump-dir``) and time each pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.verifier import verify
from bsnnc.runtime.datasets import Images


@dataclass
class PassOptions:
    """Explicit options of the conversion passes (``bsnnc compile --help`` documents them)."""

    #: IF reset mode: ``subtract`` (v -= θ) or ``zero`` (v = 0).
    reset: str = "subtract"
    #: percentile of the calibration statistic that maps to the maximum firing rate; 100 = max.
    percentile: float = 99.7
    #: ``layer`` (one threshold scale per layer) or ``channel`` (one per output channel).
    granularity: str = "layer"
    #: ``activations``: the percentile over all activation values (the authors' code);
    #: ``image-max``: the percentile over each image's maximum activation (the paper's text).
    statistic: str = "activations"
    #: calibration images, loaded on first use.
    calib: Callable[[], Images] | None = None
    #: images per ANN batch during calibration (at most; memory bounds it too).
    calib_batch: int = 64
    #: hardware configuration: a preset name or a .json/.toml file.
    hw: str = "rram-128"
    #: pack partly filled blocks of different layers into shared arrays.
    pack: bool = False
    #: full-precision layers: ``digital`` (no arrays) or ``bitsliced`` (8-bit weight slices).
    fp_layers: str = "digital"
    #: up to this many times the unduplicated arrays may hold copies of bottleneck layers.
    duplicate: float = 1.0


@dataclass
class PassContext:
    """Options in, facts and notes out."""

    options: PassOptions = field(default_factory=PassOptions)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Pass:
    """A named graph rewrite."""

    name: str
    summary: str
    run: Callable[[Graph, PassContext], Graph]


DumpFn = Callable[[int, str, Graph], None]


@dataclass
class PassManager:
    """Runs passes in order, verifying after each; records wall time per pass."""

    passes: Sequence[Pass]
    dump: DumpFn | None = None
    ctx: PassContext = field(default_factory=PassContext)
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, g: Graph, first_index: int = 1) -> Graph:
        """Apply every pass; ``dump(i, name, graph)`` is called after each one."""
        for i, p in enumerate(self.passes, start=first_index):
            t0 = time.perf_counter()
            g = p.run(g, self.ctx)
            verify(g)
            self.timings.append((p.name, time.perf_counter() - t0))
            if self.dump is not None:
                self.dump(i, p.name, g)
        return g


def resolve(names: Sequence[str], registry: dict[str, Pass]) -> list[Pass]:
    """Look passes up by name; an unknown name is a usage error listing the known ones."""
    out = []
    for name in names:
        if name not in registry:
            known = ", ".join(sorted(registry))
            raise BsnncError(f"unknown pass '{name}'; known passes: {known}")
        out.append(registry[name])
    return out
