"""Golden files: for every zoo model, the IR after each stage of the default pipeline (ANN →
B-SNN) and a summary of a short simulation.

Regenerate with ``pytest tests/test_golden.py --update-golden`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import GOLDEN
from zoo import ZOO

from bsnnc.backends.rram.emit import check_program
from bsnnc.backends.rram.program import parse_program, print_program
from bsnnc.compiler.driver import compile_graph
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions
from bsnnc.ir import parse, print_graph
from bsnnc.ir.graph import Graph
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.simulate import metrics, run_chunks

T = 16
FIXTURES = Path(__file__).parent / "fixtures"


def compile_stages(onnx_path: Path, calib: Path | None) -> tuple[dict[str, str], Graph]:
    """Stage file name → IR text, for import and every pass of the default pipeline (no
    calibration images when ``calib`` is None: every IF layer must have a quantizer)."""
    out: dict[str, str] = {}
    g = import_onnx(onnx_path)
    out["00-import.ir"] = print_graph(g)

    def dump(i: int, name: str, graph: Graph) -> None:
        out[f"{i:02d}-{name}.ir"] = print_graph(graph)

    images = None if calib is None else (lambda: load_images(str(calib)))
    c = compile_graph(g, PassOptions(calib=images), dump=dump)
    assert c.tiles is not None
    out["program.txt"] = c.tiles.program
    return out, c.graph


def summary(g: Graph, images_path: Path) -> str:
    images = load_images(str(images_path))
    m = metrics(g, images, run_chunks(g, images, T, 32, early_exit=None), T, None)
    keep = (
        "accuracy_per_timestep",
        "spike_rates",
        "ifr",
        "normalized_ops",
        "predictions",
        "spike_digest",
    )
    return json.dumps({k: m[k] for k in keep}, indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_golden_ir_and_simulation(name: str, zoo_data: Path, update_golden: bool) -> None:
    data = zoo_data / f"{name}.npz"
    actual, g = compile_stages(zoo_data / f"{name}.onnx", data)
    actual["simulation.json"] = summary(g, data)
    check_golden(GOLDEN / name, actual, update_golden)


#: Brevitas QONNX exports (2- and 4-bit activations), converted without calibration images
QONNX = {"qonnx_a2": "brevitas_digits_a2.onnx", "qonnx_a4": "brevitas_digits_a4.onnx"}


@pytest.mark.parametrize("name", sorted(QONNX))
def test_golden_qonnx_import_and_simulation(name: str, update_golden: bool) -> None:
    actual, g = compile_stages(FIXTURES / QONNX[name], None)
    actual["simulation.json"] = summary(g, FIXTURES / "brevitas_digits_ref.npz")
    check_golden(GOLDEN / name, actual, update_golden)


def check_golden(folder: Path, actual: dict[str, str], update_golden: bool) -> None:
    """Compare (or with ``--update-golden`` rewrite) a folder of golden files."""
    name = folder.name
    if update_golden:
        folder.mkdir(parents=True, exist_ok=True)
        for old in [*folder.glob("*.ir"), *folder.glob("*.json"), *folder.glob("*.txt")]:
            old.unlink()
        for fname, text in actual.items():
            (folder / fname).write_text(text, encoding="utf-8")
    expected = {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.iterdir())}
    assert sorted(expected) == sorted(actual), "stages changed: rerun with --update-golden"
    for fname, text in actual.items():
        assert text == expected[fname], f"{name}/{fname} differs from the golden file"


@pytest.mark.parametrize(
    "path", sorted(GOLDEN.glob("*/*.ir")), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_golden_files_parse_back_identically(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert print_graph(parse(text, source=str(path))) == text


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*/program.txt")), ids=lambda p: p.parent.name)
def test_golden_programs_parse_back_identically(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    program = parse_program(text, source=str(path))
    check_program(program, str(path))
    assert print_program(program) == text
