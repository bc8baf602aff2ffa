"""The compile driver: the pass pipeline (:func:`bsnnc.compiler.passes.run_pipeline`), then
the crossbar backend's lowering when the result is a spiking graph. ``bsnnc compile``, the
golden tests and the benchmarks all compile through :func:`compile_graph`."""

from __future__ import annotations

from dataclasses import dataclass

from bsnnc.backends.rram.lower import RramOptions, TileLowering, lower_to_tiles
from bsnnc.compiler.passes import DumpFn, PassOptions, PipelineResult, run_pipeline
from bsnnc.ir.graph import Graph


@dataclass
class Compiled:
    """A compiled graph: the pipeline's result and, for a spiking graph, its tile program."""

    pipeline: PipelineResult
    tiles: TileLowering | None

    @property
    def graph(self) -> Graph:
        """The final graph."""
        return self.pipeline.graph

    @property
    def notes(self) -> list[str]:
        """The passes' notes, then the backend's."""
        return [*self.pipeline.notes, *([self.tiles.note] if self.tiles else [])]


def is_spiking(g: Graph) -> bool:
    """True for a converted graph (it has a readout): the form the crossbar backend maps."""
    return any(n.op == "readout" for n in g.nodes)


def compile_graph(
    g: Graph,
    options: PassOptions | None = None,
    rram: RramOptions | None = None,
    *,
    names: list[str] | None = None,
    dump: DumpFn | None = None,
    lower: bool = True,
) -> Compiled:
    """Run the ``default`` pipeline (or the passes ``names``) on ``g``; then, when ``lower``
    and the result is a spiking graph, map it onto crossbars with ``rram`` (default options
    when None)."""
    result = run_pipeline(g, options, names=names, dump=dump)
    tiles = lower_to_tiles(result.graph, rram) if lower and is_spiking(result.graph) else None
    return Compiled(result, tiles)
