"""The package layout shows the design: layers import strictly downwards
(``ir ← runtime ← backends ← compiler``), no empty packages, the crossbar backend in one folder.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

LAYERS = ["ir", "runtime", "backends", "compiler"]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``bsnnc.*`` import in ``path`` (also inside functions)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in out if m.startswith("bsnnc.")]


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_only_downwards(layer: str) -> None:
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    bad = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, module in _imports(path)
        if module.split(".")[1] in LAYERS and module.split(".")[1] not in allowed
    ]
    assert bad == []


def test_no_empty_packages() -> None:
    for layer in LAYERS:
        for init in (ROOT / layer).rglob("__init__.py"):
            siblings = [p for p in init.parent.iterdir() if p.name != "__init__.py"]
            assert any(p.suffix == ".py" or p.is_dir() for p in siblings), init.parent


def test_the_crossbar_model_lives_in_backends_rram() -> None:
    """Mapping, program, lowering, simulator, cost model, energy, hardware, report: one folder."""
    rram = ROOT / "backends" / "rram"
    for module in ("mapping", "program", "emit", "lower", "sim", "cost", "energy", "hw", "report"):
        assert (rram / f"{module}.py").is_file(), module
    assert not (ROOT / "runtime" / "tilesim.py").exists()


def test_passes_draw_nothing() -> None:
    """Passes report progress through ``PassOptions.progress``; they never reach for the CLI's
    console or a terminal library."""
    files = [*sorted((ROOT / "compiler" / "passes").glob("*.py")), ROOT / "compiler/calibrate.py"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "bsnnc.compiler.console" not in text and "rich" not in text, path
