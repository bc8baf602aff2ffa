"""Lossless conversion of quantized activations: the README's QONNX table.

    python benchmarks/latency_quantized.py [--fixtures DIR] [--json]

For each Brevitas-exported QONNX model of ``examples/train_brevitas_digits.py`` (2- and
4-bit activations, L = 3 and 15 levels; ``tests/fixtures`` holds trained copies) the default
pipeline converts it with no calibration images (every IF layer's λ = L·Δ comes from its
quantizer) and the numpy reference simulates the 450 digits test images for 2L steps.

Reported: the quantized ANN's accuracy, the SNN's at T = 1..2L with its gap to the ANN, and,
at T = L, per IF layer, the fraction of neurons whose spike count equals the quantized ANN's
level (Δ-multiples) and the mean |count − level|. The first layer integrates a constant
current, so with the half-threshold start it reproduces the quantizer exactly (up to ties,
which the quantizer rounds to even and the neuron up); deeper layers receive uneven spike
trains, whose order the count cannot undo — the theory's residual error (Bu et al. 2022,
§4), measured. Accuracy and counts only: every number is the same on any machine.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.ir.graph import Graph
from bsnnc.ir.ops import if_levels
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import Images, load_images
from bsnnc.runtime.simulate import ann_accuracy, conversion_summary, metrics, run_chunks
from bsnnc.runtime.snn import SnnRuntime

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "2-bit activations (L = 3)": "brevitas_digits_a2.onnx",
    "4-bit activations (L = 15)": "brevitas_digits_a4.onnx",
}


@dataclass
class Layer:
    """Spike counts after T = L steps against the quantized ANN's levels, one IF layer."""

    loc: str
    exact: float
    mean_abs_error: float


@dataclass
class Result:
    """One model: the ANN, the SNN's accuracy at T = 1..2L, the layers at T = L."""

    levels: int
    ann: float
    accuracy: list[float]
    layers: list[Layer]


def _no_images() -> Images:
    raise AssertionError("a model whose every activation is quantized needs no calibration")


def layer_counts(g: Graph, test: Images, levels: int) -> list[Layer]:
    """Per IF layer: spike counts after ``levels`` steps vs the ANN's quantization levels."""
    ifs = [n for n in g.nodes if n.op == "if"]
    trace = SnnRuntime(g).run(test.x, levels)
    ann = run_ann(g, test.x, keep=[n.result for n in ifs], dtype=np.float64)
    out = []
    for n in ifs:
        want = np.rint(ann[n.result] * if_levels(n.attrs)).reshape(len(test), -1)
        got = trace.per_neuron[n.result].reshape(len(test), -1)
        out.append(
            Layer(
                n.loc or n.result, float(np.mean(got == want)), float(np.mean(np.abs(got - want)))
            )
        )
    return out


def study(path: Path, test: Images) -> Result:
    """Convert without calibration, simulate 2L steps, compare layers at T = L."""
    g = run_pipeline(import_onnx(path), PassOptions(calib=_no_images)).graph
    levels = max(if_levels(n.attrs) for n in g.nodes if n.op == "if")
    T = 2 * levels
    out = metrics(g, test, run_chunks(g, test, T, 256, None), T, None)
    conversion_summary(out, ann_accuracy(g, test)[0])
    return Result(
        levels, out["ann_accuracy"], out["accuracy_per_timestep"], layer_counts(g, test, levels)
    )


def table(title: str, r: Result) -> str:
    """Markdown for the README: the curve with its gap, then the layers at T = L."""
    steps = sorted({1, 2, 3, 4, 6, 8, r.levels, r.levels * 2} & set(range(1, 2 * r.levels + 1)))
    lines = [
        f"**{title}**: quantized ANN {100 * r.ann:.2f} %",
        "",
        "| T | " + " | ".join(str(t) for t in steps) + " |",
        "|---|" + "---|" * len(steps),
        "| SNN % | " + " | ".join(f"{100 * r.accuracy[t - 1]:.2f}" for t in steps) + " |",
        "| gap (points) | "
        + " | ".join(f"{100 * (r.accuracy[t - 1] - r.ann):+.2f}" for t in steps)
        + " |",
        "",
        f"| IF layer (T = L = {r.levels}) | count = ANN level | mean abs(count − level) |",
        "|---|---|---|",
    ]
    for layer in r.layers:
        lines.append(f"| `{layer.loc}` | {100 * layer.exact:.2f} % | {layer.mean_abs_error:.4f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--fixtures",
        type=Path,
        default=ROOT / "tests" / "fixtures",
        help="folder of the brevitas_digits_*.onnx files (default: %(default)s)",
    )
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = ap.parse_args()
    test = load_images("digits", split="test")
    results = {title: study(args.fixtures / name, test) for title, name in MODELS.items()}
    if args.json:
        print(json.dumps({k: asdict(v) for k, v in results.items()}, indent=1))
    else:
        print("\n\n".join(table(k, v) for k, v in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
