"""The examples: the digits training script reproduces the committed model bit for bit, and
the PyTorch fixture exporter runs (both need the `examples` extra: PyTorch 2.13.0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.runtime.datasets import embedded_file

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


@pytest.mark.slow
def test_train_digits_reproduces_committed_model(tmp_path: Path) -> None:
    """Fixed seeds: retraining gives byte-identical ONNX and the recorded accuracy."""
    proc = run_example(
        "train_digits.py", "--out-dir", str(tmp_path), "--fixtures-dir", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "digits.onnx").read_bytes() == embedded_file("digits.onnx").read_bytes()
    fresh = json.loads((tmp_path / "digits_torch.json").read_text())
    committed = json.loads((FIXTURES / "digits_torch.json").read_text())
    assert fresh["test_predictions"] == committed["test_predictions"]
    assert fresh["test_accuracy"] == committed["test_accuracy"]


def test_export_torch_fixtures_runs_and_imports(tmp_path: Path) -> None:
    proc = run_example(
        "export_torch_fixtures.py", "--out-dir", str(tmp_path), "--only", "signscale"
    )
    assert proc.returncode == 0, proc.stderr
    for exporter in ("classic", "dynamo"):
        g = import_onnx(tmp_path / f"torch_{exporter}_signscale.onnx")
        assert any(c.type.kind.value == "bipolar" for c in g.constants.values())
