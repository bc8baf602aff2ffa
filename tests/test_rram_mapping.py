"""The RRAM backend's hardware configs, partitioning, packing, bounds and placement."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import load_example

from bsnnc.backends.rram.hw import PRESETS, load_hw
from bsnnc.backends.rram.mapping import Mapping, partition
from bsnnc.backends.rram.placement import mesh_position, place
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.types import Kind
from bsnnc.runtime.datasets import embedded_file


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    path = tmp_path_factory.mktemp("vgg") / "vgg15.onnx"
    onnx.save(load_example("vgg15").build_vgg15("cifar100", seed=0), path)
    return import_onnx(path)


def matrices(g: Graph) -> list[tuple[int, int, bool]]:
    """(K, N, binary) per weighted layer, computed from the weight shapes."""
    out = []
    for n in g.nodes:
        if n.op in ("conv2d", "dense"):
            c = g.constants[n.const_operands()[0]]
            out.append(
                (
                    int(np.prod(c.type.shape[1:])),
                    int(c.type.shape[0] or 0),
                    c.type.kind == Kind.BIPOLAR,
                )
            )
    return out


def check_blocks(m: Mapping) -> None:
    """Blocks tile each layer's matrix exactly, fit their array, and never share rows or
    columns with another block of the same array."""
    hw = m.hw
    per_array: dict[int, list[tuple[int, int, int, int]]] = {}
    for lm in m.layers:
        if lm.kind == "digital":
            continue
        cover = np.zeros((lm.rows, lm.cols), np.int8)  # every copy covers the matrix once
        for b in (b for b in m.blocks if b.layer == lm.node):
            cover[b.r0 : b.r1, b.c0 : b.c1] += 1
            assert b.row_offset + b.height <= hw.rows and b.col_offset + b.width <= hw.columns
            per_array.setdefault(b.array, []).append(
                (b.row_offset, b.height, b.col_offset, b.width)
            )
        assert np.all(cover == lm.copies)
    for rects in per_array.values():
        rows = sorted((r, r + h) for r, h, _, _ in rects)
        cols = sorted((c, c + w) for _, _, c, w in rects)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(rows))
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(cols))


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_with_sources(preset: str) -> None:
    hw = load_hw(preset)
    assert hw.name == preset and hw.rows == hw.columns in (128, 256)
    assert hw.rows_per_input == 1 and hw.reference_columns == 1
    assert hw.sources  # every preset cites where its numbers come from


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"rows": 64, "colums": 64}', ".json", "unknown setting(s) colums"),
        ('{"rows": -1}', ".json", "rows must be a positive integer"),
        ("{rows: 64", ".json", "not a valid hardware configuration"),
        ("rows = 64\ncolumns = 32\nmax_rows_driven = 64\n", ".toml", ""),
        ('{"rows": 64, "max_rows_driven": 128}', ".json", "must not exceed rows"),
    ],
)
def test_hw_file_errors(content: str, suffix: str, message: str, tmp_path: Path) -> None:
    p = tmp_path / f"hw{suffix}"
    p.write_text(content)
    if not message:
        hw = load_hw(str(p))
        assert (hw.rows, hw.columns, hw.name) == (64, 32, "hw")
        return
    with pytest.raises(BsnncError) as e:
        load_hw(str(p))
    assert message in str(e.value) and str(p) in str(e.value)


def test_unknown_preset() -> None:
    with pytest.raises(BsnncError, match="rram-128, rram-256"):
        load_hw("rram-64")


@pytest.mark.parametrize("preset", PRESETS)
def test_vgg15_unpacked_mapping_equals_the_per_layer_bound(vgg: Graph, preset: str) -> None:
    hw = load_hw(preset)
    m = partition(vgg, hw)
    expect = sum(
        math.ceil(k / hw.rows) * math.ceil(n / hw.columns) for k, n, b in matrices(vgg) if b
    )
    s = m.summary()
    assert m.n_arrays == s["arrays_bound_per_layer"] == expect
    data = sum(k * n for k, n, b in matrices(vgg) if b)
    assert s["arrays_bound_global"] == math.ceil(data / (hw.rows * hw.columns))
    assert s["utilization"] == pytest.approx(data / (m.n_arrays * hw.rows * hw.columns))
    phys = m.n_arrays * hw.rows * (hw.columns + 1)
    assert s["utilization_physical"] == pytest.approx(data / phys)
    check_blocks(m)


def test_packing_moves_toward_the_global_bound() -> None:
    g = import_onnx(embedded_file("digits.onnx"))
    hw = load_hw("rram-128")
    plain, packed = partition(g, hw), partition(g, hw, pack_layers=True)
    bound = plain.summary()
    assert plain.n_arrays == bound["arrays_bound_per_layer"] == 3 + 5 + 2
    assert bound["arrays_bound_global"] <= packed.n_arrays < plain.n_arrays
    check_blocks(packed)


def test_bnn_needs_twice_the_rows() -> None:
    g = import_onnx(embedded_file("digits.onnx"))
    hw = load_hw("rram-128")
    bnn = partition(g, hw, rho=2)
    expect = sum(math.ceil(2 * k / 128) * math.ceil(n / 128) for k, n, b in matrices(g) if b)
    assert bnn.n_arrays == expect == 18 > partition(g, hw).n_arrays
    check_blocks(bnn)


def test_bitsliced_full_precision_layers_get_arrays() -> None:
    g = import_onnx(embedded_file("digits.onnx"))
    hw = load_hw("rram-128")
    m = partition(g, hw, fp_layers="bitsliced")
    first, last = m.layers[0], m.layers[-1]
    assert (first.kind, first.row_blocks, first.col_blocks) == ("bitsliced", 1, 2)  # 9×32 → 9×256
    assert (last.kind, last.row_blocks, last.col_blocks) == ("bitsliced", 1, 1)  # 128×10 → 128×80
    assert m.n_arrays == partition(g, hw).n_arrays + 3
    check_blocks(m)


def test_placement_snake_order_and_hops() -> None:
    assert [mesh_position(t, 3) for t in range(6)] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (2, 1),
        (1, 1),
        (0, 1),
    ]
    g = import_onnx(embedded_file("digits.onnx"))
    p = place(g, partition(g, load_hw("rram-128")))
    assert p["tiles"] == 2 and p["mesh"] == [2, 1] and p["max_hops"] == 1


def test_compile_records_mapping_in_the_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bsnnc.compiler.cli import main
    from bsnnc.runtime.artifact import read_artifact

    out = tmp_path / "d.tiles"
    assert main(["compile", "digits", "-o", str(out), "--hw", "rram-256", "--pack"]) == 0
    m = json.loads(read_artifact(out).extra["mapping.json"])
    assert m["hw"] == "rram-256" and m["packed"] and m["bnn_arrays"] >= m["arrays"]
    assert m["arrays_bound_global"] <= m["arrays"] <= m["arrays_bound_per_layer"]
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["mapping"]["arrays"] == m["arrays"] and "blocks" not in facts["mapping"]
    assert main(["compile", "digits", "-o", str(tmp_path / "x.tiles"), "--hw", "nope"]) == 2
    assert "no such file or preset" in capsys.readouterr().err
    assert not (tmp_path / "x.tiles").exists()


def test_duplication_balances_the_bottleneck_within_budget(vgg: Graph) -> None:
    hw = load_hw("rram-128")
    base = partition(vgg, hw)
    assert all(lm.copies == 1 for lm in base.layers)
    dup = partition(vgg, hw, duplicate_factor=2.0)
    assert base.n_arrays < dup.n_arrays <= 2 * base.n_arrays
    stage = {lm.node: lm.positions / lm.copies for lm in dup.layers if lm.kind == "binary"}
    before = {lm.node: lm.positions for lm in base.layers if lm.kind == "binary"}
    assert max(stage.values()) < max(before.values())  # the slowest stage got faster
    check_blocks(dup)
