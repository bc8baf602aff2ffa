"""Golden files: the IR of every zoo model after each stage of the default pipeline.

Regenerate with ``pytest tests/test_golden.py --update-golden`` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import GOLDEN
from zoo import ZOO

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PIPELINES, REGISTRY, PassManager, resolve
from bsnnc.ir import parse, print_graph
from bsnnc.ir.graph import Graph


def stages(path: Path) -> dict[str, str]:
    """Stage file name → IR text, for import and every pass of the default pipeline."""
    out: dict[str, str] = {}
    g = import_onnx(path)
    out["00-import.ir"] = print_graph(g)

    def dump(i: int, name: str, graph: Graph) -> None:
        out[f"{i:02d}-{name}.ir"] = print_graph(graph)

    PassManager(resolve(PIPELINES["default"], REGISTRY), dump).run(g)
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_golden_ir(name: str, zoo_dir: Path, update_golden: bool) -> None:
    actual = stages(zoo_dir / f"{name}.onnx")
    folder = GOLDEN / name
    if update_golden:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.ir"):
            old.unlink()
        for fname, text in actual.items():
            (folder / fname).write_text(text, encoding="utf-8")
    expected = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.ir"))}
    assert sorted(expected) == sorted(actual), "stages changed: rerun with --update-golden"
    for fname, text in actual.items():
        assert text == expected[fname], f"{name}/{fname} differs from the golden file"


@pytest.mark.parametrize(
    "path", sorted(GOLDEN.glob("*/*.ir")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_golden_files_parse_back_identically(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert print_graph(parse(text, source=str(path))) == text
