"""Every user error: exit code 2, a message that names the place (ONNX node and op, file, IR
line:column, artifact member) and the fix, no traceback, and no output file left behind."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from clirun import cli, compile_fails, fails, flat, ok, usage_fails
from onnx import TensorProto, helper
from zoo import ZOO, Net

from bsnnc.compiler.frontend.importer import supported_ops
from bsnnc.compiler.passes import PIPELINES, REGISTRY
from bsnnc.ir.io import read_npz, write_npz
from bsnnc.ir.ops import OPS
from bsnnc.runtime.artifact import FORMAT_VERSION, MANIFEST, read_artifact

SaveModel = Callable[[onnx.ModelProto, str], Path]


def node_named(model: onnx.ModelProto, op_type: str) -> str:
    """The name of the (first) node of ``op_type``."""
    return next(n.name for n in model.graph.node if n.op_type == op_type)


# ---------------------------------------------------------------- ONNX front end


@pytest.mark.parametrize("op", ["Softmax", "Sigmoid"])
def test_unsupported_op_lists_supported_ops(
    op: str, save_model: SaveModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = Net("unsupported", (1, 6, 6), seed=11)
    n.conv(1, 4).op("Relu").op("Flatten", axis=1).gemm(4 * 36, 5)
    n.op(op, **({"axis": 1} if op == "Softmax" else {}))
    model = n.model()
    err = compile_fails(save_model(model, "m.onnx"), tmp_path, capsys, node_named(model, op), op)
    assert "not supported" in err
    for supported in supported_ops():
        assert supported in err
    assert {"Conv", "Gemm", "Relu", "AveragePool"} <= set(supported_ops())


def _grouped(cin: int, cout: int, group: int) -> onnx.ModelProto:
    n = Net("grouped", (cin, 6, 6), seed=12)
    w = n.init(n.weight((cout, cin // group, 3, 3), None))
    n.op("Conv", [w], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group).op("Relu")
    n.op("GlobalAveragePool").op("Flatten").gemm(cout, 3)
    return n.model()


@pytest.mark.parametrize(
    ("cin", "cout", "group", "kind"),
    [
        (4, 8, 2, "grouped"),
        (4, 4, 4, "depthwise"),
        (4, 8, 4, "depthwise"),  # depthwise with channel multiplier 2: group = Cin
        (8, 4, 4, "grouped"),  # group = Cout but 2 input channels per group: not depthwise
    ],
)
def test_grouped_and_depthwise_conv(
    cin: int,
    cout: int,
    group: int,
    kind: str,
    save_model: SaveModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _grouped(cin, cout, group)
    compile_fails(
        save_model(model, "g.onnx"),
        tmp_path,
        capsys,
        node_named(model, "Conv"),
        "Conv",
        f"{kind} convolution (group={group}) is not supported",
        "group=1",
    )


def _dynamic(shape: tuple[int | str, ...]) -> onnx.ModelProto:
    n = Net("dynamic", shape, seed=13)
    n.conv(1, 4).op("Relu").op("GlobalAveragePool").op("Flatten").gemm(4, 3)
    return n.model()


@pytest.mark.parametrize(
    ("shape", "dims"), [((1, "H", "W"), "[2, 3]"), (("C", 8, 8), "[1]"), ((1, 8, "W"), "[3]")]
)
def test_dynamic_dims_need_input_shape(
    shape: tuple[int | str, ...],
    dims: str,
    save_model: SaveModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = save_model(_dynamic(shape), "dyn.onnx")
    compile_fails(path, tmp_path, capsys, str(path), "'x'", dims, "--input-shape")
    out = tmp_path / "ok.tiles"
    ok(["compile", path, "-o", out, "--input-shape", "1,8,8"], capsys)
    g = read_artifact(out).graph
    assert str(g.inputs()[0].type) == "f32[?,1,8,8]"


def test_input_shape_that_contradicts_the_model(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = zoo_dir / "avg_before_relu.onnx"
    compile_fails(
        model, tmp_path, capsys, str(model), "--input-shape", extra=["--input-shape", "3,8,8"]
    )
    compile_fails(model, tmp_path, capsys, str(model), "rank", extra=["--input-shape", "8,8"])


def test_dynamic_batch_is_accepted(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = onnx.load(zoo_dir / "avg_before_relu.onnx")
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    ok(["compile", zoo_dir / "avg_before_relu.onnx", "-o", tmp_path / "a.tiles"], capsys)
    assert str(read_artifact(tmp_path / "a.tiles").graph.inputs()[0].type) == "f32[?,1,8,8]"


@pytest.mark.parametrize("command", ["compile", "verify", "inspect"])
@pytest.mark.parametrize(("value", "fragment"), [("1,x,8", "integers"), ("1,0,8", "positive")])
def test_bad_input_shape_syntax_is_a_usage_error(
    command: str,
    value: str,
    fragment: str,
    save_model: SaveModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """All three commands parse --input-shape alike and say what they expected (a 0 would
    otherwise pass as a "dynamic" dimension of this spatially dynamic model)."""
    model = save_model(_dynamic((1, "H", "W")), "dyn.onnx")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    err = fails([command, model, "--input-shape", value], capsys, "--input-shape", fragment)
    assert "usage: bsnnc" in err
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("random.onnx", np.random.default_rng(0).bytes(1000)),
        ("notes.onnx", b"hello, this is a text file and not a model\n"),
        ("empty.onnx", b""),
    ],
)
def test_not_onnx(
    name: str, content: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    compile_fails(path, tmp_path, capsys, str(path), "not an ONNX model")
    fails(["verify", path], capsys, str(path), "not an ONNX model")
    fails(["inspect", path], capsys, str(path), "not an ONNX model")


def test_truncated_onnx(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (zoo_dir / "vgg_small.onnx").read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    compile_fails(path, tmp_path, capsys, str(path), "truncated")


def _external(model: onnx.ModelProto, tmp_path: Path) -> Path:
    d = tmp_path / "ext"
    d.mkdir()
    path = d / "model.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="w.data",
        size_threshold=0,
    )
    assert (d / "w.data").stat().st_size > 0
    return path


def test_external_data_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The positive control for the two cases below: intact external data compiles."""
    path = _external(ZOO["avg_before_relu"](), tmp_path)
    ok(["compile", path, "-o", tmp_path / "a.tiles"], capsys)
    assert read_artifact(tmp_path / "a.tiles").graph.name == "model"


