"""The examples: the digits training script runs deterministically (and, with ``--retrain``,
reaches the committed model), and the PyTorch fixture exporter runs (both need the
`examples` extra: PyTorch 2.13.0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.ir.types import Kind
from bsnnc.runtime.ann import run_ann

torch = pytest.importorskip(
    "torch", reason="the examples extra (pip install torch==2.13.0) is not installed"
)
pytestmark = pytest.mark.torch


def run_example(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.mark.examples
def test_train_digits_runs_and_is_deterministic(tmp_path: Path) -> None:
    """A short training run (one epoch per phase) twice with the same seed: the script trains,
    exports and checks the model against onnxruntime, and gives the same bytes both times."""
    short = ("--fp-epochs", "1", "--bin-epochs", "1", "--no-dynamo")
    outs = []
    for run in ("a", "b"):
        d = tmp_path / run
        proc = run_example("train_digits.py", "--out-dir", str(d), "--fixtures-dir", str(d), *short)
        assert proc.returncode == 0, proc.stderr
        assert "onnxruntime argmax == torch argmax" in proc.stdout
        outs.append(((d / "digits.onnx").read_bytes(), (d / "digits_torch.json").read_text()))
    assert outs[0] == outs[1]


@pytest.mark.retrain
def test_train_digits_reaches_the_committed_model(tmp_path: Path) -> None:
    """Full retraining (``pytest --retrain``, ~1.5 min on 2 cores) reaches the committed
    model's test accuracy within one point, and bsnnc's numpy reference predicts exactly what
    PyTorch does for the retrained model. Not byte-identical on every CPU: PyTorch's float
    reductions differ between CPUs (measured: 98.00 % for the committed model, made on an
    Intel Xeon, 97.78 % retrained on an AMD EPYC)."""
    proc = run_example(
        "train_digits.py", "--out-dir", str(tmp_path), "--fixtures-dir", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads((tmp_path / "digits_torch.json").read_text())
    committed = json.loads((FIXTURES / "digits_torch.json").read_text())
    assert fresh["test_accuracy"] >= committed["test_accuracy"] - 0.01
    g = import_onnx(tmp_path / "digits.onnx")
    x = np.load(tmp_path / "digits_test.npz")["x"]
    ours = run_ann(g, x)[g.outputs[0]].argmax(axis=1)
    assert ours.tolist() == fresh["test_predictions"]


@pytest.mark.examples
def test_export_torch_fixtures_runs_and_imports(tmp_path: Path) -> None:
    proc = run_example(
        "export_torch_fixtures.py", "--out-dir", str(tmp_path), "--only", "signscale"
    )
    assert proc.returncode == 0, proc.stderr
    for exporter in ("classic", "dynamo"):
        g = import_onnx(tmp_path / f"torch_{exporter}_signscale.onnx")
        assert any(c.type.kind.value == "bipolar" for c in g.constants.values())


@pytest.mark.examples
def test_train_digits_deep_runs_and_converts(tmp_path: Path) -> None:
    """The deeper example (8 binary layers on 16×16 digits), one epoch per phase: it trains,
    exports a model whose binary layers are exactly α·sign(W) (bsnnc finds 8), checks it
    against onnxruntime, and writes the image sets the README's latency table reads."""
    proc = run_example(
        "train_digits_deep.py", "--out-dir", str(tmp_path), "--fp-epochs", "1", "--bin-epochs", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert "onnxruntime argmax == torch argmax on all 450 test images" in proc.stdout
    g = import_onnx(tmp_path / "digits_deep.onnx")
    binary = [n for n in g.nodes if n.op in ("conv2d", "dense") and g.constants[
        n.const_operands()[0]].type.kind == Kind.BIPOLAR]  # fmt: skip
    assert len(binary) == 8
    with np.load(tmp_path / "digits_deep_test.npz") as z:
        assert z["x"].shape == (450, 1, 16, 16) and z["x"].dtype == np.float32
        out = run_ann(g, z["x"][:32])[g.outputs[0]]
    facts = json.loads((tmp_path / "digits_deep_torch.json").read_text())
    assert list(out.argmax(axis=1)) == facts["test_predictions"][:32]


@pytest.mark.examples
def test_train_digits_resnet_runs_and_imports(tmp_path: Path) -> None:
    """The residual example, one epoch per phase: both exports pass its onnxruntime check and
    import with three merges and seven binary convolutions."""
    proc = run_example(
        "train_digits_resnet.py",
        "--out-dir",
        str(tmp_path),
        "--fp-epochs",
        "1",
        "--bin-epochs",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("digits_resnet", "digits_resnet_dynamo"):
        g = import_onnx(tmp_path / f"{name}.onnx")
        assert sum(n.op == "add" for n in g.nodes) == 3
        kinds = [
            g.constants[n.const_operands()[0]].type.kind.value for n in g.nodes if n.op == "conv2d"
        ]
        assert kinds.count("bipolar") == 7
