"""The ``bsnnc`` command line: every subcommand, run in process (plus one subprocess run per
entry point), checked against the library and against facts computed from the ONNX models."""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from clirun import cli, fails, flat, ok
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator
from zoo import ZOO

import bsnnc
from bsnnc.compiler.cli import main
from bsnnc.compiler.passes import PIPELINES, REGISTRY, PassOptions
from bsnnc.ir.graph import Graph, Node
from bsnnc.ir.io import load_ir
from bsnnc.ir.printer import print_graph
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import embedded_file

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
DIGITS_ONNX = TESTS.parent / "runtime" / "data" / "digits.onnx"
DEFAULT = PIPELINES["default"]
CLEANUP = PIPELINES["cleanup"]
STAGES = ["import", *DEFAULT]


def zoo_args(zoo_data: Path, name: str) -> list[Path | str]:
    """A zoo model and its calibration images: ``MODEL --calib MODEL.npz``."""
    return [zoo_data / f"{name}.onnx", "--calib", zoo_data / f"{name}.npz"]


def stage_files() -> list[str]:
    """The files ``--dump-dir`` should write for the default pipeline."""
    return sorted(f"{i:02d}-{name}.{ext}" for i, name in enumerate(STAGES) for ext in ("ir", "npz"))


# ---------------------------------------------------------------- independent ONNX facts


def _weight_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every Conv/Gemm/MatMul weight as an array, evaluating computed weights with onnx."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = [n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    computed = [w for w in names if w not in inits]
    if computed:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        del m.graph.output[:]
        m.graph.output.extend(
            helper.make_tensor_value_info(w, onnx.TensorProto.FLOAT, None) for w in computed
        )
        shape = [1] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
        feeds = {model.graph.input[0].name: np.zeros(shape, np.float32)}
        inits.update(zip(computed, ReferenceEvaluator(m).run(None, feeds), strict=True))
    return {w: np.asarray(inits[w]) for w in names}


