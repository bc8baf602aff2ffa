"""The spiking runtime: IF dynamics, exact binary products, metrics, early exit, and the
conversion's accuracy on the committed digits model and the zoo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.ir.graph import Graph
from bsnnc.runtime.datasets import Images, embedded_file, load_images
from bsnnc.runtime.simulate import (
    WORKING_SET,
    ann_accuracy,
    bytes_per_image,
    chunk_size,
    conversion_summary,
    exit_steps,
    metrics,
    run_chunks,
)
from bsnnc.runtime.snn import SnnRuntime, Value, if_scan, nchw


def convert(onnx_path: Path, calib: str, **opts: object) -> Graph:
    options = PassOptions(calib=lambda: load_images(calib, split="train"), **opts)  # type: ignore[arg-type]
    return run_pipeline(import_onnx(onnx_path), options).graph


@pytest.fixture(scope="module")
def digits_graph() -> Graph:
    return convert(embedded_file("digits.onnx"), "digits")


def test_if_subtract_counts_floor_of_integrated_current() -> None:
    """Constant current z, threshold θ, subtractive reset: by step t, ⌊t·z/θ⌋ spikes."""
    z = np.array([[0.0, 0.25, 0.5, 0.75, 1.0, 1.5]])
    s = if_scan(Value(z, True), 1.0, "subtract", 16)
    counts = s.sum(axis=0)[0]
    np.testing.assert_array_equal(counts, np.minimum(np.floor(16 * z[0]), 16))
    cum = s.cumsum(axis=0)[:, 0, 1]
    np.testing.assert_array_equal(cum, np.floor(np.arange(1, 17) * 0.25))


def test_if_half_threshold_start_rounds_instead_of_flooring() -> None:
    """Starting at v(0) = θ/2 with subtractive reset, constant current z fires ⌊t·z/θ + ½⌋
    times by step t (clipped at t): the rate rounds the activation instead of flooring it."""
    z = np.array([[0.0, 0.125, 0.375, 0.5, 0.75, 1.0]])  # dyadic: every sum is exact
    T = 16
    v = np.full(z.shape, 0.5)
    s = if_scan(Value(z, True), 1.0, "subtract", T, v)
    t = np.arange(1, T + 1)[:, None]
    np.testing.assert_array_equal(s.cumsum(axis=0)[:, 0], np.minimum(np.floor(t * z + 0.5), t))


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_fire_starts_from_init_times_theta_per_channel(nhwc: bool, reset: str) -> None:
    """The compiled IF layer starting from v(0) = init·θ[c] (per channel, either layout, two
    windows) spikes exactly as the numpy definition started from the same membranes."""
    from bsnnc.runtime.snn import SnnTrace, WindowState, fire

    rng = np.random.default_rng(3)
    T, N, C, H, W = 9, 2, 3, 4, 5
    z = rng.uniform(-0.2, 1.1, (T, N, C, H, W))
    theta = np.array([0.5, 1.0, 0.75])
    v0 = 0.75 * theta
    v_ref = np.broadcast_to(v0.reshape(1, C, 1, 1), (N, C, H, W)).copy()
    want = if_scan(Value(z, False), theta.reshape(1, C, 1, 1), reset, T, v_ref)
    data = np.ascontiguousarray(z.transpose(0, 1, 3, 4, 2)) if nhwc else z
    state, got = WindowState(), []
    for t0, steps in ((0, 4), (4, 5)):
        trace = SnnTrace(final=np.zeros(0))
        part = fire("l", Value(data[t0 : t0 + steps], False, nhwc), theta, 1, reset, steps,
                    trace, state, v0)  # fmt: skip
        got.append(nchw(part).data)
    np.testing.assert_array_equal(np.concatenate(got), want)
    np.testing.assert_array_equal(nchw(Value(state.membranes["l"][None], False, nhwc)).data[0],
                                  v_ref)  # fmt: skip


def test_if_zero_reset_loses_the_residue() -> None:
    z = np.array([[0.75]])
    sub = if_scan(Value(z, True), 1.0, "subtract", 12).sum()
    zero = if_scan(Value(z, True), 1.0, "zero", 12).sum()
    assert sub == 9  # ⌊12·0.75⌋
    assert zero == 6  # fires every 2nd step: 0.75, 1.5→0, ...


def test_if_per_channel_threshold_and_time_varying_input() -> None:
    z = np.zeros((4, 1, 2, 1, 1))
    z[:, 0, 0] = [[[1.0]], [[0.0]], [[2.0]], [[0.0]]]
    z[:, 0, 1] = 3.0
    theta = np.array([1.0, 2.0]).reshape(1, 2, 1, 1)
    s = if_scan(Value(z, False), theta, "subtract", 4)
    np.testing.assert_array_equal(s[:, 0, 0, 0, 0], [1, 0, 1, 1])
    np.testing.assert_array_equal(s[:, 0, 1, 0, 0], [1, 1, 1, 1])


def test_digits_snn_within_one_point_of_ann_at_64_steps(digits_graph: Graph) -> None:
    """Issue 3's bar: the committed digits model converts with ≤ 1 point of loss at T = 64."""
    images = load_images("digits")
    chunks = run_chunks(digits_graph, images, 64, 128, None)
    m = metrics(digits_graph, images, chunks, 64, None)
    ann, _ = ann_accuracy(digits_graph, images)
    conversion_summary(m, ann)
    torch_run = json.loads((Path(__file__).parent / "fixtures" / "digits_torch.json").read_text())
    assert ann == pytest.approx(torch_run["test_accuracy"], abs=1e-6)  # as PyTorch measured it
    assert m["final_accuracy"] >= ann - 0.01
    assert m["first_timestep_within_1pt"] is not None and m["first_timestep_within_1pt"] <= 64
    assert len(m["accuracy_per_timestep"]) == 64 and m["accuracy_per_timestep"][0] < 0.5
    assert 1.0 < m["normalized_ops"] < 20.0
    assert set(m["ifr"]) == set(m["layer_ops"])
    assert all(0 < r < 1 for r in m["spike_rates"].values())


