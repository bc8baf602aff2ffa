"""The tile program: emitted from every zoo model, parses back, carries the exact weights and
thresholds, and a malformed program in an artifact is reported with its member and place."""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN
from zoo import ZOO

from bsnnc.backends.rram.emit import check_program, emit_program, integer_thresholds
from bsnnc.backends.rram.hw import load_hw
from bsnnc.backends.rram.mapping import partition
from bsnnc.backends.rram.program import (
    BlockDecl,
    Instruction,
    NeuronDecl,
    Program,
    SendStmt,
    Tok,
    parse_program,
    print_program,
)
from bsnnc.compiler.cli import main
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.ir.errors import BsnncError, IRParseError
from bsnnc.ir.graph import Graph, channel_param
from bsnnc.runtime.datasets import load_images


def converted(zoo_data: Path, name: str) -> Graph:
    options = PassOptions(calib=lambda: load_images(str(zoo_data / f"{name}.npz")))
    return run_pipeline(import_onnx(zoo_data / f"{name}.onnx"), options).graph


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("pack", [False, True])
def test_program_round_trip_and_contents(name: str, pack: bool, zoo_data: Path) -> None:
    g = converted(zoo_data, name)
    m = partition(g, load_hw("rram-128"), pack_layers=pack)
    program, arrays = emit_program(g, m)
    text = print_program(program)
    back = parse_program(text)
    check_program(back)
    assert print_program(back) == text
    nodes = g.node_map()
    # loop-invariant code motion: the once block computes from the input and constants only
    invariant = {g.inputs()[0].result}
    for s in back.once:
        args = [str(a)[1:] for a in s.args if isinstance(a, Tok) and a.kind == "value"]
        assert s.op in ("digital", "mvm", "add") and all(a in invariant for a in args[1:])
        invariant.add(args[0])
    for s in back.body:  # and nothing left in the loop could have been hoisted
        args = [str(a)[1:] for a in s.args if isinstance(a, Tok) and a.kind == "value"]
        if s.op in ("digital", "mvm"):
            assert not all(a in invariant for a in args[1:]), s.text()
    assert back.once
    fired = [s for s in back.body if s.op == "fire"]
    assert len(fired) == sum(n.op == "if" for n in g.nodes)
    for lm in m.layers:
        if lm.kind != "binary":
            continue
        # the packed bits are the layer's ±1 matrix, rows in (channel, ky, kx) order
        w = g.constants[nodes[lm.node].const_operands()[0]].array()
        bits = np.unpackbits(arrays[f"%{lm.node}.w"])[: lm.K * lm.N].reshape(lm.K, lm.N)
        mat = w.transpose(0, 2, 3, 1).reshape(lm.N, -1).T if w.ndim == 4 else w.T
        np.testing.assert_array_equal(np.where(bits == 1, 1, -1), mat)  # rows: (ky, kx, c)
        mvm = next(s for s in back.body if s.op == "mvm" and str(s.args[0]) == f"%{lm.node}")
        assert [str(a) for a in mvm.args[2:]] == [f"a{a}" for a in lm.arrays]
    for n in g.nodes:
        if n.op != "if":
            continue
        decl = next(s for s in back.decls if s.op == "neuron" and str(s.args[0]) == f"%{n.result}")
        theta = np.broadcast_to(
            np.asarray(channel_param(g, n, "theta"), np.float64), (int(n.type.shape[1] or 1),)
        )
        unit = decl.args[decl.args.index(next(a for a in decl.args if str(a) == "unit")) + 1]
        big = decl.args[2]
        stored = (
            arrays[f"%{n.result}.theta"] if not isinstance(big, int) else np.full(theta.shape, big)
        )
        np.testing.assert_array_equal(stored.astype(np.float64) * 2.0 ** int(unit), theta)  # exact


def test_integer_thresholds() -> None:
    found = integer_thresholds(np.array([0.75, 3.5]))
    assert found is not None
    big, unit = found
    np.testing.assert_array_equal(big * 2.0**unit, [0.75, 3.5])
    assert integer_thresholds(np.array([1 / 3])) is None  # not dyadic: kept as a float


@pytest.mark.parametrize("init", [0.5, 0.75, 3 / 256, 1.0])
def test_integer_thresholds_make_the_initial_membrane_an_integer(init: float) -> None:
    """With an initial membrane init·θ the unit drops by the fewest bits that make init·Θ
    whole: θ = Θ·2^unit and v(0) = init·Θ·2^unit stay exact."""
    theta = np.array([3.0, 1.25 + 2.0**-20])  # Θ odd on the plain grid (unit -20)
    plain = integer_thresholds(theta)
    found = integer_thresholds(theta, init)
    assert plain is not None and found is not None
    big, unit = found
    np.testing.assert_array_equal(big * 2.0**unit, theta)
    v0 = big * init
    np.testing.assert_array_equal(v0, np.round(v0))
    shift = plain[1] - unit
    assert 0 <= shift <= 8
    if shift:  # one bit fewer would not do
        half = big / 2 * init
        assert not np.all(half == np.round(half))


