"""Shared fixtures: the ONNX zoo saved to files, fixture paths, the golden-file flag."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
FIXTURES = TESTS / "fixtures"
GOLDEN = TESTS / "golden"
sys.path.insert(0, str(TESTS))

from zoo import ZOO  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output (review the diff before committing)",
    )
    parser.addoption(
        "--retrain",
        action="store_true",
        default=False,
        help="also run the tests marked 'retrain' (retrain the digits model: ~1.5 min, torch)",
    )
    parser.addoption(
        "--examples",
        action="store_true",
        default=False,
        help="also run the tests marked 'examples' (short training runs of the example "
        "networks, the deep digits model's conversion curve: ~80 s, torch; CI runs them)",
    )
    parser.addoption(
        "--peers",
        action="store_true",
        default=False,
        help="also run the tests marked 'peers' (recompute the README's NIR importer table in "
        "SpikingJelly, Norse, sinabs and snnTorch: ~30 s, the interop extra; CI runs them)",
    )
    parser.addoption(
        "--mutations",
        type=int,
        default=None,
        metavar="N",
        help="mutated texts per grammar in tests/test_mutation.py (default: a few hundred)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``retrain`` run only with ``--retrain``, ``examples`` only with
    ``--examples``, ``peers`` only with ``--peers``."""
    reasons = {
        "retrain": "retrains the digits model: run with --retrain",
        "examples": "a short training run of an example network: run with --examples",
        "peers": "recomputes the README's NIR importer table: run with --peers",
    }
    for marker, reason in reasons.items():
        if config.getoption(f"--{marker}"):
            continue
        for item in items:
            if marker in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    """True when golden files should be rewritten instead of compared."""
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every zoo model saved as <name>.onnx in one directory."""
    d = tmp_path_factory.mktemp("zoo")
    for name, build in ZOO.items():
        onnx.save(build(), d / f"{name}.onnx")
    return d


@pytest.fixture(scope="session")
def zoo_data(zoo_dir: Path) -> Path:
    """Per zoo model, ``<name>.npz`` with 96 seeded random inputs ``x`` and labels ``y`` = the
    ANN reference's own predictions (so the ANN is 100 % accurate on them and an SNN's
    accuracy measures its agreement with the ANN). Used as calibration and test images."""
    from bsnnc.compiler.frontend.importer import import_onnx
    from bsnnc.runtime.ann import run_ann

    for name in ZOO:
        g = import_onnx(zoo_dir / f"{name}.onnx")
        shape = [int(d or 0) for d in g.inputs()[0].type.shape[1:]]
        rng = np.random.default_rng(sum(map(ord, name)))
        x = rng.standard_normal((96, *shape)).astype(np.float32)
        y = run_ann(g, x)[g.outputs[0]].argmax(axis=1)
        np.savez(zoo_dir / f"{name}.npz", x=x, y=y)
    return zoo_dir


@pytest.fixture
def save_model(tmp_path: Path) -> Callable[[onnx.ModelProto, str], Path]:
    """Save an in-memory model into the test's tmp dir; returns the path."""

    def save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        p = tmp_path / name
        onnx.save(model, p)
        return p

    return save


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bsnnc_example_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def pytest_report_header() -> str:
    """Which OpenBLAS kernels numpy uses (the golden files must not depend on it)."""
    import os

    return f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(CPU default)')}"