def test_missing_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _external(ZOO["avg_before_relu"](), tmp_path)
    (path.parent / "w.data").unlink()
    compile_fails(path, tmp_path, capsys, str(path), "'w.data'", "missing", "beside the model")


def test_truncated_external_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _external(ZOO["avg_before_relu"](), tmp_path)
    data = path.parent / "w.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    compile_fails(path, tmp_path, capsys, str(path), "w.data", "truncated")


def _escape(path: Path, which: int, how: str) -> None:
    """Point the external data of initializer ``which`` of the saved model at a copy of the
    real data outside the model's folder (``how``: a ``../`` path, an absolute path, or a
    symlink in the folder). The bytes are right, so only the location check can refuse it."""
    model = onnx.load_model(str(path), load_external_data=False)
    outside = path.parent.parent / "outside.data"
    outside.write_bytes((path.parent / "w.data").read_bytes())
    if how == "dotdot":
        location = "../outside.data"
    elif how == "absolute":
        location = str(outside)
    else:
        (path.parent / "link.data").symlink_to(outside)
        location = "link.data"
    t = model.graph.initializer[which]
    for entry in t.external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, str(path))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("which", [0, -1])
def test_external_data_outside_the_model_folder_is_refused(
    how: str, which: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every location of every tensor, first or last, is resolved (symlinks included) and
    must stay inside the model's folder before any byte is read."""
    path = _external(ZOO["avg_before_relu"](), tmp_path)
    _escape(path, which, how)
    compile_fails(
        path,
        tmp_path,
        capsys,
        str(path),
        "outside the model's folder"
        if how != "absolute"
        else "relative paths inside the model's folder",
    )


def test_two_inputs(
    save_model: SaveModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shape = ["N", 4]
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"], name="sum")],
        "two",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    path = save_model(model, "two.onnx")
    compile_fails(path, tmp_path, capsys, str(path), "exactly one input", "'a'", "'b'")


def _merge_without_relu(n: Net) -> None:
    n.conv(2, 2).op("Relu")
    skip = n.cur
    n.conv(2, 2).op("Add", [skip]).op("GlobalAveragePool").op("Flatten").gemm(2, 3)


def _merge_broadcast(n: Net) -> None:
    n.conv(2, 2).op("Relu")
    skip = n.cur
    # [N,1,6,6] + [N,2,6,6] broadcasts in ONNX; a merge of spike trains cannot
    n.conv(2, 1).op("Add", [skip]).op("Relu").op("Flatten").gemm(72, 3)


def _concat(axis: int, before_relu: bool) -> Callable[[Net], None]:
    def build(n: Net) -> None:
        n.conv(2, 2)
        if not before_relu:
            n.op("Relu")
        first = n.cur
        n.conv(2, 2).op("Concat", [first], axis=axis).op("Relu")
        n.conv(4 if axis == 1 else 2, 2, binary="tensor").op("Relu").op("Flatten")
        n.gemm(2 * 6 * (6 if axis == 1 else 12), 3)

    return build


def _with_constant(op: str) -> Callable[[Net], None]:
    def build(n: Net) -> None:
        n.conv(2, 2).op("Relu")
        const = n.init(np.ones((1, 2, 6, 6), np.float32), "c")
        n.op(op, [const], **({"axis": 1} if op == "Concat" else {}))
        n.op("Flatten").gemm(72 * (2 if op == "Concat" else 1), 3)

    return build


@pytest.mark.parametrize(
    ("build", "where", "fragment"),
    [
        (_with_constant("Sum"), "Sum", "Sum with a constant operand is not supported"),
        (_with_constant("Concat"), "Concat", "Concat with a constant operand is not supported"),
        # a merge read by anything but its ReLU has no IF layer to fold into
        (_merge_without_relu, "Add", "a residual merge must feed a ReLU"),
        (_merge_broadcast, "Add", "one shape (no broadcasting)"),
        (_concat(2, False), "Concat", "along the channels (axis 1) only"),
        (_concat(1, True), "", "a concatenation is supported of spikes only (concatenate after"),
    ],
)
def test_merge_errors(
    build: Callable[[Net], None],
    where: str,
    fragment: str,
    save_model: SaveModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = Net("merge", (2, 6, 6), seed=14)
    build(n)
    model = n.model()
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 2, 6, 6)).astype(np.float32))
    names = [node_named(model, where)] if where else []
    compile_fails(
        save_model(model, "merge.onnx"),
        tmp_path,
        capsys,
        *names,
        fragment,
        extra=["--calib", str(calib)],
    )