def _rewrite(src: Path, dst: Path, member: str, data: bytes, fix_checksum: bool) -> None:
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[member] = data
    if fix_checksum:
        manifest = json.loads(members["manifest.json"])
        manifest["members"][member] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        members["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, body in members.items():
            z.writestr(name, body)
    dst.write_bytes(buf.getvalue())


@pytest.mark.parametrize(
    ("edit", "where", "message"),
    [
        (lambda t: t.replace("loop timestep {", "loop timestep"), ":", "syntax error"),
        (lambda t: t.replace(" a2 a3", " a2 a99", 1), ":", "array a99 is not declared"),
        (lambda t: t.replace("  barrier\n", ""), "", "must end with a barrier"),
        (lambda t: t.replace("hops 1", "hops far", 1), ":", "malformed arguments; expected: send"),
        (lambda t: t.replace("reset subtract", "reset sometimes", 1), ":", "expected: neuron"),
        (  # partial sums belong beside their mvm
            lambda t: t.replace("    add %2 a2 a3 a8\n", "").replace(
                "  }\n  loop timestep", "    add %2 a2 a3 a8\n  }\n  loop timestep"
            ),
            ":",
            "%2 is not the result of a mvm earlier in this block",
        ),
        (lambda t: t.replace("send %1 hops 0", "send %0 hops 0"), ":", "not the result of a fire"),
        (lambda t: t.replace("send %1 hops 0", "send %99 hops 0"), ":", "%99 is not the result"),
        (
            lambda t: t.replace("    fire %1 %0\n", "    fire %1 %0\n" * 2),
            ":",
            "%1 is defined twice",
        ),
        (  # a neuron update cannot be hoisted out of the loop
            lambda t: t.replace(
                "  }\n  loop timestep {\n    fire %1 %0\n",
                "    fire %1 %0\n  }\n  loop timestep {\n",
            ),
            ":",
            "only digital, mvm, add, merge may run once",
        ),
    ],
)
def test_hand_edited_program_errors_name_member_and_place(
    edit: object, where: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "d.tiles"
    assert main(["compile", "digits", "-o", str(good), "--pack"]) == 0
    with zipfile.ZipFile(good) as z:
        text = z.read("program.txt").decode()
    bad = tmp_path / "bad.tiles"
    new = edit(text)  # type: ignore[operator]
    assert new != text
    _rewrite(good, bad, "program.txt", new.encode(), fix_checksum=True)
    capsys.readouterr()
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}[program.txt]{where}" in err and message in err
    assert "Traceback" not in err
    # without fixing the checksum, the manifest catches the edit first
    _rewrite(good, bad, "program.txt", new.encode(), fix_checksum=False)
    assert main(["inspect", str(bad)]) == 2
    assert "member program.txt: checksum mismatch" in capsys.readouterr().err


def test_parse_errors_are_typed() -> None:
    with pytest.raises(IRParseError, match=r"^p:1:8: syntax error; expected a constant like @w"):
        parse_program('programm @x hw "h" { loop timestep { barrier } }', "p")
    p = parse_program(
        'program @x hw "h" {\n  loop timestep {\n    fire %1 %0\n    barrier\n  }\n}\n', "p"
    )
    with pytest.raises(BsnncError, match=r"p:3:5: fire: %0 is used before it is defined"):
        check_program(p, "p")


def test_compile_dump_program_equals_the_artifact_member(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.tiles"
    assert main(["compile", "digits", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["compile", "digits", "--dump-program"]) == 0
    printed = capsys.readouterr().out
    with zipfile.ZipFile(out) as z:
        assert printed == z.read("program.txt").decode()
    assert main(["compile", "digits", "--dump-program", "--dump-ir"]) == 2
    assert main(["compile", "digits", "--pipeline", "cleanup", "--dump-program"]) == 2
    assert "--dump-program needs a spiking graph" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("digital %3 avgpool %2", "digital %3 maxpool %2", "computes %3 as avgpool of %2"),
        ("fire %4 %3", "fire %4 %2", "computes %4 as if of %3"),
        ("readout %13 %12", "readout %77 %12", "%77 is not a value of graph.ir"),
    ],
)
def test_program_must_agree_with_the_graph(
    old: str, new: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulator takes shapes and constants from graph.ir: an instruction computing
    something else than the graph says is an error at its line, not a silent mismatch."""
    good = tmp_path / "d.tiles"
    assert main(["compile", "digits", "-o", str(good), "--pack"]) == 0
    with zipfile.ZipFile(good) as z:
        text = z.read("program.txt").decode()
    assert old in text
    bad = tmp_path / "bad.tiles"
    _rewrite(good, bad, "program.txt", text.replace(old, new).encode(), fix_checksum=True)
    capsys.readouterr()
    args = ["simulate", str(bad), "--backend", "rram", "--limit", "2", "-T", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{bad}[program.txt]:" in err and message in err and "Traceback" not in err


def test_typed_views_of_the_statements(zoo_data: Path) -> None:
    """Blocks, neurons, sends and instructions read as typed records that agree with the
    mapping they were emitted from (no positional ``args[5]`` anywhere else)."""
    g = converted(zoo_data, "vgg_small")
    m = partition(g, load_hw("rram-128"))
    program, arrays = emit_program(g, m)
    blocks = [BlockDecl.of(s) for s in program.decls if s.op == "block"]
    assert [(b.layer, b.array, b.rows, b.cols, b.at, b.copy) for b in blocks] == [
        (b.layer, b.array, (b.r0, b.r1), (b.c0, b.c1), (b.row_offset, b.col_offset), b.copy)
        for b in m.blocks
    ]
    neurons = [NeuronDecl.of(s) for s in program.decls if s.op == "neuron"]
    ifs = {n.result: n for n in g.nodes if n.op == "if"}
    assert {d.layer for d in neurons} == set(ifs)
    for d in neurons:
        assert d.reset == "subtract" and d.unit < 0
        assert (d.theta is None) == (d.theta_array is not None)
        if d.theta_array is not None:
            assert arrays[d.theta_array].dtype.kind == "i"
        theta = d.theta if d.theta is not None else arrays[d.theta_array]
        init = d.init if d.init is not None else arrays[str(d.init_array)]
        np.testing.assert_array_equal(
            np.asarray(init, np.float64), ifs[d.layer].attrs.get("init", 0.0) * np.asarray(theta)
        )
    sends = [SendStmt.of(s) for s in program.body if s.op == "send"]
    assert sends and all(s.hops >= 0 for s in sends)
    mvms = [Instruction.of(s) for s in program.body if s.op == "mvm"]
    assert all(i.arrays and i.operands for i in mvms)


def test_the_canonical_reader_knows_the_grammars_opcodes() -> None:
    from importlib import resources

    from bsnnc.backends.rram.program import OPCODES

    grammar = resources.files("bsnnc.backends.rram").joinpath("program.lark").read_text("utf-8")
    line = next(ln for ln in grammar.splitlines() if ln.startswith("OPCODE"))
    assert set(re.findall(r'"([a-z]+)"', line)) == set(OPCODES)


def _positions(p: Program) -> list[tuple[int, int] | None]:
    return [s.pos for s in [*p.decls, *p.once, *p.body]]


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*/program.txt")), ids=lambda p: p.parent.name)
def test_canonical_reader_equals_the_grammar(path: Path) -> None:
    """Printed programs take the fast line reader; it gives what the grammar gives, positions
    included."""
    from bsnnc.backends.rram.program import _parse_canonical, _parse_with_grammar

    text = path.read_text(encoding="utf-8")
    fast = _parse_canonical(text, str(path))
    assert fast is not None
    slow = _parse_with_grammar(text, str(path))
    assert fast == slow and _positions(fast) == _positions(slow)


def test_canonical_reader_agrees_with_the_grammar_on_mutated_programs(
    request: pytest.FixtureRequest,
) -> None:
    """1,000 seeded one-character mutations of a golden program (``--mutations N`` for N):
    whenever the line reader accepts a text, the grammar accepts it too and reads the same
    program; every text the grammar rejects, the line reader passes on (so errors always come
    from the grammar)."""
    from bsnnc.backends.rram.program import _parse_canonical, _parse_with_grammar

    text = (GOLDEN / "vgg_small" / "program.txt").read_text(encoding="utf-8")
    rng = np.random.default_rng(7)
    alphabet = [*' \n\t"%@:.-/{}0123456789aeoxsrtz_Ef', "add", "once", "1e9", "9" * 20]
    accepted = 0
    count = request.config.getoption("--mutations") or 1000
    for _ in range(count):
        i = int(rng.integers(len(text)))
        kind = int(rng.integers(3))
        piece = alphabet[int(rng.integers(len(alphabet)))]
        mutated = (
            text[:i] + piece + text[i:]
            if kind == 0
            else text[:i] + text[i + 1 :]
            if kind == 1
            else text[:i] + piece + text[i + 1 :]
        )
        fast = _parse_canonical(mutated, "m")
        try:
            slow = _parse_with_grammar(mutated, "m")
        except IRParseError:
            assert fast is None, repr(mutated[max(0, i - 40) : i + 40])
            continue
        if fast is not None:
            accepted += 1
            assert fast == slow and _positions(fast) == _positions(slow), repr(
                mutated[max(0, i - 40) : i + 40]
            )
    assert accepted > count // 3  # most mutations keep the canonical form (digits, names)


def test_canonical_reader_leaves_surrogates_to_the_grammar() -> None:
    text = '// bsnnc tile program v1\nprogram @p hw "rram\ud800" {\n  loop timestep {\n  }\n}\n'
    with pytest.raises(IRParseError, match="surrogate"):
        parse_program(text, "p")
