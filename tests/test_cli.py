"""The ``bsnnc`` command line: every subcommand, run in process (plus one subprocess run per
entry point), checked against the library and against facts computed from the ONNX models."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator
from zoo import ZOO

import bsnnc
from bsnnc.compiler.cli import main
from bsnnc.compiler.passes import PIPELINES, REGISTRY
from bsnnc.ir.io import load_ir
from bsnnc.ir.printer import print_graph
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import embedded_file

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
DIGITS_ONNX = TESTS.parent / "runtime" / "data" / "digits.onnx"
DEFAULT = PIPELINES["default"]
STAGES = ["import", *DEFAULT]


def cli(argv: Sequence[str]) -> int:
    """Run ``bsnnc argv`` in process; the exit code (argparse exits are caught)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:  # --help, --version and usage errors exit through argparse
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def ok(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """Run a command that must succeed; (stdout, stderr)."""
    code = cli(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"bsnnc {' '.join(map(str, argv))} exited {code}:\n{err}"
    return out, err


def flat(text: str) -> str:
    """``text`` without whitespace: rich wraps stderr at the terminal width."""
    return "".join(text.split())


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


def test_passes_lists_registry_and_pipelines(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["passes"], capsys)
    lines = out.splitlines()
    for name in ("dce", "canonicalize"):
        assert name in REGISTRY
        assert any(line.split()[:1] == [name] and REGISTRY[name].summary in line for line in lines)
    default = [line.split() for line in lines if line.startswith("pipeline default")]
    assert default == [["pipeline", "default", ",".join(DEFAULT)]]
    assert any(line.startswith("pipeline import") for line in lines)


# ---------------------------------------------------------------- compile


@pytest.mark.parametrize("name", sorted(ZOO))
def test_compile_artifact_matches_dump_ir(
    name: str, zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_dir / f"{name}.onnx"
    out = tmp_path / "sub" / "out.tiles"
    _, err = ok(["compile", model, "-o", out], capsys)
    assert flat(f"wrote {out}") in flat(err)
    artifact = read_artifact(out)
    text, _ = ok(["compile", model, "--dump-ir"], capsys)
    assert print_graph(artifact.graph) == text
    assert artifact.graph.name == name
    assert artifact.meta["passes"] == DEFAULT
    assert artifact.meta["source"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.tiles"]  # no temp files left


def test_dump_ir_without_output_writes_nothing(
    zoo_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    out, _ = ok(["compile", zoo_dir / "max_ceil.onnx", "--dump-ir"], capsys)
    assert out.startswith("// bsnnc IR v1\ngraph @max_ceil {")
    assert list(tmp_path.iterdir()) == []


def test_compile_without_output_writes_stem_tiles_in_cwd(
    zoo_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    ok(["compile", zoo_dir / "max_ceil.onnx"], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["max_ceil.tiles"]
    assert read_artifact(tmp_path / "max_ceil.tiles").graph.name == "max_ceil"


def test_dump_dir_writes_every_stage(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_dir / "bn_bias.onnx"
    d = tmp_path / "dump"
    final, _ = ok(["compile", model, "--dump-ir", "--dump-dir", d], capsys)
    assert sorted(p.name for p in d.iterdir()) == stage_files()
    texts = []
    for i, stage in enumerate(STAGES):
        ir = d / f"{i:02d}-{stage}.ir"
        g = load_ir(ir)  # weights beside it, hashes verified
        assert all(c.data is not None for c in g.constants.values())
        assert print_graph(g) == ir.read_text()
        texts.append(ir.read_text())
    assert texts[-1] == final
    imported, _ = ok(["compile", model, "--pipeline", "import", "--dump-ir"], capsys)
    assert texts[0] == imported


def test_dump_ir_after_import_goes_to_stderr(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    model = zoo_dir / "avg_after_relu.onnx"
    out, err = ok(
        ["compile", model, "--dump-ir", "--dump-ir-after", "import", "--dump-dir", d], capsys
    )
    assert err == "// ----- IR after import -----\n" + (d / "00-import.ir").read_text()
    assert out == (d / f"{len(DEFAULT):02d}-{DEFAULT[-1]}.ir").read_text()


def test_dump_ir_after_all_dumps_every_stage_in_order(
    zoo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, err = ok(
        ["compile", zoo_dir / "avg_after_relu.onnx", "--dump-ir", "--dump-ir-after", "all"], capsys
    )
    headers = [line for line in err.splitlines() if line.startswith("// ----- IR after")]
    assert headers == [f"// ----- IR after {s} -----" for s in STAGES]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_compile_json_layers_match_the_model(
    name: str, zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.tiles"
    text, _ = ok(["compile", zoo_dir / f"{name}.onnx", "-o", out, "--json"], capsys)
    report = json.loads(text)
    assert report["output"] == str(out) and out.is_file()
    assert report["graph"] == name
    assert [p["name"] for p in report["passes"]] == DEFAULT
    expected = onnx_layers(ZOO[name]())
    assert [r["binary"] for r in report["layers"]] == [e["binary"] for e in expected]
    assert [r["ops"] for r in report["layers"]] == [e["ops"] for e in expected]
    assert [r["index"] for r in report["layers"]] == list(range(len(expected)))


def test_compile_json_avg_before_relu_binary_middle(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The zoo docstring: first and last layers full precision, the three between binary."""
    text, _ = ok(
        ["compile", zoo_dir / "avg_before_relu.onnx", "-o", tmp_path / "a.tiles", "--json"], capsys
    )
    layers = json.loads(text)["layers"]
    assert [r["op"] for r in layers] == ["conv2d"] * 3 + ["dense"] * 2
    assert [r["binary"] for r in layers] == [False, True, True, True, False]
    assert all(float(r["alpha"]) > 0 for r in layers if r["binary"])
    assert [r["weight"].split("[")[0] for r in layers] == ["f32", *["bipolar"] * 3, "f32"]


def test_pass_timing(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, err = ok(
        ["compile", zoo_dir / "vgg_small.onnx", "-o", tmp_path / "v.tiles", "--pass-timing"], capsys
    )
    timing = [line.split() for line in err.splitlines() if line.rstrip().endswith(" ms")]
    assert [t[0] for t in timing] == DEFAULT
    assert all(float(t[1]) >= 0 for t in timing)


def test_explicit_passes_and_import_pipeline(
    zoo_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_dir / "sign_scale.onnx"
    default, _ = ok(["compile", model, "--dump-ir"], capsys)
    explicit, _ = ok(["compile", model, "--dump-ir", "--passes", ",".join(DEFAULT)], capsys)
    assert explicit == default


# ---------------------------------------------------------------- digits and opt round trip


def test_compile_embedded_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    ok(["compile", "digits"], capsys)
    a = read_artifact(tmp_path / "digits.tiles")
    assert a.graph.name == "digits"
    assert a.meta["source"]["file"] == "digits.onnx"
    assert embedded_file("digits.onnx").read_bytes() == DIGITS_ONNX.read_bytes()


def test_digits_dump_ir_prints_back_identically_through_opt_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    text, _ = ok(["compile", DIGITS_ONNX, "--dump-ir", "--dump-dir", d], capsys)
    assert "graph @digits {" in text
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
    expected, _ = ok(["compile", model, "--dump-ir", "--passes", "dce,canonicalize"], capsys)
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
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "dump"
    text, _ = ok(["compile", zoo_dir / "max_ceil.onnx", "--dump-ir", "--dump-dir", d], capsys)
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


FIXTURE_MODELS = sorted(FIXTURES.glob("*.onnx"))


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
    name: str, zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_dir / f"{name}.onnx"
    d, tiles = tmp_path / "dump", tmp_path / f"{name}.tiles"
    ok(["compile", model, "-o", tiles, "--dump-dir", d], capsys)
    final = d / f"{len(DEFAULT):02d}-{DEFAULT[-1]}.ir"
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


def test_inspect_table(zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, err = ok(["inspect", zoo_dir / "avg_before_relu.onnx"], capsys)
    assert out == ""
    assert "@avg_before_relu" in err and "3/5" in err


def test_inspect_embedded_digits(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = ok(["inspect", "digits", "--json"], capsys)
    report = json.loads(out)
    assert report["graph"] == "digits"
    assert report["inputs"][0]["type"] == "f32[?,1,8,8]"
    expected = onnx_layers(onnx.load(DIGITS_ONNX))
    assert [(r["binary"], r["ops"]) for r in report["layers"]] == [
        (e["binary"], e["ops"]) for e in expected
    ]
