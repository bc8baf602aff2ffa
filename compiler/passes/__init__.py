"""Compiler passes, one per file, the named pipelines, and the pipeline driver."""

from bsnnc.compiler.passes import (
    canonicalize,
    dce,
    fold_scales,
    fold_threshold_normalization,
    insert_if_around_pooling,
    lower_relu_to_if,
)
from bsnnc.compiler.passes.base import (
    Calibration,
    DumpFn,
    Pass,
    PassOptions,
    PassResult,
    PipelineResult,
    resolve,
    run_passes,
)
from bsnnc.ir.graph import Graph

#: every pass by name (explicit: no import-time registration magic).
REGISTRY: dict[str, Pass] = {
    p.name: p
    for p in [
        dce.PASS,
        canonicalize.PASS,
        fold_scales.PASS,
        fold_scales.ALIAS,
        lower_relu_to_if.PASS,
        insert_if_around_pooling.PASS,
        fold_threshold_normalization.PASS,
    ]
}

#: the ANN → B-SNN conversion.
CONVERT = [
    "fold-scales",
    "lower-relu-to-if",
    "insert-if-around-pooling",
    "fold-threshold-normalization",
    "dce",
    "canonicalize",
]

#: named pipelines run by ``bsnnc compile --pipeline NAME``.
PIPELINES: dict[str, list[str]] = {
    "import": [],
    "cleanup": ["dce", "canonicalize"],
    "default": CONVERT,
}


def run_pipeline(
    g: Graph,
    options: PassOptions | None = None,
    *,
    names: list[str] | None = None,
    dump: DumpFn | None = None,
) -> PipelineResult:
    """Run the ``default`` pipeline (or the passes ``names``) on ``g``: the final graph with
    every pass's record, the notes and the calibration. The one driver of the CLI, the tests
    and the benchmarks."""
    passes = resolve(PIPELINES["default"] if names is None else names, REGISTRY)
    return run_passes(g, passes, options, dump)


__all__ = [
    "PIPELINES",
    "REGISTRY",
    "Calibration",
    "DumpFn",
    "Pass",
    "PassOptions",
    "PassResult",
    "PipelineResult",
    "resolve",
    "run_pipeline",
]
