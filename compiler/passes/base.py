"""Pass base class, the registry of passes, and the pass manager.

A pass is a pure function Graph → Graph with a kebab-case name. The manager verifies the graph
after every pass and can hand each intermediate graph to a dump callback (``--dump-ir-after``,
``--dump-dir``) and time each pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.verifier import verify


@dataclass(frozen=True)
class Pass:
    """A named graph rewrite."""

    name: str
    summary: str
    run: Callable[[Graph], Graph]


DumpFn = Callable[[int, str, Graph], None]


@dataclass
class PassManager:
    """Runs passes in order, verifying after each; records wall time per pass."""

    passes: Sequence[Pass]
    dump: DumpFn | None = None
    timings: list[tuple[str, float]] = field(default_factory=list)

    def run(self, g: Graph, first_index: int = 1) -> Graph:
        """Apply every pass; ``dump(i, name, graph)`` is called after each one."""
        for i, p in enumerate(self.passes, start=first_index):
            t0 = time.perf_counter()
            g = p.run(g)
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
