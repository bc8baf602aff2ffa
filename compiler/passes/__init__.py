"""Compiler passes, one per file, and the named pipelines."""

from bsnnc.compiler.passes import (
    canonicalize,
    dce,
    fold_scales,
    fold_threshold_normalization,
    insert_if_around_pooling,
    lower_relu_to_if,
    partition_to_tiles,
)
from bsnnc.compiler.passes.base import (
    DumpFn,
    Pass,
    PassContext,
    PassManager,
    PassOptions,
    resolve,
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
        partition_to_tiles.PASS,
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
    "partition-to-tiles",
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
) -> tuple[Graph, PassContext]:
    """Run the ``default`` pipeline (or the passes ``names``) on ``g``; the result and the
    context with its facts and notes."""
    ctx = PassContext(options or PassOptions())
    passes = resolve(PIPELINES["default"] if names is None else names, REGISTRY)
    return PassManager(passes, dump, ctx).run(g), ctx


__all__ = [
    "PIPELINES",
    "REGISTRY",
    "Pass",
    "PassContext",
    "PassManager",
    "PassOptions",
    "resolve",
    "run_pipeline",
]
