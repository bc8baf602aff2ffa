"""Per-pass tests in the LLVM FileCheck style: ``tests/filecheck/*.ir``.

Each file is a small hand-written IR input (constants written inline) whose expectations are
comments in the file itself::

    // RUN: passes=fold-scales[,<name>...] [more bsnnc opt flags]
    // CHECK: <pattern>        the next line (after the previous match) containing the pattern
    // CHECK-NEXT: <pattern>   the line right after the previous match
    // CHECK-NOT: <pattern>    on no line between the previous match and the next one
    //                         (or the end of the output)
    // UNCHANGED               the output equals the input (printed the same way)
    // ERROR: <fragment>       the passes fail with a bsnnc error whose message has <fragment>

A pattern is matched as a plain substring, except that ``{{regex}}`` parts are regular
expressions. Matches are line-granular: each CHECK/CHECK-NEXT matches a line strictly after
the previous match.

The passes run through the command line, ``bsnnc opt FILE --passes ... -o OUT.ir``; the output
checked is ``OUT.ir`` read back and printed with every constant inline, so checks see weights.
For an ``ERROR`` case the input must first pass ``bsnnc opt FILE`` with no passes (so the
error is the pass's), then the run must exit with a bsnnc error (exit code 2, ``error: ...``,
not an internal error) whose message contains the fragment.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bsnnc.compiler.cli import main
from bsnnc.ir.io import load_ir
from bsnnc.ir.printer import print_graph

CASES = Path(__file__).parent / "filecheck"
#: constants up to this size are printed inline for checking (every test input is smaller).
INLINE_MAX = 4096
_DIRECTIVE = re.compile(r"^\s*//\s*(RUN|CHECK-NEXT|CHECK-NOT|CHECK|ERROR|UNCHANGED)(?::(.*)|\s*)$")


@dataclass(frozen=True)
class Check:
    """One ``CHECK``-family line: its kind (``CHECK``, ``CHECK-NEXT``, ``CHECK-NOT``), the
    pattern and the line of the test file it is on."""

    kind: str
    pattern: str
    line: int

    def regex(self) -> re.Pattern[str]:
        """The pattern as a regex: literal text, ``{{...}}`` parts as regexes."""
        parts = re.split(r"\{\{(.*?)\}\}", self.pattern.strip())
        return re.compile("".join(p if i % 2 else re.escape(p) for i, p in enumerate(parts)))


@dataclass
class Case:
    """The directives of one test file."""

    path: Path
    passes: str = ""
    flags: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    error: str | None = None
    unchanged: bool = False


def read_case(path: Path) -> Case:
    """The directives of ``path``; a file without RUN or without expectations is an error."""
    case = Case(path)
    run = None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = _DIRECTIVE.match(line)
        if m is None:
            continue
        kind, rest = m.group(1), (m.group(2) or "").strip()
        if kind == "RUN":
            run = shlex.split(rest)
        elif kind == "ERROR":
            case.error = rest
        elif kind == "UNCHANGED":
            case.unchanged = True
        else:
            case.checks.append(Check(kind, rest, i))
    assert run and run[0].startswith("passes="), f"{path}: needs '// RUN: passes=<names>'"
    case.passes, case.flags = run[0].removeprefix("passes="), run[1:]
    has_output_checks = bool(case.checks) or case.unchanged
    assert has_output_checks != (case.error is not None), f"{path}: CHECKs or one ERROR"
    return case


def filecheck(output: str, checks: list[Check], where: str = "") -> None:
    """Match ``checks`` against ``output`` with FileCheck semantics (see the module
    docstring); an ``AssertionError`` names the failing check and shows the output."""
    lines = output.splitlines()
    last = -1  # index of the line of the previous positive match
    nots: list[Check] = []

    def fail(c: Check, what: str) -> None:
        shown = "\n".join(f"{i:3d}| {t}" for i, t in enumerate(lines))
        raise AssertionError(f"{where}:{c.line}: {c.kind}: {c.pattern!r} {what}\n{shown}")

    def check_nots(upto: int) -> None:
        for c in nots:
            for j in range(last + 1, upto):
                if c.regex().search(lines[j]):
                    fail(c, f"matched line {j}, between lines {last} and {upto}")
        nots.clear()

    for c in checks:
        if c.kind == "CHECK-NOT":
            nots.append(c)
            continue
        candidates = [last + 1] if c.kind == "CHECK-NEXT" else range(last + 1, len(lines))
        found = next((j for j in candidates if j < len(lines) and c.regex().search(lines[j])), None)
        if found is None:
            fail(c, f"not found after line {last}")
        assert found is not None
        check_nots(found)
        last = found
    check_nots(len(lines))


def run_opt(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``bsnnc opt argv`` in process: (exit code, stderr)."""
    code = main(["opt", *argv])
    return code, capsys.readouterr().err


