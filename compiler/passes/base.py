"""Pass base types, pass options, and the pass driver.

A pass is a function ``(Graph, PassOptions) → PassResult`` with a kebab-case name: the options
are explicit (reset mode, percentile, calibration images, a progress callback), and the result
carries the new graph, whether it changed, notes of what was folded, and typed products
(the calibration of fold-threshold-normalization). Passes never write into shared state and
never draw anything. :func:`run_passes` verifies the graph after every pass, can hand each
intermediate graph to a dump callback (``--dump-ir-after``, ``--dump-dir``) and times each
pass; it is the one driver the CLI, the tests and the benchmarks use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.verifier import Checked, verify
from bsnnc.runtime.datasets import Images

#: progress of long work inside a pass: ``(what, done, total)``, called with ``done = 0``
#: first and ``done = total`` last. Passes never draw anything themselves: the caller (the
#: CLI's progress bar, a test, a notebook) decides what to show.
ProgressFn = Callable[[str, int, int], None]


def no_progress(what: str, done: int, total: int) -> None:
    """The default :data:`ProgressFn`: report nothing."""


@dataclass
class PassOptions:
    """Explicit options of the conversion passes; the CLI's defaults are these
    (``bsnnc compile --help`` documents them)."""

    #: IF reset mode: ``subtract`` (v -= θ) or ``zero`` (v = 0).
    reset: str = "subtract"
    #: every IF membrane starts at ``v_init``·θ: 0.5, the half-threshold start, reaches the
    #: ANN in a few steps (the embedded digits model: within 1 point at T = 8, 19 from empty
    #: membranes; ``benchmarks/latency_v_init.py``); a multiple of 1/256 in [0, 1]
    #: (:data:`bsnnc.ir.ops.INIT_BITS`).
    v_init: float = 0.5
    #: percentile of the calibration statistic that maps to the maximum firing rate; 100 = max.
    percentile: float = 99.7
    #: ``layer`` (one threshold scale per layer) or ``channel`` (one per output channel).
    granularity: str = "layer"
    #: ``image-max``: the percentile over each image's maximum activation (the paper's text);
    #: ``activations``: the percentile over all activation values (the authors' code).
    statistic: str = "image-max"
    #: calibration images, loaded on first use.
    calib: Callable[[], Images] | None = None
    #: images per ANN batch during calibration (at most; memory bounds it too).
    calib_batch: int = 64
    #: called as long work (calibration) advances.
    progress: ProgressFn = no_progress


@dataclass(frozen=True)
class CalibratedLayer:
    """λ of one IF layer. Keyed by the layer's ``loc`` (its source name, which renaming passes
    keep) and its position among the graph's IF layers, never by a value name."""

    loc: str
    index: int
    lam: tuple[float, ...]
    maximum: tuple[float, ...]
    #: λ = L·Δ of the layer's activation quantizer, not a calibration statistic
    quantizer: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``"from": "quantizer"`` marks a λ taken from a quantizer)."""
        out = {"loc": self.loc, "index": self.index, "lambda": list(self.lam),
               "max": list(self.maximum)}  # fmt: skip
        return {**out, "from": "quantizer"} if self.quantizer else out


@dataclass(frozen=True)
class Calibration:
    """What fold-threshold-normalization calibrated on, and λ per IF layer."""

    images: int
    source: str
    statistic: str
    percentile: float
    granularity: str
    layers: tuple[CalibratedLayer, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the artifact's calibration.json and ``--json`` output)."""
        return {
            "images": self.images,
            "source": self.source,
            "statistic": self.statistic,
            "percentile": self.percentile,
            "granularity": self.granularity,
            "layers": [layer.as_dict() for layer in self.layers],
        }


def signature(g: Graph) -> tuple[object, ...]:
    """What a graph means, cheaply comparable: nodes (result, op, operands, attributes, type,
    loc), constant digests and outputs."""
    nodes = tuple(
        (n.result, n.op, n.operands, tuple(sorted(n.attrs.items())), str(n.type), n.loc)
        for n in g.nodes
    )
    consts = tuple(sorted((k, str(c.type), c.digest) for k, c in g.constants.items()))
    return (g.name, nodes, consts, tuple(g.outputs))


@dataclass
class PassResult:
    """What one pass returns."""

    graph: Graph
    changed: bool
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None

    @staticmethod
    def of(
        before: Graph,
        after: Graph,
        notes: Sequence[str] = (),
        calibration: Calibration | None = None,
    ) -> PassResult:
        """The result of a rewrite from ``before`` to ``after`` (``changed`` compares their
        :func:`signature`)."""
        changed = after is not before and signature(after) != signature(before)
        return PassResult(after, changed, list(notes), calibration)


@dataclass(frozen=True)
class Pass:
    """A named graph rewrite."""

    name: str
    summary: str
    run: Callable[[Graph, PassOptions], PassResult]


DumpFn = Callable[[int, str, Graph], None]


@dataclass(frozen=True)
class PassRecord:
    """How one pass of a pipeline went."""

    name: str
    seconds: float
    changed: bool


@dataclass
class PipelineResult:
    """The final graph of a pipeline, every pass's record, all notes and products."""

    graph: Graph
    passes: list[PassRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    calibration: Calibration | None = None


def run_passes(
    g: Graph,
    passes: Sequence[Pass],
    options: PassOptions | None = None,
    dump: DumpFn | None = None,
    first_index: int = 1,
) -> PipelineResult:
    """Apply ``passes`` in order, verifying after each; ``dump(i, name, graph)`` is called
    after each one (``i`` counts from ``first_index``)."""
    opts = options or PassOptions()
    out = PipelineResult(g)
    checked: dict[int, Checked] = {}  # constants hashed once
    for i, p in enumerate(passes, start=first_index):
        t0 = time.perf_counter()
        r = p.run(out.graph, opts)
        verify(r.graph, checked=checked)
        live = {id(c) for c in r.graph.constants.values()}
        checked = {k: v for k, v in checked.items() if k in live}  # keep no dropped weights
        out.passes.append(PassRecord(p.name, time.perf_counter() - t0, r.changed))
        out.graph = r.graph
        out.notes += r.notes
        out.calibration = r.calibration or out.calibration
        if dump is not None:
            dump(i, p.name, r.graph)
    return out


def resolve(names: Sequence[str], registry: dict[str, Pass]) -> list[Pass]:
    """Look passes up by name; an unknown name is a usage error listing the known ones."""
    out = []
    for name in names:
        if name not in registry:
            known = ", ".join(sorted(registry))
            raise BsnncError(f"unknown pass '{name}'; known passes: {known}")
        out.append(registry[name])
    return out
