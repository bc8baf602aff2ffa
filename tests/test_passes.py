"""The ANN → B-SNN passes: each keeps the network's function (read as an ANN), the spiking
invariants hold, calibration statistics are exact, and BatchNorm/biases fold as documented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from zoo import ZOO

from bsnnc.compiler.calibrate import Calibrator, percentile_from_top, to_float32_grid
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import REGISTRY, PassOptions, resolve, run_pipeline
from bsnnc.compiler.passes.base import run_passes
from bsnnc.ir import GraphBuilder, Kind, TensorType, VerifyError
from bsnnc.ir.graph import Graph
from bsnnc.ir.printer import print_graph
from bsnnc.ir.verifier import verify_spiking
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import embedded_file, load_images

RTOL = 1e-4


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / np.max(np.abs(b)))


def stages(g: Graph, calib: Path | str, **opts: object) -> dict[str, Graph]:
    """Every stage of the default pipeline, by pass name."""
    out = {"import": g}

    def dump(i: int, name: str, graph: Graph) -> None:
        out[name] = graph

    options = PassOptions(calib=lambda: load_images(str(calib), split="train"), **opts)  # type: ignore[arg-type]
    run_pipeline(g, options, dump=dump)
    return out


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_stage_computes_the_same_function(name: str, zoo_data: Path) -> None:
    """Read as an ANN (if = relu(x)/θ, readout = identity), every stage equals the import."""
    g0 = import_onnx(zoo_data / f"{name}.onnx")
    data = np.load(zoo_data / f"{name}.npz")
    ref = run_ann(g0, data["x"])[g0.outputs[0]]
    for stage, g in stages(g0, zoo_data / f"{name}.npz").items():
        out = run_ann(g, data["x"])[g.outputs[0]]
        assert rel(out, ref) <= RTOL, f"{name}: stage {stage} changed the function"


@pytest.mark.parametrize(
    ("reset", "stat", "norm"),
    [("subtract", "image-max", "layer"), ("zero", "activations", "layer")],
)
def test_digits_folded_network_is_equivalent(reset: str, stat: str, norm: str) -> None:
    g0 = import_onnx(embedded_file("digits.onnx"))
    images = load_images("digits")
    final = stages(g0, "digits", reset=reset, statistic=stat, granularity=norm)["canonicalize"]
    ref = run_ann(g0, images.x)[g0.outputs[0]]
    out = run_ann(final, images.x)[final.outputs[0]]
    assert rel(out, ref) <= RTOL
    np.testing.assert_array_equal(out.argmax(1), ref.argmax(1))
    ifs = [n for n in final.nodes if n.op == "if"]
    assert len(ifs) == 4 and all(n.attrs["reset"] == reset for n in ifs)
    # weights stay exactly ±1 and no scale reaches an IF
    assert all(
        c.array().dtype == np.int8 for c in final.constants.values() if c.type.kind == Kind.BIPOLAR
    )
    producers = final.node_map()
    assert all(producers[n.value_operands()[0]].op != "scale" for n in ifs)


def test_thresholds_are_dyadic_with_20_significant_bits() -> None:
    g = stages(import_onnx(embedded_file("digits.onnx")), "digits")["canonicalize"]
    for n in g.nodes:
        if n.op == "if":
            theta = float(n.attrs["theta"])
            q = 2.0 ** (np.floor(np.log2(theta)) - 20)
            assert theta / q == round(theta / q)


def test_batchnorm_negative_gamma_flips_signs_not_comparison(zoo_data: Path) -> None:
    g0 = import_onnx(zoo_data / "bn_bias.onnx")
    result = REGISTRY["fold-scales"].run(g0, PassOptions())
    folded = result.graph
    assert result.changed
    # one affine per relu, α/BN/biases merged: before each relu at most scale → bias
    ops = [n.op for n in folded.nodes]
    assert ops.count("scale") <= 3 and "batchnormalization" not in " ".join(ops)
    assert any("negated the weights of 1 output channel" in note for note in result.notes)
    # the scale that reaches the first IF is positive everywhere
    x = np.load(zoo_data / "bn_bias.npz")["x"]
    assert rel(run_ann(folded, x)[folded.outputs[0]], run_ann(g0, x)[g0.outputs[0]]) <= RTOL
    final = stages(g0, zoo_data / "bn_bias.npz")["canonicalize"]
    biases = [n for n in final.nodes if n.op == "bias"]
    assert biases, "BatchNorm shift and conv biases become constant currents (bias before IF)"
    nodes = final.node_map()
    assert all(
        any(u.op in ("if", "readout", "bias") for u in final.users()[b.result]) for b in biases
    )
    assert nodes  # the graph verified


def test_insert_if_around_pooling_all_arrangements(zoo_data: Path) -> None:
    """avg before/after ReLU, max before/after ReLU, global average pooling."""
    seen = set()
    for name in ("avg_before_relu", "avg_after_relu", "max_ceil", "gap_binary"):
        g = stages(import_onnx(zoo_data / f"{name}.onnx"), zoo_data / f"{name}.npz")["canonicalize"]
        verify_spiking(g)
        nodes = g.node_map()
        for n in g.nodes:
            if n.op in ("avgpool", "maxpool", "global_avgpool"):
                src = nodes[n.value_operands()[0]].op
                after = [u.op for u in g.users()[n.result]]
                seen.add((n.op, src, tuple(after)))
    assert ("avgpool", "conv2d", ("if",)) in seen  # avg before ReLU: pooled currents → one IF
    assert ("avgpool", "if", ("if",)) in seen  # avg after ReLU: an IF inserted after the pool
    assert ("maxpool", "if", ("conv2d",)) in seen  # max pools spikes
    assert ("global_avgpool", "if", ("if",)) in seen  # GAP after ReLU: IF inserted


@pytest.mark.parametrize("v_init", [0.0, 0.25])
def test_every_if_neuron_carries_the_initial_membrane(v_init: float, zoo_data: Path) -> None:
    """``v_init`` reaches every IF layer — lowered from a ReLU, moved before a max pool or
    inserted after a pool — through threshold folding (per layer and per channel); 0 leaves
    no attribute."""
    for name in ("avg_after_relu", "max_ceil", "gap_binary"):
        for norm in ("layer", "channel"):
            g = stages(
                import_onnx(zoo_data / f"{name}.onnx"),
                zoo_data / f"{name}.npz",
                v_init=v_init,
                granularity=norm,
            )["canonicalize"]
            ifs = [n for n in g.nodes if n.op == "if"]
            assert any((n.loc or "").endswith(".if") for n in ifs) or name == "max_ceil"
            for n in ifs:
                assert n.attrs.get("init", 0.0) == v_init
                assert ("init" in n.attrs) == (v_init != 0)


def test_max_pool_before_relu_gets_an_if_before_the_pool(zoo_data: Path) -> None:
    g0 = import_onnx(zoo_data / "max_ceil.onnx")
    before = [(n.op, g0.node_map()[n.value_operands()[0]].op) for n in g0.nodes if n.op == "relu"]
    assert ("relu", "maxpool") in before  # the model has max-pool before ReLU
    g = stages(g0, zoo_data / "max_ceil.npz")["insert-if-around-pooling"]
    for n in g.nodes:
        if n.op == "maxpool":
            assert g.node_map()[n.value_operands()[0]].op == "if"
            assert n.type.kind == Kind.SPIKE


def test_binary_layer_reading_real_values_is_rejected() -> None:
    b = GraphBuilder("bad")
    x = b.input("x", TensorType(Kind.F32, (None, 4)))
    w = b.const("w", Kind.BIPOLAR, np.ones((3, 4)))
    g = b.finish([b.add("dense", [x, w])])
    with pytest.raises(VerifyError, match="a binary layer must read spikes"):
        verify_spiking(g)


def test_fold_threshold_needs_calibration(zoo_data: Path) -> None:
    g = import_onnx(zoo_data / "vgg_small.onnx")
    names = [
        "fold-scales",
        "lower-relu-to-if",
        "insert-if-around-pooling",
        "fold-threshold-normalization",
    ]
    with pytest.raises(Exception, match="needs calibration images"):
        run_passes(g, resolve(names, REGISTRY))


@pytest.mark.parametrize("p", [50.0, 99.7, 99.99, 100.0])
def test_percentile_from_top_k_is_exact(p: float) -> None:
    rng = np.random.default_rng(int(p * 100))
    values = np.maximum(rng.standard_normal((3, 5000)), 0).astype(np.float32)
    n = values.shape[1]
    k = n - int(np.floor(p / 100 * (n - 1))) + 1
    top = np.sort(values, axis=1)[:, -k:]
    np.testing.assert_allclose(
        percentile_from_top(top, n, p),
        np.percentile(values.astype(np.float64), p, axis=1),
        rtol=1e-12,
    )


@pytest.mark.parametrize("stat", ["activations", "image-max"])
@pytest.mark.parametrize("channel", [False, True])
def test_calibrator_matches_brute_force(stat: str, channel: bool, zoo_data: Path) -> None:
    g = stages(import_onnx(zoo_data / "vgg_small.onnx"), zoo_data / "vgg_small.npz")[
        "insert-if-around-pooling"
    ]
    x = np.load(zoo_data / "vgg_small.npz")["x"][:40]
    cal = Calibrator(g, 40, 99.0, stat, channel)
    for s in range(0, 40, 16):
        cal.add(x[s : s + 16])
    ifs = [n.result for n in g.nodes if n.op == "if"]
    # all 40 images in one float64 batch: λ, rounded to float32, does not depend on chunking
    acts = run_ann(g, x, keep=ifs, dtype=np.float64)
    for st in cal.result():
        a = acts[st.node]
        if stat == "activations":
            v = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1) if channel else a.reshape(1, -1)
            expect = np.percentile(v.astype(np.float64), 99.0, axis=1)
        else:
            m = (
                a.reshape(40, a.shape[1], -1).max(axis=2)
                if channel
                else a.reshape(40, -1).max(axis=1, keepdims=True)
            )
            expect = np.percentile(m.astype(np.float64), 99.0, axis=0)
        expect = np.where(expect > 0, expect, np.where(st.maximum > 0, st.maximum, 1.0))
        np.testing.assert_array_equal(st.lam, to_float32_grid(expect))


def test_channel_granularity_gives_per_channel_thresholds(zoo_data: Path) -> None:
    g = stages(
        import_onnx(zoo_data / "vgg_small.onnx"), zoo_data / "vgg_small.npz", granularity="channel"
    )["canonicalize"]
    per_channel = [n for n in g.nodes if n.op == "if" and n.const_operands()]
    assert per_channel
    for n in per_channel:
        theta = g.constants[n.const_operands()[0]].array()
        assert theta.shape == (n.type.shape[1],) and np.all(theta > 0) and np.ptp(theta) > 0


def test_calibration_reports_progress_through_the_callback(zoo_data: Path) -> None:
    calls: list[tuple[str, int, int]] = []
    options = PassOptions(
        calib=lambda: load_images(str(zoo_data / "vgg_small.npz")),
        calib_batch=40,
        progress=lambda what, done, total: calls.append((what, done, total)),
    )
    result = run_pipeline(import_onnx(zoo_data / "vgg_small.onnx"), options)
    assert calls[0] == ("calibrating on 96 images", 0, 96)
    assert [done for _, done, _ in calls] == [0, 40, 80, 96]
    assert result.calibration is not None and result.calibration.images == 96
    assert [p.name for p in result.passes][-1] == "canonicalize"


def test_passes_say_whether_they_changed_the_graph(zoo_data: Path) -> None:
    g = import_onnx(zoo_data / "vgg_small.onnx")
    once = run_pipeline(g, names=["dce", "canonicalize"])
    twice = run_pipeline(once.graph, names=["dce", "canonicalize"])
    assert [p.changed for p in twice.passes] == [False, False]
    assert twice.graph is once.graph or print_graph(twice.graph) == print_graph(once.graph)


def _input_bias_graph() -> Graph:
    """input → bias → conv (no pad, ±1) → relu → flatten → bias → dense (±1) → readout-free
    ANN: both biases sit on a weighted op's input and fold into W·b."""
    rng = np.random.default_rng(3)
    b = GraphBuilder("input_bias")
    x = b.input("x", TensorType(Kind.F32, (None, 3, 5, 5)))
    y = b.add("bias", [x, b.const("b0", Kind.F32, rng.normal(size=3))], {"axis": 1, "value": 0.0})
    w0 = b.const("w0", Kind.BIPOLAR, np.where(rng.normal(size=(4, 3, 3, 3)) > 0, 1, -1))
    y = b.add("conv2d", [y, w0])
    y = b.add("relu", [y])
    y = b.add("flatten", [y])
    y = b.add("bias", [y, b.const("b1", Kind.F32, rng.normal(size=36))], {"axis": 1, "value": 0.0})
    w1 = b.const("w1", Kind.BIPOLAR, np.where(rng.normal(size=(6, 36)) > 0, 1, -1))
    y = b.add("dense", [y, w1])
    return b.finish([y])


def test_a_bias_on_a_weighted_input_folds_into_w_times_b(monkeypatch: pytest.MonkeyPatch) -> None:
    import bsnnc.compiler.passes.fold_scales as fs

    g0 = _input_bias_graph()
    x = np.random.default_rng(4).normal(size=(5, 3, 5, 5)).astype(np.float32)
    want = run_ann(g0, x, dtype=np.float64)[g0.outputs[0]]
    texts = []
    for block in (1 << 20, 8 * 27 * 3):  # one block, and blocks of 3 output rows
        monkeypatch.setattr(fs, "_INPUT_BIAS_BLOCK_BYTES", block)
        folded = REGISTRY["fold-scales"].run(g0, PassOptions()).graph
        ops = [n.op for n in folded.nodes]
        assert "bias" in ops and all(
            ops[i - 1] != "bias" for i, op in enumerate(ops) if op in ("conv2d", "dense")
        )
        got = run_ann(folded, x, dtype=np.float64)[folded.outputs[0]]
        assert rel(got, want) <= 1e-6  # the folded biases are stored as float32
        texts.append(print_graph(folded))
    assert texts[0] == texts[1]  # the block size changes no bit
