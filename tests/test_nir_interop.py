"""NIR exports run in four SNN simulators (issue 13): SpikingJelly, Norse, sinabs, snnTorch.

Each importer loads bsnnc's ``--sum-pools`` export of the digits model (Norse and sinabs map no
``AvgPool2d``) and runs T = 64 steps of constant input; predictions per step and spikes per IF
layer are compared with bsnnc's numpy reference. The quick checks pin each importer's neuron as
measured; ``test_readme_table`` (``pytest --peers``, CI runs it) recomputes the README's table
on all 450 test images and checks it (``--update-golden`` rewrites it).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from clirun import ok
from nir_peers import PEERS, RUNNERS

from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import Images, load_images
from bsnnc.runtime.snn import SnnRuntime

pytest.importorskip("nir", reason="the nir extra is not installed")
MISSING = [
    m
    for m in ("torch", "nirtorch", "spikingjelly", "norse", "sinabs", "snntorch")
    if importlib.util.find_spec(m) is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the interop extra is not installed (missing {', '.join(MISSING)})"
)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 64
#: the neuron flavours compared: bsnnc's reset mode and initial membrane
MODES = (("zero", "zero"), ("subtract", "zero"), ("subtract", "half"), ("zero", "half"))
NAMES = {
    "spikingjelly": "SpikingJelly 2.0.0",
    "norse": "Norse 1.1.0",
    "sinabs": "sinabs 2.0.3",
    "snntorch": "snnTorch 1.0.0",
}
BEGIN, END = "<!-- nir-importers:begin -->", "<!-- nir-importers:end -->"


def _export(tmp_path: Path, capsys: pytest.CaptureFixture[str], reset: str, init: str) -> Path:
    art = tmp_path / f"digits_{reset}_{init}.tiles"
    ok(["compile", "digits", "--reset", reset, "--v-init", init, "-o", art], capsys)
    path = art.with_suffix(".nir")
    ok(["export", art, "--nir", path, "--sum-pools"], capsys)
    return path


def _ours(path: Path, images: Images) -> tuple[np.ndarray, list[int]]:
    g = read_artifact(path.with_suffix(".tiles")).graph
    trace = SnnRuntime(g).run(images.x, STEPS)
    spikes = [int(trace.spikes[n.result].sum()) for n in g.nodes if n.op == "if"]
    return trace.final.argmax(-1), spikes


@pytest.fixture(scope="module")
def images() -> Images:
    return load_images("digits", split="test", limit=120)


def test_norse_is_the_reset_zero_empty_start_neuron(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], images: Images
) -> None:
    """Norse's ``IAFCell``: v += I, fires at v > θ, resets to 0, starts at 0."""
    path = _export(tmp_path, capsys, "zero", "zero")
    theirs, spikes = RUNNERS["norse"](path, images.x, STEPS)
    ours, mine = _ours(path, images)
    assert np.array_equal(theirs, ours)  # every step, every image
    # float32 vs float64 membranes (and v > θ vs v ≥ θ) where one lands on θ
    assert all(abs(a - b) <= 2 for a, b in zip(mine, spikes, strict=True))


def test_sinabs_is_the_subtractive_neuron_with_more_spikes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], images: Images
) -> None:
    """sinabs's ``IAFSqueeze`` subtracts θ like bsnnc's default reset but may send several
    spikes in one step and clips its membrane at −θ: never fewer spikes than bsnnc's, and
    predictions nearly always equal."""
    path = _export(tmp_path, capsys, "subtract", "zero")
    theirs, spikes = RUNNERS["sinabs"](path, images.x, STEPS)
    ours, mine = _ours(path, images)
    assert spikes[0] == mine[0]  # the first layer's currents never need a second spike here
    assert all(b >= a for a, b in zip(mine, spikes, strict=True))
    assert (theirs == ours).mean() >= 0.99


def test_snntorch_leaks(tmp_path: Path, capsys: pytest.CaptureFixture[str], images: Images) -> None:
    """snnTorch 1.0.0 imports NIR's ``IF`` as ``Leaky`` with β = 0.9 (its issue #416): every
    layer spikes less than bsnnc's non-leaky neuron, and predictions drift away."""
    path = _export(tmp_path, capsys, "subtract", "zero")
    theirs, spikes = RUNNERS["snntorch"](path, images.x, STEPS)
    ours, mine = _ours(path, images)
    assert all(b < 0.9 * a for a, b in zip(mine, spikes, strict=True))
    assert 0.5 < (theirs == ours).mean() < 0.97


# --- the README table ---------------------------------------------------------------------


def _row(
    reset: str,
    init: str,
    peer: str,
    theirs: np.ndarray,
    spikes: list[int],
    ours: np.ndarray,
    mine: list[int],
    labels: np.ndarray,
) -> str:
    same = theirs == ours
    delta = " / ".join(f"{(b - a) / a * 100:+.2f}" for a, b in zip(mine, spikes, strict=True))
    acc = [float((p[-1] == labels).mean() * 100) for p in (theirs, ours)]
    return (
        f"| `--reset {reset} --v-init {init}` | {NAMES[peer]} | {same.mean() * 100:.2f} % | "
        f"{int(same.all(axis=1).sum())} of {STEPS} | {delta} | {acc[0]:.2f} % ({acc[1]:.2f} %) |"
    )


def _table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    images = load_images("digits", split="test")
    rows = [
        "| digits compiled with | importer | predictions = bsnnc's (image·steps) | steps with "
        "all images equal | spikes per IF layer vs bsnnc (%) | accuracy at T = 64 (bsnnc) |",
        "|---|---|---|---|---|---|",
    ]
    for reset, init in MODES:
        path = _export(tmp_path, capsys, reset, init)
        ours, mine = _ours(path, images)
        for peer in PEERS:
            theirs, spikes = RUNNERS[peer](path, images.x, STEPS)
            rows.append(_row(reset, init, peer, theirs, spikes, ours, mine, images.y))
    return rows


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _close(a: str, b: str) -> bool:
    """Two rows say the same: equal text, numbers within 1 (torch's float32 kernels vary with
    the CPU; a tie flipped changes a count)."""
    if NUMBER.sub("#", a) != NUMBER.sub("#", b):
        return False
    x, y = (np.array([float(v) for v in NUMBER.findall(r)]) for r in (a, b))
    return x.shape == y.shape and bool(np.all(np.abs(x - y) <= 1.0))


@pytest.mark.peers
def test_readme_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], update_golden: bool
) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    assert BEGIN in text and END in text, "README: the NIR importer table's markers are missing"
    head, rest = text.split(BEGIN)
    old, tail = rest.split(END)
    rows = _table(tmp_path, capsys)
    if update_golden:
        readme.write_text(head + BEGIN + "\n" + "\n".join(rows) + "\n" + END + tail)
        return
    printed = [r for r in old.strip().splitlines() if r.startswith("|")]
    assert len(printed) == len(rows), "README's rows differ: pytest --peers --update-golden"
    for want, got in zip(printed, rows, strict=True):
        assert _close(want, got), f"README says\n{want}\nmeasured\n{got}"