def onnx_layers(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Weighted layers of an ONNX model in node order: name, binary?, ops per image.

    Binary means ``|W|`` is constant per output channel (α·sign(W)); op counts are the paper's
    formulas (conv: Cin·kH·kW·Cout·oH·oW, linear: in·out) with oH, oW from ONNX shape inference.
    """
    weights = _weight_arrays(model)
    inferred = shape_inference.infer_shapes(model)
    shapes = {
        vi.name: [
            d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
        ]
        for vi in [*inferred.graph.value_info, *inferred.graph.output]
    }
    rows = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = weights[n.input[1]].astype(np.float64)
        if n.op_type == "Conv":
            cout, cin, kh, kw = w.shape
            oh, ow = shapes[n.output[0]][2:]
            ops = cin * kh * kw * cout * oh * ow
        else:
            trans_b = any(a.name == "transB" and a.i == 1 for a in n.attribute)
            w = w if trans_b else w.T  # [out, in]
            ops = w.shape[0] * w.shape[1]
        a = np.abs(w).reshape(w.shape[0], -1)
        binary = bool(np.all(np.abs(a - a.mean(axis=1, keepdims=True)) <= 1e-5 * a.max()))
        rows.append({"loc": n.name, "binary": binary, "ops": int(ops)})
    return rows


# ---------------------------------------------------------------- version, help, passes


def test_version_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["--version"], capsys)
    assert out.strip() == f"bsnnc {bsnnc.__version__}"


def test_python_m_bsnnc_version() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "bsnnc", "--version"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"bsnnc {bsnnc.__version__}"


def test_a_finished_command_ends_with_its_output_flushed_and_profilers_get_their_data(
    tmp_path: Path,
) -> None:
    """The CLI ends with ``os._exit`` after flushing (skipping the interpreter's teardown),
    except under a profiler, which must still write its file."""
    r = subprocess.run(
        [sys.executable, "-m", "bsnnc", "inspect", DIGITS_ONNX, "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"]  # complete JSON on a pipe
    prof = tmp_path / "cli.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", prof, "-m", "bsnnc", "passes"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "fold-scales" in r.stdout + r.stderr
    assert prof.stat().st_size > 0


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_the_allocator_setting_is_accepted_by_glibc() -> None:
    """The command's process keeps freed memory for reuse (runtime/allocator.py); checked in a
    child, since it changes a process for good."""
    code = "from bsnnc.runtime.allocator import keep_freed_memory as k; print(k())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True"


def test_console_script_version() -> None:
    exe = shutil.which("bsnnc")
    assert exe is not None, "the bsnnc console script is not on PATH"
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"bsnnc {bsnnc.__version__}"


HELP_OPTIONS = {
    "compile": [
        "--output",
        "--input-shape",
        "--pipeline",
        "--passes",
        "--dump-ir",
        "--dump-ir-after",
        "--dump-dir",
        "--pass-timing",
        "--json",
        "--reset",
        "--percentile",
        "--norm",
        "--calib-stat",
        "--calib",
        "--calib-limit",
        "--data-dir",
    ],
    "simulate": [
        "--images",
        "--timesteps",
        "-T",
        "--early-exit",
        "--limit",
        "--batch",
        "--max-memory",
        "--backend",
        "--data-dir",
        "--no-ann",
        "--json",
        "--profile",
        "--plot",
    ],
    "opt": ["--passes", "--output"],
    "verify": ["--images", "--limit", "--batch", "--input-shape", "--rtol", "--seed", "--json"],
    "inspect": ["--input-shape", "--json"],
    "passes": [],
}


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["--help"], capsys)
    assert out.startswith("usage: bsnnc")
    for command in HELP_OPTIONS:
        assert command in out
    assert "--version" in out


@pytest.mark.parametrize("command", sorted(HELP_OPTIONS))
def test_help_of_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok([command, "--help"], capsys)
    assert out.startswith(f"usage: bsnnc {command}")
    for option in HELP_OPTIONS[command]:
        assert option in out, f"{command} --help does not mention {option}"


def test_named_pipelines() -> None:
    """The default pipeline is the ANN → B-SNN conversion; ``cleanup`` is the old default."""
    assert DEFAULT == [
        "fold-scales",
        "lower-relu-to-if",
        "insert-if-around-pooling",
        "fold-threshold-normalization",
        "dce",
        "canonicalize",
    ]
    assert CLEANUP == ["dce", "canonicalize"]
    assert PIPELINES["import"] == []
    assert all(name in REGISTRY for names in PIPELINES.values() for name in names)


def test_passes_lists_registry_and_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["passes"], capsys)
    lines = out.splitlines()
    for name, p in REGISTRY.items():
        assert any(line.split()[:1] == [name] and p.summary in line for line in lines), name
    for pipeline, names in PIPELINES.items():
        rows = [line.split() for line in lines if line.split()[:2] == ["pipeline", pipeline]]
        assert len(rows) == 1, pipeline
        if names:
            assert rows[0] == ["pipeline", pipeline, ",".join(names)]


# ---------------------------------------------------------------- compile (default: convert)


def if_nodes(g: Graph) -> list[Node]:
    """The graph's IF neurons in order."""
    return [n for n in g.nodes if n.op == "if"]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_compile_artifact_matches_dump_ir(
    name: str, zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, images = zoo_data / f"{name}.onnx", zoo_data / f"{name}.npz"
    out = tmp_path / "sub" / "out.tiles"
    _, err = ok(["compile", model, "-o", out, "--calib", images], capsys)
    assert flat(f"wrote {out}") in flat(err)
    artifact = read_artifact(out)
    text, _ = ok(["compile", model, "--dump-ir", "--calib", images], capsys)
    assert print_graph(artifact.graph) == text
    g = artifact.graph
    assert g.name == name
    # the spiking form: ReLUs became IF neurons, the output is a readout
    ops = {n.op for n in g.nodes}
    assert "relu" not in ops and "if" in ops
    assert g.node_map()[g.outputs[0]].op == "readout"
    assert artifact.meta["passes"] == DEFAULT
    assert artifact.meta["source"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert artifact.meta["conversion"] == {
        "reset": "subtract",
        "v_init": PassOptions().v_init,
        "percentile": 99.7,
        "norm": "layer",
        "calib_stat": "image-max",
    }
    assert artifact.meta["dataset"] == str(images)
    facts = json.loads(artifact.extra["calibration.json"])
    assert facts["calibration"]["source"] == str(images)
    assert facts["calibration"]["images"] == 96
    assert [c["loc"] for c in facts["calibration"]["layers"]] == [n.loc for n in if_nodes(g)]
    assert facts["notes"] and all(isinstance(n, str) for n in facts["notes"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.tiles"]  # no temp files left


def test_compile_without_calib_on_8x8_calibrates_on_digits(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 1×8×8 model defaults to the embedded digits training split."""
    out = tmp_path / "a.tiles"
    text, _ = ok(["compile", zoo_dir / "avg_before_relu.onnx", "-o", out, "--json"], capsys)
    calib = json.loads(text)["calibration"]
    with np.load(embedded_file("digits_train.npz")) as z:
        n_train = z["x"].shape[0]
    assert calib["source"] == "digits:train"
    assert calib["images"] == min(512, n_train)  # --calib-limit defaults to 512
    a = read_artifact(out)
    assert a.meta["dataset"] == "digits"
    assert json.loads(a.extra["calibration.json"])["calibration"] == calib


def test_dump_ir_without_output_writes_nothing(
    zoo_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    out, _ = ok(["compile", *zoo_args(zoo_data, "max_ceil"), "--dump-ir"], capsys)
    assert out.startswith("// bsnnc IR v1\ngraph @max_ceil {")
    assert list(tmp_path.iterdir()) == []


def test_compile_without_output_writes_stem_tiles_in_cwd(
    zoo_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    ok(["compile", *zoo_args(zoo_data, "max_ceil")], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["max_ceil.tiles"]
    assert read_artifact(tmp_path / "max_ceil.tiles").graph.name == "max_ceil"


def test_dump_dir_writes_every_stage(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_data / "bn_bias.onnx"
    d = tmp_path / "dump"
    final, _ = ok(["compile", *zoo_args(zoo_data, "bn_bias"), "--dump-ir", "--dump-dir", d], capsys)
    assert sorted(p.name for p in d.iterdir()) == stage_files()
    assert stage_files()[-2:] == ["06-canonicalize.ir", "06-canonicalize.npz"]
    texts = []
    for i, stage in enumerate(STAGES):
        ir = d / f"{i:02d}-{stage}.ir"
        g = load_ir(ir)  # weights beside it, hashes verified
        assert all(c.data is not None for c in g.constants.values())
        assert print_graph(g) == ir.read_text()
        # every stage, spiking ones included, prints back identically through opt
        back, err = ok(["opt", ir, "--passes", ""], capsys)
        assert back == ir.read_text(), f"opt changed {ir.name}"
        assert "not found" not in err
        texts.append(ir.read_text())
    assert texts[-1] == final
    imported, _ = ok(["compile", model, "--pipeline", "import", "--dump-ir"], capsys)
    assert texts[0] == imported
    # the ReLUs turn into IF neurons at lower-relu-to-if, and stay IF neurons
    lowered = STAGES.index("lower-relu-to-if")
    for i, text in enumerate(texts):
        assert (" = relu(" in text) == (i < lowered), STAGES[i]
        assert (" = if(" in text) == (i >= lowered), STAGES[i]
        assert (" = readout(" in text) == (i >= lowered), STAGES[i]


def test_stages_through_opt_equal_the_dumps(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The calibration-free passes run by opt reproduce compile's dumps."""
    d = tmp_path / "dump"
    final, _ = ok(["compile", *zoo_args(zoo_data, "bn_bias"), "--dump-ir", "--dump-dir", d], capsys)
    before = DEFAULT[: DEFAULT.index("fold-threshold-normalization")]
    out, _ = ok(["opt", d / "00-import.ir", "--passes", ",".join(before)], capsys)
    assert out == (d / f"{len(before):02d}-{before[-1]}.ir").read_text()
    calibrated = d / f"{len(before) + 1:02d}-fold-threshold-normalization.ir"
    out, _ = ok(["opt", calibrated, "--passes", "dce,canonicalize"], capsys)
    assert out == final


def test_dump_ir_after_import_goes_to_stderr(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    out, err = ok(
        [
            "compile",
            *zoo_args(zoo_data, "avg_after_relu"),
            "--dump-ir",
            "--dump-ir-after",
            "import",
            "--dump-dir",
            d,
        ],
        capsys,
    )
    assert err == "// ----- IR after import -----\n" + (d / "00-import.ir").read_text()
    assert out == (d / f"{len(DEFAULT):02d}-{DEFAULT[-1]}.ir").read_text()


def test_dump_ir_after_all_dumps_every_stage_in_order(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    args = [*zoo_args(zoo_data, "avg_after_relu"), "--dump-ir", "--dump-dir", d]
    _, err = ok(["compile", *args, "--dump-ir-after", "all"], capsys)
    headers = [line for line in err.splitlines() if line.startswith("// ----- IR after")]
    assert headers == [f"// ----- IR after {s} -----" for s in STAGES]
    assert err == "".join(
        f"// ----- IR after {s} -----\n" + (d / f"{i:02d}-{s}.ir").read_text()
        for i, s in enumerate(STAGES)
    )


@pytest.mark.parametrize("name", sorted(ZOO))
def test_compile_json_layers_match_the_model(
    name: str, zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.tiles"
    text, _ = ok(["compile", *zoo_args(zoo_data, name), "-o", out, "--json"], capsys)
    report = json.loads(text)
    assert report["output"] == str(out) and out.is_file()
    assert report["graph"] == name
    assert [p["name"] for p in report["passes"]] == DEFAULT
    expected = onnx_layers(ZOO[name]())
    layers = report["layers"]
    assert [r["loc"] for r in layers] == [e["loc"] for e in expected]
    assert [r["binary"] for r in layers] == [e["binary"] for e in expected]
    assert [r["ops"] for r in layers] == [e["ops"] for e in expected]
    assert [r["index"] for r in layers] == list(range(len(expected)))
    for r in layers:
        if r["binary"]:  # ±1 crossbar weights reading spikes, integer currents, α folded away
            assert r["weight"].startswith("bipolar[")
            assert r["input"].startswith("spike[")
            assert r["output"].startswith("i32[")
            assert r["alpha"] == "folded"
        else:
            assert r["weight"].startswith("f32[") and r["alpha"] == ""
    # calibration: one λ per IF neuron layer of the compiled graph, 0 < λ ≤ max at p = 99.7
    calib = report["calibration"]
    assert calib["source"] == str(zoo_data / f"{name}.npz")
    assert calib["images"] == 96
    assert calib["percentile"] == 99.7
    assert calib["statistic"] == "image-max" and calib["granularity"] == "layer"
    ifs = if_nodes(read_artifact(out).graph)
    assert [c["loc"] for c in calib["layers"]] == [n.loc for n in ifs]
    for c in calib["layers"]:
        assert len(c["lambda"]) == len(c["max"]) == 1
        assert 0 < c["lambda"][0] <= c["max"][0]
    # a note per IF layer from the pass that set its threshold
    for n in ifs:
        assert any(
            note.startswith(f"fold-threshold-normalization: {n.loc}:") for note in report["notes"]
        ), n.loc


def test_calibration_facts_are_keyed_by_loc_and_position(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The calibration facts (compile --json, calibration.json) name each IF layer by its loc
    and its position among the IF layers — names that canonicalize's renumbering keeps, so the
    facts match the graph they ship with without any repair."""
    out = tmp_path / "m.tiles"
    text, _ = ok(["compile", *zoo_args(zoo_data, "max_ceil"), "-o", out, "--json"], capsys)
    ifs = if_nodes(read_artifact(out).graph)
    layers = json.loads(text)["calibration"]["layers"]
    assert [(c["index"], c["loc"]) for c in layers] == [(i, n.loc) for i, n in enumerate(ifs)]
    assert all("node" not in c for c in layers)


def test_compile_json_avg_before_relu_binary_middle(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The zoo docstring: first and last layers full precision, the three between binary; α is
    a positive per-tensor factor in the ANN form and folded into thresholds in the B-SNN."""
    model = zoo_dir / "avg_before_relu.onnx"
    text, _ = ok(
        ["compile", model, "--pipeline", "cleanup", "--json", "-o", tmp_path / "a.tiles"], capsys
    )
    ann = json.loads(text)["layers"]
    text, _ = ok(["compile", model, "-o", tmp_path / "s.tiles", "--json"], capsys)
    snn = json.loads(text)["layers"]
    for layers in (ann, snn):
        assert [r["op"] for r in layers] == ["conv2d"] * 3 + ["dense"] * 2
        assert [r["binary"] for r in layers] == [False, True, True, True, False]
        assert [r["weight"].split("[")[0] for r in layers] == ["f32", *["bipolar"] * 3, "f32"]
    assert all(float(r["alpha"]) > 0 for r in ann if r["binary"])
    assert [r["output"].split("[")[0] for r in ann] == ["f32"] * 5
    assert [r["alpha"] for r in snn] == ["", "folded", "folded", "folded", ""]
    assert [r["output"].split("[")[0] for r in snn] == ["f32", "i32", "i32", "i32", "f32"]


def test_pass_timing(zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = ok(
        ["compile", *zoo_args(zoo_data, "vgg_small"), "-o", tmp_path / "v.tiles", "--pass-timing"],
        capsys,
    )
    timing = [line.split() for line in err.splitlines() if line.rstrip().endswith(" ms")]
    assert [t[0] for t in timing] == DEFAULT
    assert all(float(t[1]) >= 0 for t in timing)


def test_explicit_passes_and_named_pipelines(
    zoo_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*zoo_args(zoo_data, "sign_scale"), "--dump-ir"]
    default, _ = ok(["compile", *args], capsys)
    explicit, _ = ok(["compile", *args, "--passes", ",".join(DEFAULT)], capsys)
    assert explicit == default
    cleanup, _ = ok(["compile", *args, "--pipeline", "cleanup"], capsys)
    explicit, _ = ok(["compile", *args, "--passes", "dce,canonicalize"], capsys)
    assert explicit == cleanup != default
    assert " = relu(" in cleanup and " = if(" not in cleanup
    imported, _ = ok(["compile", *args, "--pipeline", "import"], capsys)
    none, _ = ok(["compile", *args, "--passes", ""], capsys)
    assert none == imported


def test_conversion_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "z.tiles"
    options = {
        "--reset": "zero",
        "--percentile": "max",
        "--norm": "channel",
        "--calib-stat": "activations",
        "--calib-limit": "10",
        "--v-init": "0.25",
    }
    text, _ = ok(
        ["compile", "digits", "-o", out, "--json", *[x for kv in options.items() for x in kv]],
        capsys,
    )
    calib = json.loads(text)["calibration"]
    assert calib["images"] == 10 and calib["source"] == "digits:train"
    assert calib["percentile"] == 100.0
    assert calib["statistic"] == "activations" and calib["granularity"] == "channel"
    a = read_artifact(out)
    ifs = if_nodes(a.graph)
    assert ifs and all(n.attrs["reset"] == "zero" and n.attrs["init"] == 0.25 for n in ifs)
    for n, c in zip(ifs, calib["layers"], strict=True):
        channels = n.type.shape[1]
        assert len(c["lambda"]) == len(c["max"]) == channels  # one λ per channel
        # percentile max: λ is the maximum (1 for a channel that never activates)
        assert c["lambda"] == [m if m > 0 else 1.0 for m in c["max"]]
    assert a.meta["conversion"] == {
        "reset": "zero",
        "v_init": 0.25,
        "percentile": 100.0,
        "norm": "channel",
        "calib_stat": "activations",
    }


def _relu_activations(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every Relu node's output (by node name), computed by onnxruntime."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    relus = [n for n in m.graph.node if n.op_type == "Relu"]
    m.graph.output.extend(
        helper.make_tensor_value_info(n.output[0], onnx.TensorProto.FLOAT, None) for n in relus
    )
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run([n.output[0] for n in relus], {m.graph.input[0].name: x})
    return {n.name: np.asarray(o) for n, o in zip(relus, outs, strict=True)}


@pytest.mark.parametrize("percentile", ["99.7", "90", "max"])
def test_calibration_lambdas_match_onnxruntime(
    percentile: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """λ of each layer = the percentile of the per-image maximum ReLU output (the paper's
    statistic) over the first N training images, computed here from the ONNX model."""
    n = 200
    options = ["--percentile", percentile, "--calib-limit", str(n)]
    text, _ = ok(["compile", "digits", "-o", tmp_path / "d.tiles", "--json", *options], capsys)
    calib = json.loads(text)["calibration"]
    with np.load(embedded_file("digits_train.npz")) as z:
        x = z["x"][:n].astype(np.float32)
    acts = _relu_activations(onnx.load(DIGITS_ONNX), x)
    assert [c["loc"] for c in calib["layers"]] == list(acts)
    p = 100.0 if percentile == "max" else float(percentile)
    for c in calib["layers"]:
        per_image = acts[c["loc"]].reshape(n, -1).max(axis=1)
        np.testing.assert_allclose(c["max"], [per_image.max()], rtol=1e-4)
        np.testing.assert_allclose(c["lambda"], [np.percentile(per_image, p)], rtol=1e-4)


# ---------------------------------------------------------------- digits and opt round trip


def test_compile_embedded_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    ok(["compile", "digits"], capsys)
    a = read_artifact(tmp_path / "digits.tiles")
    assert a.graph.name == "digits"
    assert a.meta["source"]["file"] == "digits.onnx"
    assert a.meta["passes"] == DEFAULT
    assert a.meta["dataset"] == "digits"
    assert embedded_file("digits.onnx").read_bytes() == DIGITS_ONNX.read_bytes()


def test_digits_dump_ir_prints_back_identically_through_opt_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    text, _ = ok(["compile", DIGITS_ONNX, "--dump-ir", "--dump-dir", d], capsys)
    assert "graph @digits {" in text
    assert " = if(" in text and " = readout(" in text  # the default pipeline converted it
    final = d / f"{len(DEFAULT):02d}-{DEFAULT[-1]}.ir"
    back, err = ok(["opt", final], capsys)
    assert back == text
    assert "not found" not in err  # the weights beside it were used
    # and an IR that is not yet canonical prints back unchanged too
    first = d / "00-import.ir"
    back, _ = ok(["opt", first], capsys)
    assert back == first.read_text()


def test_digits_dump_ir_prints_back_identically_through_opt_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text, _ = ok(["compile", DIGITS_ONNX, "--dump-ir"], capsys)
    assert " = if(" in text
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    back, _ = ok(["opt", "-"], capsys)
    assert back == text


# ---------------------------------------------------------------- opt


def test_opt_passes_equal_compile_pipeline(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_dir / "matmul_reshape.onnx"
    d = tmp_path / "dump"
    ok(["compile", model, "--pipeline", "import", "--dump-ir", "--dump-dir", d], capsys)
    assert sorted(p.name for p in d.iterdir()) == ["00-import.ir", "00-import.npz"]
    out, _ = ok(["opt", d / "00-import.ir", "--passes", "dce,canonicalize"], capsys)
    expected, _ = ok(["compile", model, "--dump-ir", "--pipeline", "cleanup"], capsys)
    assert out == expected


def test_opt_unknown_pass(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    ok(["compile", zoo_dir / "avg_before_relu.onnx", "--dump-ir", "--dump-dir", d], capsys)
    code = cli(["opt", d / "00-import.ir", "--passes", "dce,fold-everything"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "fold-everything" in err
    for name in REGISTRY:
        assert name in err


def test_opt_output_writes_ir_and_weights(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    ok(
        [
            "compile",
            zoo_dir / "max_ceil.onnx",
            "--pipeline",
            "import",
            "--dump-ir",
            "--dump-dir",
            d,
        ],
        capsys,
    )
    printed, _ = ok(["opt", d / "00-import.ir", "--passes", "canonicalize"], capsys)
    out = tmp_path / "o" / "result.ir"
    stdout, _ = ok(["opt", d / "00-import.ir", "--passes", "canonicalize", "-o", out], capsys)
    assert stdout == ""
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.ir", "result.npz"]
    assert out.read_text() == printed
    g = load_ir(out)
    assert all(c.data is not None for c in g.constants.values())


def test_opt_without_weights_still_prints(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    text, _ = ok(["compile", *zoo_args(zoo_data, "max_ceil"), "--dump-ir", "--dump-dir", d], capsys)
    lone = tmp_path / "lone.ir"
    lone.write_text(text)
    out, err = ok(["opt", lone], capsys)
    assert out == text
    assert flat(f"{tmp_path / 'lone.npz'} not found") in flat(err)


# ---------------------------------------------------------------- verify


@pytest.mark.parametrize("name", sorted(ZOO))
def test_verify_zoo_random_inputs(
    name: str, zoo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = ok(["verify", zoo_dir / f"{name}.onnx", "--json"], capsys)
    report = json.loads(out)
    assert report["ok"] is True
    assert report["count"] == 16
    assert report["images"].startswith("random")
    assert len(report["outputs"]) == 1
    for row in report["outputs"]:
        assert row["ok"] is True
        assert 0 <= row["max_rel_error"] <= 1e-4


def test_verify_table_output(zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = ok(["verify", zoo_dir / "avg_before_relu.onnx", "--limit", "4"], capsys)
    assert out == ""
    assert "ok" in err and "4 images" in err


#: the PyTorch exports (the Brevitas QONNX exports, ``brevitas_*``, carry custom-domain ops that
#: onnxruntime cannot run: ``verify`` does not apply to them)
FIXTURE_MODELS = sorted(p for p in FIXTURES.glob("*.onnx") if not p.name.startswith("brevitas_"))
QONNX_MODELS = sorted(FIXTURES.glob("brevitas_*.onnx"))


@pytest.mark.parametrize("model", QONNX_MODELS, ids=[p.stem for p in QONNX_MODELS])
def test_qonnx_exports_compile_without_calibration_images(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """λ = L·Δ from each quantizer; --calib is not needed (tests/test_qonnx.py checks more)."""
    out = tmp_path / "q.tiles"
    _, err = ok(["compile", model, "-o", out], capsys)
    assert flat("thresholds of all 4 IF layers from their quantizers") in flat(err)
    meta = json.loads(read_artifact(out).extra["calibration.json"])["calibration"]
    assert meta["images"] == 0 and meta["source"] == "quantizers"
    assert all(layer["from"] == "quantizer" for layer in meta["layers"])


@pytest.mark.parametrize("model", QONNX_MODELS[:1], ids=[p.stem for p in QONNX_MODELS[:1]])
def test_verify_explains_that_onnxruntime_cannot_run_qonnx(
    model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(["verify", model], capsys, "cannot run QONNX's custom ops", "BipolarQuant, Quant")


def test_fixtures_exist() -> None:
    names = {p.stem for p in FIXTURE_MODELS}
    assert any("classic" in n for n in names) and any("dynamo" in n for n in names)


@pytest.mark.parametrize("model", FIXTURE_MODELS, ids=[p.stem for p in FIXTURE_MODELS])
def test_verify_torch_exports(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["verify", model, "--json", "--limit", "8"], capsys)
    report = json.loads(out)
    assert report["ok"] is True and report["count"] == 8
    assert all(r["max_rel_error"] <= 1e-4 for r in report["outputs"])


def test_verify_digits_images_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["verify", "digits", "--images", "digits", "--json"], capsys)
    report = json.loads(out)
    with np.load(embedded_file("digits_test.npz")) as z:
        n = z["x"].shape[0]
    assert report["ok"] is True and report["count"] == n
    (row,) = report["outputs"]
    assert row["accuracy_reference"] == row["accuracy_onnxruntime"]
    assert row["max_rel_error"] <= 1e-4
    # the PyTorch model's own test accuracy, recorded when the example exported digits.onnx
    torch_facts = json.loads((FIXTURES / "digits_torch.json").read_text())
    assert row["accuracy_reference"] == torch_facts["test_accuracy"]


def test_verify_limit(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["verify", "digits", "--images", "digits", "--limit", "10", "--json"], capsys)
    assert json.loads(out)["count"] == 10


def test_verify_failure_exits_1(zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = zoo_dir / "vgg_small.onnx"
    out, _ = ok(["verify", model, "--json"], capsys)
    (row,) = json.loads(out)["outputs"]
    assert row["max_rel_error"] > 0, "need a model with nonzero float error for this test"
    assert cli(["verify", model, "--json", "--rtol", "0"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["ok"] is False and report["outputs"][0]["ok"] is False
    assert report["outputs"][0]["max_rel_error"] == row["max_rel_error"]
    assert "Traceback" not in err
    assert cli(["verify", model, "--rtol", "0"]) == 1
    _, err = capsys.readouterr()
    assert "FAIL" in err


# ---------------------------------------------------------------- inspect


@pytest.mark.parametrize("name", ["avg_before_relu", "max_ceil", "matmul_reshape", "vgg_small"])
def test_inspect_onnx_ir_and_tiles_agree(
    name: str, zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ANN form (cleanup pipeline): .onnx, .ir and .tiles report the same layers."""
    model = zoo_data / f"{name}.onnx"
    d, tiles = tmp_path / "dump", tmp_path / f"{name}.tiles"
    ok(["compile", model, "--pipeline", "cleanup", "-o", tiles, "--dump-dir", d], capsys)
    final = d / f"{len(CLEANUP):02d}-{CLEANUP[-1]}.ir"
    reports = {}
    for kind, path in (("onnx", model), ("ir", final), ("artifact", tiles)):
        out, _ = ok(["inspect", path, "--json"], capsys)
        reports[kind] = json.loads(out)
        assert reports[kind]["kind"] == kind
        assert reports[kind]["graph"] == name
    assert reports["onnx"]["layers"] == reports["ir"]["layers"] == reports["artifact"]["layers"]
    assert reports["onnx"]["inputs"] == reports["ir"]["inputs"] == reports["artifact"]["inputs"]
    expected = onnx_layers(ZOO[name]())
    got = [{k: r[k] for k in ("loc", "binary", "ops")} for r in reports["onnx"]["layers"]]
    assert got == expected
    assert reports["artifact"]["passes"] == CLEANUP


@pytest.mark.parametrize("name", ["avg_before_relu", "max_ceil", "matmul_reshape", "vgg_small"])
def test_inspect_converted_ir_and_tiles_agree(
    name: str, zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The B-SNN (default pipeline): .ir and .tiles agree; against the ONNX model the same
    layers, ops and ±1 weights, with α folded and binary layers producing integer currents."""
    model = zoo_data / f"{name}.onnx"
    d, tiles = tmp_path / "dump", tmp_path / f"{name}.tiles"
    ok(["compile", *zoo_args(zoo_data, name), "-o", tiles, "--dump-dir", d], capsys)
    final = d / f"{len(DEFAULT):02d}-{DEFAULT[-1]}.ir"
    reports = {}
    for kind, path in (("onnx", model), ("ir", final), ("artifact", tiles)):
        out, _ = ok(["inspect", path, "--json"], capsys)
        reports[kind] = json.loads(out)
        assert reports[kind]["kind"] == kind
    assert reports["ir"]["layers"] == reports["artifact"]["layers"]
    assert reports["onnx"]["inputs"] == reports["ir"]["inputs"] == reports["artifact"]["inputs"]
    same = ("loc", "op", "binary", "ops", "weight")
    assert [{k: r[k] for k in same} for r in reports["artifact"]["layers"]] == [
        {k: r[k] for k in same} for r in reports["onnx"]["layers"]
    ]
    for r in reports["artifact"]["layers"]:
        if r["binary"]:
            assert r["alpha"] == "folded" and r["output"].startswith("i32[")
    art = reports["artifact"]
    assert art["passes"] == DEFAULT
    assert art["dataset"] == str(zoo_data / f"{name}.npz")
    assert art["conversion"]["reset"] == "subtract"


def test_inspect_op_counts_by_hand(zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """avg_before_relu, counted from its definition in zoo.py (input 1×8×8)."""
    out, _ = ok(["inspect", zoo_dir / "avg_before_relu.onnx", "--json"], capsys)
    ops = [r["ops"] for r in json.loads(out)["layers"]]
    assert ops == [
        1 * 3 * 3 * 8 * 8 * 8,  # conv 1→8 on 8×8
        8 * 3 * 3 * 16 * 8 * 8,  # conv 8→16 on 8×8
        16 * 3 * 3 * 16 * 4 * 4,  # conv 16→16 on 4×4 (after a 2×2 pool)
        64 * 32,  # linear 64→32
        32 * 10,  # linear 32→10
    ]


def test_inspect_table(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = ok(["inspect", zoo_dir / "avg_before_relu.onnx"], capsys)
    assert out == ""
    assert "@avg_before_relu" in err and "3/5" in err and "folded" not in err
    tiles = tmp_path / "a.tiles"
    ok(["compile", zoo_dir / "avg_before_relu.onnx", "-o", tiles], capsys)
    out, err = ok(["inspect", tiles], capsys)
    assert out == ""
    assert "@avg_before_relu" in err and "(artifact)" in err and "3/5" in err
    assert err.count("folded") == 3


def test_inspect_embedded_digits(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["inspect", "digits", "--json"], capsys)
    report = json.loads(out)
    assert report["graph"] == "digits"
    assert report["inputs"][0]["type"] == "f32[?,1,8,8]"
    expected = onnx_layers(onnx.load(DIGITS_ONNX))
    assert [(r["binary"], r["ops"]) for r in report["layers"]] == [
        (e["binary"], e["ops"]) for e in expected
    ]


# ---------------------------------------------------------------- simulate

SIM_KEYS = {
    "images",
    "timesteps",
    "ann_accuracy",
    "accuracy_per_timestep",
    "final_accuracy",
    "spike_rates",
    "normalized_ops",
    "predictions",
    "spike_digest",
}


@pytest.fixture(scope="module")
def digits_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bsnnc compile digits -o digits.tiles`` (the default pipeline, digits calibration)."""
    out = tmp_path_factory.mktemp("digits") / "digits.tiles"
    assert cli(["compile", "digits", "-o", out]) == 0
    return out


def simulate(
    tiles: Path, capsys: pytest.CaptureFixture[str], *args: object, limit: int = 60, T: int = 16
) -> dict[str, Any]:
    """``bsnnc simulate TILES --json --limit N -T T ARGS``: the JSON object."""
    out, _ = ok(["simulate", tiles, "--json", "--limit", limit, "-T", T, *args], capsys)
    report: dict[str, Any] = json.loads(out)
    return report


def digits_test_labels(n: int) -> np.ndarray:
    with np.load(embedded_file("digits_test.npz")) as z:
        return np.asarray(z["y"][:n])


def test_simulate_digits_json(digits_tiles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n, T = 60, 16
    r = simulate(digits_tiles, capsys, limit=n, T=T)
    assert set(r) >= SIM_KEYS, SIM_KEYS - set(r)
    assert "mean_exit_step" not in r and "exit_step_histogram" not in r
    assert r["images"] == n and r["timesteps"] == T
    assert r["images_source"] == "digits:test"  # the artifact's data set, test split
    curve = r["accuracy_per_timestep"]
    assert len(curve) == T and all(0 <= a <= 1 for a in curve)
    preds = np.array(r["predictions"])
    assert preds.shape == (n,) and set(preds.tolist()) <= set(range(10))
    y = digits_test_labels(n)
    assert r["final_accuracy"] == pytest.approx(float(np.mean(preds == y)))
    assert r["final_accuracy"] == pytest.approx(curve[-1])  # no early exit: step T
    assert curve[-1] > 0.5  # far above chance (0.1): the conversion works
    # the folded B-SNN read as an ANN is as accurate as the ONNX model on the same images
    out, _ = ok(["verify", "digits", "--images", "digits", "--limit", n, "--json"], capsys)
    (row,) = json.loads(out)["outputs"]
    assert r["ann_accuracy"] == pytest.approx(row["accuracy_reference"])
    ifs = if_nodes(read_artifact(digits_tiles).graph)
    assert len(r["spike_rates"]) == len(ifs)
    assert all(0 <= v <= 1 for v in r["spike_rates"].values())
    assert any(v > 0 for v in r["spike_rates"].values())
    assert r["normalized_ops"] > 0
    assert len(r["spike_digest"]) == 64 and int(r["spike_digest"], 16) >= 0


def test_simulate_early_exit(digits_tiles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    n, T = 60, 16
    full = simulate(digits_tiles, capsys, limit=n, T=T)
    r = simulate(digits_tiles, capsys, "--early-exit", 3, limit=n, T=T)
    assert set(r) >= SIM_KEYS | {"mean_exit_step", "exit_step_histogram"}
    hist = r["exit_step_histogram"]
    assert len(hist) == T and sum(hist) == n and min(hist) >= 0
    mean = sum((t + 1) * c for t, c in enumerate(hist)) / n
    assert r["mean_exit_step"] == pytest.approx(mean)
    assert 1 <= r["mean_exit_step"] < T  # some images stopped early at V = 3
    assert r["final_accuracy"] == pytest.approx(
        float(np.mean(np.array(r["predictions"]) == digits_test_labels(n)))
    )
    # #OPS are counted up to each image's exit only
    assert r["normalized_ops"] < full["normalized_ops"]
    # a threshold that is never crossed: everything runs to T, as without early exit
    never = simulate(digits_tiles, capsys, "--early-exit", 1e12, limit=n, T=T)
    assert never["exit_step_histogram"] == [0] * (T - 1) + [n]
    assert never["mean_exit_step"] == T
    assert never["predictions"] == full["predictions"]
    assert never["normalized_ops"] == pytest.approx(full["normalized_ops"])


def test_simulate_is_independent_of_chunking(
    digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [
        simulate(digits_tiles, capsys, "--batch", 7),
        simulate(digits_tiles, capsys, "--batch", 64),
        simulate(digits_tiles, capsys, "--batch", 1),  # one image per chunk (--max-memory ≥ 16M)
    ]
    for r in runs[1:]:
        assert r["spike_digest"] == runs[0]["spike_digest"]
        assert r["predictions"] == runs[0]["predictions"]
        assert r["accuracy_per_timestep"] == runs[0]["accuracy_per_timestep"]
        assert r["spike_rates"] == runs[0]["spike_rates"]
    # the digest does depend on the spikes
    other = simulate(digits_tiles, capsys, limit=59)
    assert other["spike_digest"] != runs[0]["spike_digest"]


def test_simulate_reset_zero_and_no_ann(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zero = tmp_path / "zero.tiles"
    ok(["compile", "digits", "-o", zero, "--reset", "zero"], capsys)
    a = simulate(digits_tiles, capsys)
    b = simulate(zero, capsys, "--no-ann")
    assert a["reset"] == "subtract" and b["reset"] == "zero"
    assert b["ann_accuracy"] is None and a["ann_accuracy"] is not None
    assert b["spike_digest"] != a["spike_digest"]


def test_simulate_table(digits_tiles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = ok(["simulate", digits_tiles, "--limit", 20, "-T", 8], capsys)
    assert out == ""
    for fragment in ("20 images", "T=8", "ANN accuracy", "normalized #OPS", "spike rate"):
        assert flat(fragment) in flat(err), fragment


@pytest.mark.parametrize("name", sorted(ZOO))
def test_simulate_zoo_models(
    name: str, zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every zoo arrangement converts and simulates; without --images the calibration .npz
    recorded in the artifact is used. Its labels are the ANN's own predictions, so the
    converted network read as an ANN must be 100 % accurate (the folding is exact)."""
    tiles = tmp_path / f"{name}.tiles"
    ok(["compile", *zoo_args(zoo_data, name), "-o", tiles], capsys)
    out, _ = ok(["simulate", tiles, "-T", 8, "--json"], capsys)
    r = json.loads(out)
    assert r["images_source"] == str(zoo_data / f"{name}.npz")
    assert r["images"] == 96 and len(r["predictions"]) == 96
    assert r["ann_accuracy"] == 1.0
    assert len(r["accuracy_per_timestep"]) == 8
    assert len(r["spike_rates"]) == len(if_nodes(read_artifact(tiles).graph))


def test_importing_bsnnc_leaves_the_process_alone() -> None:
    """Importing bsnnc (and the CLI, which imports everything) changes no environment
    variable, and OpenBLAS loads the kernels it would load without bsnnc."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["OPENBLAS_VERBOSE"] = "2"
    script = (
        "import os, json; before = dict(os.environ); import bsnnc, bsnnc.compiler.cli, numpy; "
        "print(json.dumps(sorted(set(os.environ.items()) ^ set(before.items()))))"
    )
    ours = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    plain = subprocess.run(
        [sys.executable, "-c", "import numpy"], env=env, capture_output=True, text=True
    )
    assert ours.returncode == 0 and plain.returncode == 0, ours.stderr + plain.stderr
    assert json.loads(ours.stdout.strip().splitlines()[-1]) == []
    core = [line for line in (plain.stdout + plain.stderr).splitlines() if line.startswith("Core")]
    assert core, "OPENBLAS_VERBOSE=2 reports the core type"
    assert core[0] in ours.stdout + ours.stderr


def _compile_ir_under(core: str, model: Path, data: Path, tmp_path: Path) -> str:
    env = {**os.environ, "OPENBLAS_CORETYPE": core}
    argv = ["compile", str(model), "--calib", str(data), "--dump-dir", str(tmp_path / core)]
    argv += ["-o", str(tmp_path / f"{core}.tiles")]
    proc = subprocess.run(
        [sys.executable, "-m", "bsnnc", *argv], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return "".join(p.read_text() for p in sorted((tmp_path / core).glob("*.ir")))


def test_calibrated_thresholds_do_not_depend_on_the_blas_kernels(
    zoo_data: Path, tmp_path: Path
) -> None:
    """Calibration runs the ANN in float64 and rounds λ to float32, so OpenBLAS's Haswell
    and Sandybridge kernels (which sum in different orders, and move float32 activations in
    the last bit) give the same thresholds and the same IR after every pass."""
    model, data = zoo_data / "vgg_small.onnx", zoo_data / "vgg_small.npz"
    a = _compile_ir_under("Haswell", model, data, tmp_path)
    b = _compile_ir_under("Sandybridge", model, data, tmp_path)
    assert "theta=" in a
    assert a == b


INLINE_IR = """graph @t {
  const @w : bipolar[2,2] = [[1,-1],[-1,1]]
  %x = input() : f32[?,2]
  %0 = dense(%x, @w) : f32[?,2]
  %1 = relu(%0) : f32[?,2]
  return %1
}
"""


def test_opt_inline_constants_round_trip_without_a_weights_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An IR file whose constants are all inline needs no .npz: opt neither warns about it
    nor loses the data, prints it back inline with --inline-max, and can write -o."""
    src = tmp_path / "t.ir"
    src.write_text(INLINE_IR)
    out, errs = ok(["opt", src, "--passes", "fold-scales", "--inline-max", "16"], capsys)
    assert "not found" not in errs
    assert "const @w : bipolar[2,2] = [[1,-1],[-1,1]]" in out
    hashed, _ = ok(["opt", src], capsys)
    assert "= [" not in hashed and "#" in hashed
    ok(["opt", src, "-o", tmp_path / "o.ir"], capsys)
    assert load_ir(tmp_path / "o.ir").constants["w"].array().tolist() == [[1, -1], [-1, 1]]
    assert load_ir(src).constants["w"].array().tolist() == [[1, -1], [-1, 1]]


@pytest.mark.parametrize("value", ["-1", "65537", "x"])
def test_opt_inline_max_range(value: str, tmp_path: Path) -> None:
    src = tmp_path / "t.ir"
    src.write_text(INLINE_IR)
    with pytest.raises(SystemExit) as e:
        main(["opt", str(src), "--inline-max", value])
    assert e.value.code == 2


def test_help_loads_no_heavy_library() -> None:
    """``bsnnc --help`` (and every subcommand's) must be instant: building the parser imports
    neither onnx, onnxruntime nor networkx — they load when a command runs (a module check, not
    a timing: these machines are noisy)."""
    script = (
        "import sys, contextlib, io\n"
        "from bsnnc.compiler.cli import main\n"
        "for argv in (['--help'], ['compile', '--help'], ['simulate', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'networkx') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
