"""Conversion latency with empty vs half-full membranes: the README's ``--v-init`` table.

    python benchmarks/latency_v_init.py [--deep DIR] [--json]

For each model, both initial membranes (``--v-init zero``: v(0) = 0, the paper; ``half``:
v(0) = θ/2, Deng & Gu 2021 / Bu et al. 2022), both resets and both calibration statistics,
the default pipeline converts the model (the first 512 training images calibrate) and the
numpy reference simulates the test images for 64 steps. Reported: the ANN's accuracy, the
SNN's at T = 2, 4, 8, 16, 32, 64 and the first T at which it is within 1 point of the ANN.

Why half helps: with subtractive reset a constant current z reaches ⌊t·z/θ⌋ spikes by step t
from an empty membrane, but ⌊t·z/θ + ½⌋ from a half-full one — the rate rounds instead of
flooring, and the mean error of every layer's rate drops from ½ spike to 0 (Bu et al.,
Theorem 2), so deep layers stop starving in the first steps.

Models: the embedded digits model, and with ``--deep DIR`` the deeper 8-binary-layer digits
net of ``examples/train_digits_deep.py`` (``DIR/digits_deep.onnx`` with
``digits_deep_{train,test}.npz``; ``tests/fixtures`` holds a trained copy). Accuracy only:
every number is the same on any machine.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bsnnc.compiler.frontend.importer import import_onnx
from bsnnc.compiler.passes import PassOptions, run_pipeline
from bsnnc.runtime.datasets import Images, embedded_file, load_images
from bsnnc.runtime.simulate import ann_accuracy, conversion_summary, metrics, run_chunks

ROOT = Path(__file__).resolve().parents[1]
STEPS = (2, 4, 8, 16, 32, 64)
T = max(STEPS)


@dataclass
class Row:
    """One conversion of one model: accuracy at STEPS and the first T within 1 point."""

    calib_stat: str
    reset: str
    v_init: str
    ann: float
    accuracy: dict[int, float]
    first_within_1pt: int | None


def study(onnx_path: Path, train: Images, test: Images) -> list[Row]:
    """One row per (statistic, reset, v_init)."""
    g0 = import_onnx(onnx_path)
    rows: list[Row] = []
    for stat in ("image-max", "activations"):
        for reset in ("subtract", "zero"):
            for name, v_init in (("zero", 0.0), ("half", 0.5)):
                opts = PassOptions(reset=reset, statistic=stat, v_init=v_init, calib=lambda: train)
                g = run_pipeline(g0, opts).graph
                out = metrics(g, test, run_chunks(g, test, T, 256, None), T, None)
                conversion_summary(out, ann_accuracy(g, test)[0])
                curve = out["accuracy_per_timestep"]
                accuracy = {t: curve[t - 1] for t in STEPS}
                first = out["first_timestep_within_1pt"]
                rows.append(Row(stat, reset, name, out["ann_accuracy"], accuracy, first))
    return rows


def table(title: str, rows: list[Row]) -> str:
    """Markdown rows for the README."""
    head = " | ".join(f"T={t}" for t in STEPS)
    lines = [
        f"**{title}** (ANN {100 * rows[0].ann:.2f} %)",
        "",
        f"| statistic | reset | v(0) | {head} | first T within 1 pt |",
        "|" + "---|" * (len(STEPS) + 4),
    ]
    for r in rows:
        cells = " | ".join(f"{100 * r.accuracy[t]:.2f}" for t in STEPS)
        lines.append(
            f"| {r.calib_stat} | {r.reset} | {r.v_init} | {cells} | "
            f"{r.first_within_1pt or '> 64'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--deep", type=Path, help="folder of digits_deep.onnx and its .npz files")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = ap.parse_args()
    models = {
        "digits (embedded)": (
            embedded_file("digits.onnx"),
            load_images("digits", split="train", limit=512),
            load_images("digits", split="test"),
        )
    }
    if args.deep is not None:
        d = args.deep
        models["digits_deep (8 binary layers, 16×16)"] = (
            d / "digits_deep.onnx",
            load_images(str(d / "digits_deep_train.npz"), limit=512),
            load_images(str(d / "digits_deep_test.npz")),
        )
    results = {name: study(*spec) for name, spec in models.items()}
    if args.json:
        print(json.dumps({k: [asdict(r) for r in v] for k, v in results.items()}, indent=1))
    else:
        print("\n\n".join(table(name, rows) for name, rows in results.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
