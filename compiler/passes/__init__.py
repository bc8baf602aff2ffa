"""Compiler passes, one per file, and the named pipelines."""

from bsnnc.compiler.passes import canonicalize, dce
from bsnnc.compiler.passes.base import Pass, PassManager, resolve

#: every pass by name (explicit: no import-time registration magic).
REGISTRY: dict[str, Pass] = {p.name: p for p in [dce.PASS, canonicalize.PASS]}

#: named pipelines run by ``bsnnc compile --pipeline NAME``.
PIPELINES: dict[str, list[str]] = {
    "import": [],
    "default": ["dce", "canonicalize"],
}

__all__ = ["PIPELINES", "REGISTRY", "Pass", "PassManager", "resolve"]
