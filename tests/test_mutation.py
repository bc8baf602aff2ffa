"""Mutation tests of the two text formats (issue 9, item 8): hypothesis mutates real texts —
the golden IR stages and the FileCheck IR files, the golden tile programs — by deleting,
duplicating and swapping lines, replacing tokens with other tokens of the file, flipping
characters, and inserting deep brackets, huge numbers and bad escapes; then runs the parser,
the verifier or program checker (and, for IR with its data, two passes; for a program that
still validates, the tile simulator). Nothing but :class:`BsnncError` may come out, and a
mutated program that validates must compute what the original computes.

A few hundred texts per grammar by default; ``pytest --mutations N`` runs N per grammar.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN, TESTS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsnnc.backends.rram.cost import Counters
from bsnnc.backends.rram.emit import check_program
from bsnnc.backends.rram.hw import load_hw
from bsnnc.backends.rram.lower import lower_to_tiles
from bsnnc.backends.rram.program import parse_program
from bsnnc.backends.rram.sim import TileSimulator
from bsnnc.backends.rram.validate import validate_program
from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.io import write_npz
from bsnnc.ir.parser import parse
from bsnnc.ir.verifier import verify
from bsnnc.runtime.artifact import Artifact
from bsnnc.runtime.datasets import load_images

#: mutated texts per grammar without ``--mutations``
DEFAULT_MUTATIONS = 250
#: the zoo models whose golden programs are validated against their graphs (and simulated)
PROGRAM_MODELS = ("avg_before_relu", "gap_binary", "vgg_small")

IR_FILES = sorted(GOLDEN.glob("*/0*.ir")) + sorted((TESTS / "filecheck").glob("*.ir"))
IR_CORPUS = [(str(p.relative_to(TESTS)), p.read_text(encoding="utf-8")) for p in IR_FILES]

#: what a flipped character becomes: syntax, digits, quotes, escapes, odd unicode
PALETTE = [*'[]{}()",:=%@#\\/-+.e0123456789 \t\n', "é", "\x00", "\x7f", "\u2028", "\ufeff"]
#: what may be inserted: deep brackets, huge numbers, bad escapes, stray sigils
INSERTS: list[Callable[[int], str]] = [
    lambda n: "[" * n,
    lambda n: "{" * n,
    lambda n: "(" * n,
    lambda n: "[" * n + "1" + "]" * n,
    lambda n: "9" * n,
    lambda n: "-" + "9" * n,
    lambda n: f"1e{n}",
    lambda n: f"-{n}",
    lambda n: f"{n}:{n // 2}",
    lambda n: "\\q",
    lambda n: "\\ud800",
    lambda n: '"\\u' + str(n)[:3] + '"',
    lambda n: "\n" * n,
    lambda n: "nan",
    lambda n: "inf",
    lambda n: "%",
    lambda n: "@",
]
_TOKEN = re.compile(r'"[^"\n]*"|[^\s\[\](){},:=]+')
Corpus = list[tuple[str, str]]


def _index(draw: st.DrawFn, n: int) -> int:
    """An index below ``n``, spread over the range (hypothesis favours the ends of a range,
    which would mutate the first line, ``graph``/``program``, far too often)."""
    return draw(st.integers(0, 10**9)) % n if n else 0


def _mutate(draw: st.DrawFn, text: str) -> str:
    """One mutation of ``text``."""
    lines = text.split("\n")
    kind = draw(st.sampled_from(["delete", "duplicate", "swap", "token", "flip", "insert"]))
    if kind in ("delete", "duplicate", "swap"):
        i = _index(draw, len(lines))
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(_index(draw, len(lines) + 1), lines[i])
        else:
            j = _index(draw, len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if kind == "token":
        spans = [m.span() for m in _TOKEN.finditer(text)]
        if not spans:
            return text
        lo, hi = spans[_index(draw, len(spans))]
        other = draw(st.sampled_from(sorted({text[a:b] for a, b in spans})))
        return text[:lo] + other + text[hi:]
    pos = _index(draw, len(text) + 1)
    if kind == "flip":
        return text[:pos] + draw(st.sampled_from(PALETTE)) + text[pos + 1 :]
    n = draw(st.sampled_from([1, 2, 31, 33, 400, 4400, 20_000]))
    return text[:pos] + draw(st.sampled_from(INSERTS))(n) + text[pos:]


@st.composite
def mutated(draw: st.DrawFn, corpus: Corpus) -> tuple[str, str]:
    """(name, text): a text of ``corpus`` after one to three mutations."""
    name, text = draw(st.sampled_from(corpus))
    for _ in range(draw(st.integers(1, 3))):
        text = _mutate(draw, text)
    return name, text


def run_mutations(
    request: pytest.FixtureRequest, corpus: Corpus, check: Callable[[str, str], None]
) -> None:
    """``check(name, text)`` on ``--mutations`` (or :data:`DEFAULT_MUTATIONS`) mutated texts."""
    n = request.config.getoption("--mutations") or DEFAULT_MUTATIONS

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutated(corpus))
    def property_(case: tuple[str, str]) -> None:
        check(*case)

    property_()


def check_ir(name: str, text: str) -> None:
    """Parse, verify and (when every constant has its data) run two passes."""
    try:
        g = parse(text, source=name)
        verify(g)
        if all(c.data is not None for c in g.constants.values()):
            run_pipeline(g, names=["dce", "canonicalize"])
    except BsnncError:
        pass


def test_ir_text_mutations(request: pytest.FixtureRequest) -> None:
    assert len(IR_CORPUS) > 40
    run_mutations(request, IR_CORPUS, check_ir)


@dataclass
class Model:
    """A zoo model converted and lowered: what its golden program must agree with."""

    graph: Graph
    arrays: dict[str, np.ndarray]
    members: dict[str, bytes]
    x: np.ndarray
    final: np.ndarray


T = 3


def _simulate(graph: Graph, members: dict[str, bytes], x: np.ndarray) -> np.ndarray:
    sim = TileSimulator(Artifact(graph, {}, members), "m.tiles")
    return sim.run(x, T, Counters.zeros(T)).final


@pytest.fixture(scope="module")
def models(zoo_data: Path) -> dict[str, Model]:
    """Per model of :data:`PROGRAM_MODELS`: the converted graph, its program's arrays and
    artifact members, two images and the simulator's output on them."""
    out = {}
    for name in PROGRAM_MODELS:
        data = zoo_data / f"{name}.npz"
        options = PassOptions(calib=lambda data=data: load_images(str(data)))
        g = run_pipeline(import_onnx(zoo_data / f"{name}.onnx"), options).graph
        tiles = lower_to_tiles(g)
        golden = (GOLDEN / name / "program.txt").read_text(encoding="utf-8")
        assert tiles.program == golden, f"{name}: the golden program is not this model's"
        npz = io.BytesIO()
        write_npz(npz, tiles.arrays)
        members = {
            "program.txt": golden.encode(),
            "program.npz": npz.getvalue(),
            "mapping.json": json.dumps(tiles.mapping).encode(),
        }
        x = np.load(data)["x"][:2]
        out[name] = Model(g, tiles.arrays, members, x, _simulate(g, members, x))
    return out


