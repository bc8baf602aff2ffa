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
from bsnnc.compiler.passes.base import Pass, PassContext, PassManager, PassOptions, resolve

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

__all__ = ["PIPELINES", "REGISTRY", "Pass", "PassContext", "PassManager", "PassOptions", "resolve"]