def test_nonexistent_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "model.onnx"
    compile_fails(missing, tmp_path, capsys, str(missing), "no such file")
    fails(["verify", missing], capsys, str(missing), "no such file")
    fails(["inspect", missing], capsys, str(missing), "no such file")


def test_unknown_embedded_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    compile_fails("lenet5", tmp_path, capsys, "lenet5", "no such file", "digits")
    fails(["compile", "lenet5"], capsys, "lenet5", "digits")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_is_a_directory(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "existing_dir"
    target.mkdir()
    fails(["compile", zoo_dir / "avg_before_relu.onnx", "-o", target], capsys, str(target))
    assert list(target.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["existing_dir"], "temporary files left"


def test_failed_compile_keeps_an_existing_output(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.tiles"
    ok(["compile", zoo_dir / "avg_before_relu.onnx", "-o", out], capsys)
    before = out.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"")
    fails(["compile", bad, "-o", out], capsys, str(bad))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "model.tiles"]


# ---------------------------------------------------------------- compile options


def test_json_and_dump_ir_together(
    zoo_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    model = zoo_dir / "avg_before_relu.onnx"
    compile_fails(model, tmp_path, capsys, "--json", "--dump-ir", extra=["--json", "--dump-ir"])
    fails(["compile", model, "--json", "--dump-ir"], capsys, "--json", "--dump-ir")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_dump_ir_after_unknown_stage(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compile_fails(
        zoo_dir / "avg_before_relu.onnx",
        tmp_path,
        capsys,
        "--dump-ir-after fold",
        "import",
        *PIPELINES["default"],
        extra=["--dump-ir-after", "fold"],
    )


def test_compile_unknown_pass(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compile_fails(
        zoo_dir / "avg_before_relu.onnx",
        tmp_path,
        capsys,
        "unknown pass 'nope'",
        *REGISTRY,
        extra=["--passes", "dce,nope"],
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["compile", "digits", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["compile"], "model"),
        ([], "COMMAND"),
        (["transmogrify"], "invalid choice"),
        (["compile", "digits", "--pipeline", "fast"], "invalid choice"),
        (["compile", "digits", "--pipeline", "import", "--passes", "dce"], "not allowed"),
        (["verify", "digits", "--rtol", "tiny"], "--rtol"),
        (["inspect", "digits", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors(
    argv: list[str],
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    usage_fails(argv, capsys, tmp_path, fragment)


# ---------------------------------------------------------------- IR text through opt


@pytest.fixture
def ir_dump(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """avg_before_relu's final IR file (weights beside it): the B-SNN of the default pipeline
    (calibrated on digits, as every 1×8×8 model is by default)."""
    d = tmp_path / "dump"
    assert cli(["compile", zoo_dir / "avg_before_relu.onnx", "--dump-ir", "--dump-dir", d]) == 0
    capsys.readouterr()
    return sorted(d.glob("*.ir"))[-1]


def _edit(ir: Path, tmp_path: Path, old: str, new: str) -> tuple[Path, int, int]:
    """Copy ``ir`` (and its weights) to bad.ir with the first ``old`` replaced by ``new``;
    returns the path and the 1-based line and column where ``new`` starts."""
    text = ir.read_text()
    assert old in text
    lines = text.splitlines(keepends=True)
    lineno = next(i for i, line in enumerate(lines, 1) if old in line)
    column = lines[lineno - 1].index(old) + 1
    bad = tmp_path / "bad.ir"
    bad.write_text(text.replace(old, new, 1))
    (tmp_path / "bad.npz").write_bytes(ir.with_suffix(".npz").read_bytes())
    return bad, lineno, column


def test_ir_syntax_error(ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, line, col = _edit(ir_dump, tmp_path, "if(%0) {", "if(%0 {")
    col += len("if(%0 ")  # the '{' where ')' was expected
    err = fails(["opt", bad], capsys, f"{bad}:{line}:{col}:", "unexpected '{'", "expected")
    assert "')'" in err
    assert "^" in err  # the offending line with a caret


def test_ir_syntax_error_at_end_of_input(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = ir_dump.read_text()
    bad = tmp_path / "cut.ir"
    bad.write_text(text[: text.rindex("  return")])
    n_lines = len(bad.read_text().splitlines())
    err = fails(["opt", bad], capsys, f"{bad}:", "end of input", "'return'")
    assert any(f"{bad}:{n}:" in err for n in (n_lines, n_lines + 1))


def test_ir_unknown_op(ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad, line, col = _edit(ir_dump, tmp_path, "if(%0)", "gelu(%0)")
    err = fails(["opt", bad], capsys, f"{bad}:{line}:{col}:", "unknown op 'gelu'", "known ops")
    for op in OPS:
        assert op in err


def test_ir_unknown_attribute(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, line, col = _edit(ir_dump, tmp_path, "stride=[1,1]", "strides=[1,1]")
    fails(["opt", bad], capsys, f"{bad}:{line}:{col}:", "no attribute 'strides'", "stride")


def test_ir_type_mismatch(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, line, _col = _edit(ir_dump, tmp_path, ": spike[?,8,8,8]", ": spike[?,8,8,9]")
    fails(
        ["opt", bad],
        capsys,
        f"line {line}:",
        "declared type spike[?,8,8,9]",
        "infers spike[?,8,8,8]",
    )


def test_ir_binary_layer_declared_float(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A binary layer reading spikes produces integer currents, not floats."""
    bad, line, _col = _edit(ir_dump, tmp_path, ": i32[?,16,8,8]", ": f32[?,16,8,8]")
    fails(["opt", bad], capsys, f"line {line}:", "declared type f32[?,16,8,8]", "infers i32")


def test_ir_bad_reset_mode(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, line, col = _edit(ir_dump, tmp_path, 'reset="subtract"', 'reset="sometimes"')
    fails(["opt", bad], capsys, f"{bad}:{line}:{col}:", "reset", "subtract", "zero")


@pytest.mark.parametrize("theta", ["0.0", "-1.0"])
def test_ir_nonpositive_threshold(
    theta: str, ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = ir_dump.read_text()
    first = text[text.index("theta=") :].split("}")[0]  # theta=<the first IF's threshold>
    bad, line, _col = _edit(ir_dump, tmp_path, first, f"theta={theta}")
    fails(["opt", bad], capsys, f"line {line}:", "threshold must be > 0", theta)


def test_ir_weights_modified(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, _, _ = _edit(ir_dump, tmp_path, "// bsnnc IR v1", "// bsnnc IR v1")
    weights = read_npz(bad.with_suffix(".npz"))
    weights["w8"] = -weights["w8"]  # same names, shape and dtype; other content
    with bad.with_suffix(".npz").open("wb") as f:
        write_npz(f, weights)
    fails(["opt", bad], capsys, "@w8", "does not match", "does not belong to this IR")


def test_ir_weights_of_another_model(
    ir_dump: Path, zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bn_bias names its weights differently: the first constant without data is named."""
    other = tmp_path / "other"
    model, calib = zoo_data / "bn_bias.onnx", zoo_data / "bn_bias.npz"
    argv = ["compile", model, "--calib", calib, "--dump-ir", "--dump-dir", other]
    assert cli(argv) == 0
    capsys.readouterr()
    bad, _, _ = _edit(ir_dump, tmp_path, "// bsnnc IR v1", "// bsnnc IR v1")
    bad.with_suffix(".npz").write_bytes(sorted(other.glob("*.npz"))[-1].read_bytes())
    missing = sorted(
        set(read_npz(ir_dump.with_suffix(".npz"))) - set(read_npz(bad.with_suffix(".npz")))
    )
    assert missing
    fails(
        ["opt", bad], capsys, str(bad.with_suffix(".npz")), "no data for constant", f"@{missing[0]}"
    )


def test_ir_weights_wrong_shape(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad, _, _ = _edit(ir_dump, tmp_path, "// bsnnc IR v1", "// bsnnc IR v1")
    weights = read_npz(bad.with_suffix(".npz"))
    weights["w16"] = weights["w16"][:5]
    with bad.with_suffix(".npz").open("wb") as f:
        write_npz(f, weights)
    fails(["opt", bad], capsys, "@w16", "declared")


def test_opt_missing_and_non_text_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.ir"
    fails(["opt", missing], capsys, str(missing), "no such file")
    binary = tmp_path / "binary.ir"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    fails(["opt", binary], capsys, str(binary), "not IR text")


def test_opt_stdin_syntax_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("graph @g {\n  %x = input( : f32[?,1]\n}\n"))
    fails(["opt", "-"], capsys, "<stdin>:2:")


def test_opt_output_without_weights(
    ir_dump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lone = tmp_path / "lone.ir"
    lone.write_text(ir_dump.read_text())
    outdir = tmp_path / "o"
    outdir.mkdir()
    fails(["opt", lone, "-o", outdir / "x.ir"], capsys, "-o", "weights", ".npz")
    assert list(outdir.iterdir()) == []


# ---------------------------------------------------------------- artifacts through inspect


@pytest.fixture
def tiles(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A valid artifact of avg_before_relu."""
    out = tmp_path / "good.tiles"
    assert cli(["compile", zoo_dir / "avg_before_relu.onnx", "-o", out]) == 0
    capsys.readouterr()
    return out


def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    with zipfile.ZipFile(src) as z:
        members = {name: z.read(name) for name in z.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return dst


def test_artifact_truncated(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "half.tiles"
    bad.write_bytes(tiles.read_bytes()[: tiles.stat().st_size // 2])
    fails(["inspect", bad], capsys, str(bad), "truncated")


def test_artifact_member_modified(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(m: dict[str, bytes]) -> None:
        m["graph.ir"] = m["graph.ir"] + b"// an innocent-looking comment\n"  # still valid IR

    # the unchanged rewrite is readable, so only the edit can be at fault below
    assert read_artifact(_rewrite(tiles, tmp_path / "same.tiles", lambda m: None)).graph.name
    bad = _rewrite(tiles, tmp_path / "edited.tiles", edit)
    fails(["inspect", bad], capsys, str(bad), "graph.ir", "checksum mismatch", "recompile")


def test_artifact_newer_format(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(m: dict[str, bytes]) -> None:
        manifest = json.loads(m[MANIFEST])
        manifest["format_version"] = FORMAT_VERSION + 1
        m[MANIFEST] = json.dumps(manifest).encode()

    bad = _rewrite(tiles, tmp_path / "future.tiles", edit)
    fails(["inspect", bad], capsys, str(bad), MANIFEST, "newer", "upgrade")


def test_artifact_without_manifest(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _rewrite(tiles, tmp_path / "bare.tiles", lambda m: m.pop(MANIFEST))
    fails(["inspect", bad], capsys, str(bad), MANIFEST, "missing")


def test_artifact_member_missing(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = _rewrite(tiles, tmp_path / "noweights.tiles", lambda m: m.pop("weights.npz"))
    fails(["inspect", bad], capsys, str(bad), "weights.npz", "missing")


def test_artifact_consistent_but_wrong_weights(
    tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checksums updated to match altered weights: the IR's content hash still catches it."""

    def edit(m: dict[str, bytes]) -> None:
        weights = read_npz(io.BytesIO(m["weights.npz"]))
        weights["w4"] = -weights["w4"]
        buf = io.BytesIO()
        write_npz(buf, weights)
        m["weights.npz"] = buf.getvalue()
        manifest = json.loads(m[MANIFEST])
        manifest["members"]["weights.npz"] = {
            "sha256": hashlib.sha256(m["weights.npz"]).hexdigest(),
            "size": len(m["weights.npz"]),
        }
        m[MANIFEST] = json.dumps(manifest).encode()

    bad = _rewrite(tiles, tmp_path / "resigned.tiles", edit)
    fails(["inspect", bad], capsys, str(bad), "@w4", "does not match")


# ---------------------------------------------------------------- verify image sets


def test_images_file_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent.npz"
    fails(["verify", "digits", "--images", missing], capsys, str(missing), "does not exist")


def test_images_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    fails(["verify", "digits", "--images", "cifar"], capsys, "'cifar'", "digits", ".npz")


def test_images_npz_without_x(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "imgs.npz"
    np.savez(path, images=np.zeros((2, 1, 8, 8), np.float32))
    fails(["verify", "digits", "--images", path], capsys, str(path), "'x'", "images")


def test_images_wrong_rank_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat_x = tmp_path / "flat.npz"
    np.savez(flat_x, x=np.zeros((2, 64), np.float32))
    fails(["verify", "digits", "--images", flat_x], capsys, str(flat_x), "[N,C,H,W]")
    bad_y = tmp_path / "bad_y.npz"
    np.savez(bad_y, x=np.zeros((2, 1, 8, 8), np.float32), y=np.zeros(3))
    fails(["verify", "digits", "--images", bad_y], capsys, str(bad_y), "y must have shape [2]")


def test_images_not_an_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    fails(["verify", "digits", "--images", path], capsys, str(path))


@pytest.mark.parametrize(
    ("flag", "value"), [("--batch", "0"), ("--limit", "0"), ("--limit", "-3"), ("--batch", "-1")]
)
def test_verify_nonpositive_counts(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fails(["verify", "digits", "--images", "digits", flag, value], capsys, flag)


# ---------------------------------------------------------------- conversion options


def _sample_shape(model: onnx.ModelProto) -> list[int]:
    return [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]


NOT_8X8 = sorted(n for n, build in ZOO.items() if _sample_shape(build()) != [1, 8, 8])


@pytest.mark.parametrize("name", NOT_8X8)
def test_compile_needs_calibration_images(
    name: str, zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only 1×8×8 models default to the digits images; the others must say --calib."""
    model = zoo_dir / f"{name}.onnx"
    compile_fails(model, tmp_path, capsys, "calibration images", "--calib")
    fails(["compile", model, "--dump-ir"], capsys, "--calib")  # and nothing on stdout
    # the ANN-form pipelines need no calibration
    ok(["compile", model, "--pipeline", "cleanup", "-o", tmp_path / "ann.tiles"], capsys)
    assert read_artifact(tmp_path / "ann.tiles").meta.get("dataset") is None


@pytest.mark.parametrize("value", ["0", "101", "abc", "-5", "nan", ""])
def test_bad_percentile_is_a_usage_error(
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    err = fails(["compile", "digits", "--percentile", value], capsys, "--percentile")
    assert "usage: bsnnc compile" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("value", "expected"), [("max", 100.0), ("100", 100.0), ("50", 50.0)])
def test_percentile_values_that_work(
    value: str, expected: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.tiles"
    report = json.loads(
        ok(["compile", "digits", "-o", out, "--percentile", value, "--json"], capsys)[0]
    )
    assert report["calibration"]["percentile"] == expected
    assert read_artifact(out).meta["conversion"]["percentile"] == expected
    if expected == 100.0:
        assert all(c["lambda"] == c["max"] for c in report["calibration"]["layers"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--reset", "half"], "invalid choice"),
        (["--norm", "tensor"], "invalid choice"),
        (["--calib-stat", "mean"], "invalid choice"),
        (["--calib-limit", "0"], "--calib-limit"),
        (["--calib-limit", "many"], "--calib-limit"),
    ],
)
def test_bad_conversion_options(
    argv: list[str],
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    err = fails(["compile", "digits", *argv], capsys, fragment)
    assert "usage: bsnnc compile" in err
    assert list(tmp_path.iterdir()) == []


def test_calib_file_missing(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.npz"
    compile_fails(
        zoo_dir / "max_ceil.onnx", tmp_path, capsys, str(missing), extra=["--calib", missing]
    )


def test_calib_unknown_name(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    compile_fails(
        zoo_dir / "max_ceil.onnx",
        tmp_path,
        capsys,
        "'mnist'",
        "digits",
        "cifar10",
        "cifar100",
        "imagenet",
        ".npz",
        extra=["--calib", "mnist"],
    )


def test_calib_cifar_not_in_data_dir(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    compile_fails(
        zoo_dir / "max_ceil.onnx",
        tmp_path,
        capsys,
        "cifar-100-python.tar.gz",
        str(empty.resolve()),
        extra=["--calib", "cifar100", "--data-dir", empty],
    )


def test_calib_images_of_the_wrong_shape(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_ceil takes 3×11×11 images; the message names the file and both shapes."""
    path = tmp_path / "small.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32))
    compile_fails(
        zoo_dir / "max_ceil.onnx",
        tmp_path,
        capsys,
        str(path),
        "[1, 8, 8]",
        "[3, 11, 11]",
        extra=["--calib", path],
    )


def test_opt_calibrating_pass_says_how(
    zoo_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """opt cannot calibrate: its message must not point at an option opt lacks."""
    d = tmp_path / "dump"
    model, calib = zoo_data / "max_ceil.onnx", zoo_data / "max_ceil.npz"
    ok(["compile", model, "--calib", calib, "--dump-ir", "--dump-dir", d], capsys)
    stage = d / "03-insert-if-around-pooling.ir"
    assert stage.is_file()
    err = fails(["opt", stage, "--passes", "fold-threshold-normalization"], capsys, "calibrat")
    opt_help, _ = ok(["opt", "--help"], capsys)
    assert "--calib" in opt_help or "compile" in err, err


# ---------------------------------------------------------------- simulate


@pytest.fixture(scope="module")
def digits_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``bsnnc compile digits -o digits.tiles``."""
    out = tmp_path_factory.mktemp("digits") / "digits.tiles"
    assert cli(["compile", "digits", "-o", out]) == 0
    return out


def test_simulate_artifact_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.tiles"
    fails(["simulate", missing], capsys, str(missing), "no such file")


def test_simulate_not_an_artifact(zoo_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = zoo_dir / "avg_before_relu.onnx"
    fails(["simulate", model], capsys, str(model))


def test_simulate_unconverted_artifact(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ANN-form artifact (cleanup pipeline) is not a spiking network."""
    ann = tmp_path / "ann.tiles"
    ok(["compile", zoo_dir / "avg_before_relu.onnx", "--pipeline", "cleanup", "-o", ann], capsys)
    fails(
        ["simulate", ann, "--images", "digits", "--limit", "4", "-T", "2"],
        capsys,
        "member graph.ir is not a spiking network",
        "recompile",
    )
    # the artifact is at fault whatever else is missing: that is reported first
    fails(["simulate", ann], capsys, "not a spiking network")


def test_simulate_unknown_image_set(digits_tiles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fails(
        ["simulate", digits_tiles, "--images", "cifar"],
        capsys,
        "'cifar'",
        "digits",
        "cifar10",
        "cifar100",
        "imagenet",
        ".npz",
    )


def test_simulate_cifar_not_in_data_dir(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    fails(
        ["simulate", digits_tiles, "--images", "cifar100", "--data-dir", empty],
        capsys,
        "cifar-100-python.tar.gz",
        str(empty.resolve()),
        "--data-dir",
    )
    assert list(empty.iterdir()) == []


def test_simulate_images_of_the_wrong_shape(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rgb.npz"
    np.savez(path, x=np.zeros((4, 3, 11, 11), np.float32), y=np.zeros(4, np.int64))
    fails(
        ["simulate", digits_tiles, "--images", path, "-T", "2"],
        capsys,
        str(path),
        "[3, 11, 11]",
        "[1, 8, 8]",
    )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["-T", "0"], "--timesteps"),
        (["--timesteps", "-4"], "--timesteps"),
        (["--limit", "0"], "--limit"),
        (["--batch", "0"], "--batch"),
        (["--max-memory", "0"], "--max-memory"),
        (["--max-memory", "lots"], "--max-memory"),
        (["--early-exit", "soon"], "--early-exit"),
        (["--backend", "gpu"], "invalid choice"),
    ],
)
def test_simulate_usage_errors(
    argv: list[str], fragment: str, digits_tiles: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = fails(["simulate", digits_tiles, *argv], capsys, fragment)
    assert "usage: bsnnc simulate" in err


def test_simulate_plot(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With matplotlib the curve is written (stdout stays pure JSON); without it the message
    says what to install and nothing is written."""
    png = tmp_path / "curve.png"
    argv = ["simulate", digits_tiles, "--limit", "8", "-T", "4", "--json", "--plot", png]
    if importlib.util.find_spec("matplotlib") is not None:
        report = json.loads(ok(argv, capsys)[0])
        assert report["timesteps"] == 4 and len(report["accuracy_per_timestep"]) == 4
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        fails(argv, capsys, "matplotlib", "pip install")
        assert not png.exists()


def test_simulate_plot_needs_labels(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unlabelled.npz"
    np.savez(path, x=np.zeros((3, 1, 8, 8), np.float32))
    png = tmp_path / "curve.png"
    fails(
        ["simulate", digits_tiles, "--images", path, "-T", "2", "--plot", png], capsys, "labelled"
    )
    assert not png.exists()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_simulate_plot_into_a_missing_directory(
    digits_tiles: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Like ``compile -o``, either the directory is made or the message names the path."""
    png = tmp_path / "figures" / "curve.png"
    argv = ["simulate", digits_tiles, "--limit", "8", "-T", "4", "--plot", png]
    code = cli(argv)
    _, err = capsys.readouterr()
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert code == 2 and flat(str(png.parent)) in flat(err), err