def test_program_mutations(request: pytest.FixtureRequest, models: dict[str, Model]) -> None:
    corpus = [
        (name, (GOLDEN / name / "program.txt").read_text(encoding="utf-8")) for name in models
    ]
    hw = load_hw("rram-128")

    def check(name: str, text: str) -> None:
        m = models[name]
        try:
            p = parse_program(text, f"{name}[program.txt]")
            check_program(p, f"{name}[program.txt]")
            validate_program(p, m.graph, m.arrays, hw, name)
        except BsnncError:
            return
        # it still validates: the same graph, blocks, thresholds and weights, the same result
        final = _simulate(m.graph, {**m.members, "program.txt": text.encode()}, m.x)
        np.testing.assert_array_equal(final, m.final)

    run_mutations(request, corpus, check)


def test_every_golden_program_validates(models: dict[str, Model]) -> None:
    """The unmutated programs pass (so the mutation tests test mutations, not the corpus)."""
    hw = load_hw("rram-128")
    for name, m in models.items():
        text = m.members["program.txt"].decode()
        validate_program(parse_program(text), m.graph, m.arrays, hw, name)
        with pytest.raises(BsnncError, match=r"no readout for graph.ir's output"):
            validate_program(
                parse_program(re.sub(r"    readout .*\n", "", text)), m.graph, m.arrays, hw, name
            )
