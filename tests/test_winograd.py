"""Calibration's fast float64 ANN: Winograd F(4×4, 3×3) convolutions equal the direct ones to
float64 rounding, the staged runner computes what one batch computes, and on every zoo model
both give the same thresholds as the direct, single-batch calibration."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.compiler.passes.base import Calibration
from bsnnc.ir import GraphBuilder, Kind, TensorType
from bsnnc.ir.graph import Graph
from bsnnc.runtime import ann, winograd
from bsnnc.runtime import kernels as K
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import load_images
from bsnnc.runtime.staged import node_bytes, plan_stages, run_staged


@pytest.mark.parametrize(
    ("n", "c", "h", "w", "o", "pad"),
    [
        (2, 8, 13, 11, 5, (1, 1, 1, 1)),  # sizes not multiples of the 4×4 tile
        (3, 3, 9, 16, 16, (0, 0, 0, 0)),  # no padding
        (1, 16, 7, 5, 4, (2, 0, 1, 2)),  # asymmetric padding
        (2, 5, 3, 3, 3, (0, 0, 0, 0)),  # a single output
        (4, 32, 20, 20, 40, (1, 1, 1, 1)),
        (2, 2, 2, 1, 3, (3, 3, 0, 3)),  # an image smaller than the filter, wide padding
    ],
)
@pytest.mark.parametrize("binary", [True, False])
def test_conv3x3_equals_the_direct_convolution(
    n: int, c: int, h: int, w: int, o: int, pad: tuple[int, int, int, int], binary: bool
) -> None:
    rng = np.random.default_rng(n * 1000 + c * 10 + o)
    x = np.maximum(rng.standard_normal((n, c, h, w)), 0)
    wt = rng.standard_normal((o, c, 3, 3))
    weights = np.sign(wt).astype(np.int8) if binary else wt.astype(np.float32)
    direct = K.conv2d(x, weights, (1, 1), pad, (1, 1))
    got = winograd.conv3x3(x, winograd.filter_transform(weights), pad)
    assert got.shape == direct.shape and got.dtype == np.float64
    assert np.max(np.abs(got - direct)) <= 1e-13 * np.max(np.abs(direct))


def test_conv3x3_in_many_blocks_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few tile rows (the last one partial) give the same bits as one block."""
    rng = np.random.default_rng(7)
    x = np.maximum(rng.standard_normal((3, 6, 17, 10)), 0)
    u = winograd.filter_transform(np.sign(rng.standard_normal((5, 6, 3, 3))).astype(np.int8))
    whole = winograd.conv3x3(x, u, (1, 1, 1, 1))
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    monkeypatch.setattr(winograd, "BLOCK_BYTES", 36 * 3 * 11 * 8 * 2)  # 2 of 15 tile rows
    np.testing.assert_array_equal(winograd.conv3x3(x, u, (1, 1, 1, 1)), whole)


def test_conv3x3_of_no_images() -> None:
    u = winograd.filter_transform(np.ones((4, 3, 3, 3), np.int8))
    assert winograd.conv3x3(np.zeros((0, 3, 9, 9)), u, (1, 1, 1, 1)).shape == (0, 4, 9, 9)


def test_filter_transform_is_g_w_gt() -> None:
    w = np.sign(np.random.default_rng(1).standard_normal((6, 4, 3, 3))).astype(np.int8)
    u = winograd.filter_transform(w)
    expect = np.einsum("xi,ocij,yj->xyco", winograd.G, w.astype(np.float64), winograd.G)
    np.testing.assert_allclose(u, expect.reshape(36, 4, 6), rtol=0, atol=1e-15)