def _curve(onnx_path: Path, train: Images, test: Images, v_init: float) -> dict[str, Any]:
    g = run_pipeline(import_onnx(onnx_path), PassOptions(calib=lambda: train, v_init=v_init)).graph
    m = metrics(g, test, run_chunks(g, test, 64, 256, None), 64, None)
    conversion_summary(m, ann_accuracy(g, test)[0])
    return m


@pytest.mark.parametrize(
    "model",
    ["digits", pytest.param("digits_deep", marks=pytest.mark.examples)],  # ~10 s
)
def test_half_threshold_start_reaches_the_ann_within_8_steps(model: str) -> None:
    """Issue 11's bar, with the default start (half-full membranes): the embedded digits model
    and the deeper 8-binary-layer one (tests/fixtures, examples/train_digits_deep.py) are
    within 1 point of their ANN by T = 8 — from empty membranes only at T = 19 and 25 — and
    lose nothing at T = 64 against the empty start."""
    if model == "digits":
        path = embedded_file("digits.onnx")
        train, test = load_images("digits", split="train", limit=512), load_images("digits")
    else:
        fx = Path(__file__).parent / "fixtures"
        path = fx / "digits_deep.onnx"
        train = load_images(str(fx / "digits_deep_train.npz"))
        test = load_images(str(fx / "digits_deep_test.npz"))
    assert PassOptions().v_init == 0.5
    half, empty = (_curve(path, train, test, v) for v in (0.5, 0.0))
    first = half["first_timestep_within_1pt"]
    assert isinstance(first, int) and first <= 8
    assert empty["first_timestep_within_1pt"] in (19, 25)  # the measured baseline
    assert half["final_accuracy"] >= empty["final_accuracy"]


def test_results_do_not_depend_on_chunking(digits_graph: Graph) -> None:
    images = load_images("digits", limit=40)
    a = metrics(digits_graph, images, run_chunks(digits_graph, images, 20, 40, None), 20, None)
    b = metrics(digits_graph, images, run_chunks(digits_graph, images, 20, 7, None), 20, None)
    assert a["spike_digest"] == b["spike_digest"]
    assert a["predictions"] == b["predictions"]
    assert a["accuracy_per_timestep"] == b["accuracy_per_timestep"]
    assert a["normalized_ops"] == b["normalized_ops"]


def test_early_exit(digits_graph: Graph) -> None:
    images = load_images("digits", limit=60)
    T = 32
    full = metrics(digits_graph, images, run_chunks(digits_graph, images, T, 60, None), T, None)
    never = metrics(digits_graph, images, run_chunks(digits_graph, images, T, 60, 1e30), T, 1e30)
    assert never["mean_exit_step"] == T and never["predictions"] == full["predictions"]
    assert never["normalized_ops"] == pytest.approx(full["normalized_ops"])
    early = metrics(digits_graph, images, run_chunks(digits_graph, images, T, 60, 20.0), T, 20.0)
    assert 1 <= early["mean_exit_step"] < T
    assert sum(early["exit_step_histogram"]) == 60 and len(early["exit_step_histogram"]) == T
    assert early["normalized_ops"] < full["normalized_ops"]
    assert early["spike_digest"] == full["spike_digest"]  # the same spikes, counted less