def optimized(case: Case, passes: str, tmp: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The output of ``bsnnc opt`` on the case with ``passes``, every constant inline."""
    out = tmp / f"out-{len(passes)}.ir"
    code, err = run_opt([str(case.path), "--passes", passes, *case.flags, "-o", str(out)], capsys)
    assert code == 0, f"{case.path}: bsnnc opt --passes {passes} exited {code}:\n{err}"
    return print_graph(load_ir(out), inline_max=INLINE_MAX)


@pytest.mark.parametrize("path", sorted(CASES.glob("*.ir")), ids=lambda p: p.stem)
def test_filecheck(path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = read_case(path)
    if case.error is not None:
        optimized(case, "", tmp_path, capsys)  # the input itself is valid IR
        argv = [str(path), "--passes", case.passes, *case.flags, "-o", str(tmp_path / "o.ir")]
        code, err = run_opt(argv, capsys)
        assert code == 2, f"{path}: expected a bsnnc error (exit 2), got {code}:\n{err}"
        assert ("\n" + err).count("\nerror: ") == 1 and "internal error" not in err, err
        message = " ".join(err[err.index("error: ") :].split())  # rich may wrap it
        assert case.error in message, f"{path}: {case.error!r} not in:\n{err}"
        return
    output = optimized(case, case.passes, tmp_path, capsys)
    if case.unchanged:
        assert output == optimized(case, "", tmp_path, capsys), f"{path}: the IR changed"
    filecheck(output, case.checks, str(path))


def test_every_pass_has_a_case(capsys: pytest.CaptureFixture[str]) -> None:
    """Every pass ``bsnnc passes`` lists (aliases aside) is run by at least one case."""
    assert main(["passes"]) == 0
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    passes = {w[0] for w in listed if w and w[0] != "pipeline" and "alias" not in w}
    assert {"fold-scales", "lower-relu-to-if", "dce", "canonicalize"} <= passes
    covered = {p for f in CASES.glob("*.ir") for p in read_case(f).passes.split(",")}
    assert passes <= covered, f"passes without a case in {CASES}: {sorted(passes - covered)}"


# ---------------------------------------------------------------- the matcher itself

OUT = "a = 1\nb = 2\nc = 3\nd = 4\n"


@pytest.mark.parametrize(
    "checks",
    [
        [("CHECK", "a = 1"), ("CHECK", "c = 3")],
        [("CHECK", "b"), ("CHECK-NEXT", "c = 3"), ("CHECK-NEXT", "d")],
        [("CHECK", "a"), ("CHECK-NOT", "x"), ("CHECK", "d")],
        [("CHECK-NOT", "e"), ("CHECK", "= {{[0-9]}}")],
        [("CHECK", "c"), ("CHECK-NOT", "b")],  # b is before c: not between c and the end
    ],
)
def test_filecheck_accepts(checks: list[tuple[str, str]]) -> None:
    filecheck(OUT, [Check(k, p, i) for i, (k, p) in enumerate(checks)])


@pytest.mark.parametrize(
    "checks",
    [
        [("CHECK", "c = 3"), ("CHECK", "a = 1")],  # order matters
        [("CHECK", "a"), ("CHECK-NEXT", "c")],
        [("CHECK", "a"), ("CHECK-NOT", "b"), ("CHECK", "c")],
        [("CHECK", "b"), ("CHECK-NOT", "d")],  # to the end of the output
        [("CHECK", "= {{[5-9]}}")],
        [("CHECK", "a"), ("CHECK", "a")],  # one line matches once
        [("CHECK", "{{.}} = 1.")],  # '.' outside {{}} is literal
    ],
)
def test_filecheck_rejects(checks: list[tuple[str, str]]) -> None:
    with pytest.raises(AssertionError):
        filecheck(OUT, [Check(k, p, i) for i, (k, p) in enumerate(checks)])


def test_read_case_directives(tmp_path: Path) -> None:
    f = tmp_path / "c.ir"
    f.write_text(
        "// RUN: passes=dce,canonicalize --reset zero\n// CHECK: a\n// CHECK-NEXT: b\n"
        "//CHECK-NOT:c\n// UNCHANGED\n// CHECKS: not a directive\n"
    )
    case = read_case(f)
    assert (case.passes, case.flags, case.unchanged) == (
        "dce,canonicalize",
        ["--reset", "zero"],
        True,
    )
    kinds = [(c.kind, c.pattern) for c in case.checks]
    assert kinds == [("CHECK", "a"), ("CHECK-NEXT", "b"), ("CHECK-NOT", "c")]
    f.write_text("// RUN: passes=dce\n// ERROR: x\n// CHECK: y\n")
    with pytest.raises(AssertionError, match="CHECKs or one ERROR"):
        read_case(f)