def test_winograd_runs_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher: float64 3×3 stride-1 layers of ≥ WINOGRAD_MIN_MACS per image only."""
    calls: list[tuple[int, ...]] = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, u, p: calls.append(x.shape) or real(x, u, p))
    x = np.ones((1, 64, 32, 32))
    w = np.ones((64, 64, 3, 3), np.int8)
    attrs = {"stride": (1, 1), "dilation": (1, 1), "pad": (1, 1, 1, 1)}
    ann._conv2d([x, w], attrs, winograd=True)  # 37.7 M per image
    ann._conv2d([x.astype(np.float32), w], attrs, winograd=True)  # float32: the ANN reference
    ann._conv2d([x, w], {**attrs, "stride": (2, 2)}, winograd=True)
    ann._conv2d([x[:, :, :8, :8], w], attrs, winograd=True)  # 2.4 M per image
    ann.ANN_KERNELS["conv2d"]([x, w], attrs)  # the table the spiking runtime also calls
    assert calls == [(1, 64, 32, 32)]


def test_winograd_only_for_runs_that_pay_for_numba(zoo_data: Path) -> None:
    """A calibration run uses Winograd when its large 3×3 layers add up to
    WINOGRAD_MIN_RUN_MACS (images × per image); the digits-sized zoo never does."""
    g = _calibration_graph("vgg_small", zoo_data)
    assert ann.winograd_macs(g) == 0  # its layers are below WINOGRAD_MIN_MACS
    assert ann.kernels_for(10**9, g) is ann.ANN_KERNELS
    x = np.ones((1, 64, 32, 32))
    b = GraphBuilder("wide")
    v = b.input("x", TensorType(Kind.F32, (None, 64, 32, 32)))
    w = b.const("w", Kind.BIPOLAR, np.ones((64, 64, 3, 3)))
    v = b.add("conv2d", [v, w], {"pad": (1, 1, 1, 1)})
    wide = b.finish([v])
    per_image = 32 * 32 * 64 * 64 * 9
    assert ann.winograd_macs(wide) == per_image
    few = -(-ann.WINOGRAD_MIN_RUN_MACS // per_image) - 1
    assert ann.kernels_for(few, wide) is ann.ANN_KERNELS
    assert ann.kernels_for(few + 1, wide)["conv2d"] is not ann.ANN_KERNELS["conv2d"]
    direct = ann.kernels_for(few, wide)["conv2d"](
        [x, np.ones((64, 64, 3, 3), np.int8)], wide.nodes[-1].attrs
    )
    np.testing.assert_array_equal(
        direct, K.conv2d(x, np.ones((64, 64, 3, 3), np.int8), (1, 1), (1, 1, 1, 1), (1, 1))
    )


def _values(g: Graph) -> list[str]:
    return [n.result for n in g.nodes if n.op != "input"]


def test_stages_cover_the_graph_with_growing_batches(zoo_data: Path) -> None:
    g = _calibration_graph("vgg_small", zoo_data)
    need = node_bytes(g)
    budget = 3 * max(need) // 2
    stages = plan_stages(g, 96, 64, budget)
    assert len(stages) > 1 and stages[0].first == 0 and stages[-1].stop == len(g.nodes)
    for a, b in pairwise(stages):
        assert a.stop == b.first and b.batch > a.batch and b.batch % a.batch == 0
    assert stages[-1].batch <= 64
    for s in stages:  # every node of a stage fits the budget at the stage's batch
        assert all(s.batch * need[i] <= budget for i in range(s.first, s.stop))


@pytest.mark.parametrize("name", ["vgg_small", "residual", "dense_concat"])
def test_staged_run_computes_what_one_batch_computes(name: str, zoo_data: Path) -> None:
    """Stage cuts inside residual and concatenated branches hand the branches on."""
    g = _calibration_graph(name, zoo_data)
    x = np.load(zoo_data / f"{name}.npz")["x"][:45]
    stages = plan_stages(g, 45, 64, budget=max(node_bytes(g)) * 3)
    assert len(stages) > 1 and 45 % stages[-1].batch != 0  # the last batches are partial
    seen: dict[str, list[np.ndarray]] = {}
    batches = (x[s : s + stages[0].batch] for s in range(0, 45, stages[0].batch))
    run_staged(g, batches, stages, lambda name, v: seen.setdefault(name, []).append(v.copy()))
    whole = run_ann(g, x, keep=_values(g), dtype=np.float64)
    assert set(seen) == set(_values(g))
    for name, parts in seen.items():
        np.testing.assert_allclose(np.concatenate(parts), whole[name], rtol=1e-12, atol=1e-300)


def _calibration_graph(name: str, zoo_data: Path) -> Graph:
    g = import_onnx(zoo_data / f"{name}.onnx")
    return run_pipeline(
        g, PassOptions(), names=["fold-scales", "lower-relu-to-if", "insert-if-around-pooling"]
    ).graph


def _calibrate(name: str, zoo_data: Path, granularity: str) -> Calibration:
    options = PassOptions(
        calib=lambda: load_images(str(zoo_data / f"{name}.npz")), granularity=granularity
    )
    result = run_pipeline(import_onnx(zoo_data / f"{name}.onnx"), options)
    assert result.calibration is not None
    return result.calibration


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_calibration_is_the_same_with_winograd_and_stages(
    granularity: str, zoo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every zoo model's λ, computed with Winograd for every 3×3 stride-1 layer and in stages
    of a few images, equals λ from direct convolutions in one batch (λ is float32-rounded:
    exactly equal)."""
    fold = "bsnnc.compiler.passes.fold_threshold_normalization"
    real = winograd.conv3x3
    calls: list[str] = []
    monkeypatch.setattr(winograd, "conv3x3", lambda x, u, p: calls.append(name) or real(x, u, p))
    for name in sorted(ZOO):
        monkeypatch.setattr(ann, "WINOGRAD_MIN_MACS", 1 << 62)
        monkeypatch.setattr(f"{fold}.CALIB_BYTES", 1 << 40)
        direct = _calibrate(name, zoo_data, granularity)
        monkeypatch.setattr(ann, "WINOGRAD_MIN_MACS", 0)
        monkeypatch.setattr(ann, "WINOGRAD_MIN_RUN_MACS", 0)
        g = _calibration_graph(name, zoo_data)
        monkeypatch.setattr(f"{fold}.CALIB_BYTES", max(node_bytes(g)) * 2)
        fast = _calibrate(name, zoo_data, granularity)
        assert fast.layers == direct.layers, name
    assert len(set(calls)) >= 3, "the zoo must exercise the Winograd path"