def test_exit_steps_semantics() -> None:
    final = np.zeros((5, 3, 2))
    final[2, 0, 1] = 9.0  # image 0 crosses at step 3
    final[:, 1, 0] = np.arange(5)  # image 1: 0,1,2,3,4 → crosses 2.5 at step 4
    np.testing.assert_array_equal(exit_steps(final, 2.5), [3, 4, 5])
    np.testing.assert_array_equal(exit_steps(final, None), [5, 5, 5])


@pytest.mark.parametrize(
    "name", ["avg_before_relu", "avg_after_relu", "max_ceil", "gap_binary", "bn_bias", "vgg_small"]
)
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_zoo_converts_and_simulates(name: str, reset: str, zoo_data: Path) -> None:
    """Every pooling arrangement (and BatchNorm + biases) converts and agrees with its ANN."""
    g = convert(zoo_data / f"{name}.onnx", str(zoo_data / f"{name}.npz"), reset=reset)
    data = np.load(zoo_data / f"{name}.npz")
    images = Images(name, data["x"][48:], data["y"][48:])  # calibrated on all 96; test on half
    T = 128
    m = metrics(g, images, run_chunks(g, images, T, 48, None), T, None)
    assert m["final_accuracy"] >= (0.85 if reset == "subtract" else 0.6), m[
        "accuracy_per_timestep"
    ][-1]


def test_chunk_size_respects_memory_bound(digits_graph: Graph) -> None:
    need = bytes_per_image(digits_graph, 64)
    assert chunk_size(digits_graph, 64, 128, 1 << 40) == min(128, WORKING_SET // need)
    assert chunk_size(digits_graph, 1, 128, 1 << 40) == 128  # one step: 128 images fit
    small = chunk_size(digits_graph, 64, 128, 4 << 20)
    assert 1 <= small < 128
    assert chunk_size(digits_graph, 64, 128, 1) == 1


def test_runtime_rejects_an_unconverted_graph() -> None:
    with pytest.raises(Exception, match=r"readout|binary layer must read spikes"):
        SnnRuntime(import_onnx(embedded_file("digits.onnx")))


def test_nchw_of_a_static_and_of_a_timed_channels_last_value() -> None:
    rng = np.random.default_rng(0)
    static = rng.standard_normal((2, 3, 4, 5))  # [N, C, H, W]
    back = nchw(Value(np.ascontiguousarray(static.transpose(0, 2, 3, 1)), True, True))
    assert back.static and not back.nhwc and back.data.flags.c_contiguous
    assert np.array_equal(back.data, static)
    timed = rng.integers(0, 2, (4, 2, 3, 4, 5)).astype(np.uint8)  # [T, N, C, H, W]
    back = nchw(Value(np.ascontiguousarray(timed.transpose(0, 1, 3, 4, 2)), False, True))
    assert not back.static and not back.nhwc and np.array_equal(back.data, timed)
    same = Value(static, True)
    assert nchw(same) is same


@pytest.mark.parametrize("v_init", [0.0, 0.5])
def test_a_convolution_fused_with_its_if_layer_changes_no_bit(
    zoo_data: Path, v_init: float
) -> None:
    """The reference runtime fuses a binary convolution with the IF layer that alone reads
    it; with the fusion switched off every trace is the same, in one window and in three,
    from empty membranes and from half-full ones."""
    g = import_onnx(zoo_data / "vgg_small.onnx")
    images = load_images(str(zoo_data / "vgg_small.npz"), limit=5)
    folded = run_pipeline(g, PassOptions(calib=lambda: images, v_init=v_init)).graph
    assert all(n.attrs.get("init", 0.0) == v_init for n in folded.nodes if n.op == "if")
    fused = SnnRuntime(folded)
    assert fused._fires, "vgg_small has convolutions read by an IF layer alone"
    plain = SnnRuntime(folded)
    plain._fires = {}
    for window in (None, 3):
        a, b = fused.run(images.x, 7, window), plain.run(images.x, 7, window)
        np.testing.assert_array_equal(a.final, b.final)
        for name in ("spikes", "per_neuron", "layer_input"):
            mine, theirs = getattr(a, name), getattr(b, name)
            assert mine.keys() == theirs.keys()
            for k in mine:
                np.testing.assert_array_equal(mine[k], theirs[k])
