"""``bsnnc verify``: the numpy ANN reference against onnxruntime on the same inputs."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from rich.progress import Progress
from rich.table import Table

from bsnnc.compiler.console import (
    MAX_BATCH,
    MAX_DIM,
    MAX_IMAGES,
    MAX_SEED,
    emit_json,
    err,
    float_in,
    int_in,
    resolve_model,
    shape_arg,
)
from bsnnc.ir.graph import Graph
from bsnnc.runtime.ann import run_ann
from bsnnc.runtime.datasets import Images, load_images

DEFAULT_RTOL = 1e-4


def add_parser(sub: Any) -> None:
    """Register the command."""
    p = sub.add_parser(
        "verify",
        help="check the numpy ANN reference against onnxruntime",
        description="Run the imported model with the numpy ANN reference and with onnxruntime on "
        "the same inputs and compare every output. relative error = max|ref − ort| / max|ort|. "
        "Exit 1 when it exceeds --rtol.",
    )
    p.add_argument("model", help="ONNX file, or an embedded model name (digits)")
    p.add_argument(
        "--images", help="image set: digits or a .npz with x [N,C,H,W] (default: random inputs)"
    )
    p.add_argument(
        "--limit",
        type=int_in(1, MAX_IMAGES),
        metavar="N",
        help=f"use the first N images (1..{MAX_IMAGES:,}; default: all; 16 random inputs)",
    )
    p.add_argument(
        "--batch",
        type=int_in(1, MAX_BATCH),
        default=64,
        metavar="B",
        help=f"images per batch (1..{MAX_BATCH:,}; default: %(default)s)",
    )
    p.add_argument(
        "--input-shape",
        type=shape_arg,
        help="per-sample input shape C,H,W for models with dynamic dimensions "
        f"(each 1..{MAX_DIM:,})",
    )
    p.add_argument(
        "--rtol",
        type=float_in(0.0),
        default=DEFAULT_RTOL,
        help="relative error tolerance (a finite number ≥ 0; default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int_in(0, MAX_SEED),
        default=0,
        metavar="S",
        help="seed of the random inputs (0..2^63−1; default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON to stdout")
    p.set_defaults(func=run)


def _inputs(args: argparse.Namespace, g: Graph) -> Images:
    if args.images:
        return load_images(args.images, limit=args.limit)
    shape = [int(d or 0) for d in g.inputs()[0].type.shape[1:]]
    n = args.limit or 16
    x = np.random.default_rng(args.seed).standard_normal((n, *shape)).astype(np.float32)
    return Images(f"random(seed={args.seed})", x, None)


def _run_ref(g: Graph, x: np.ndarray, batch: int) -> list[np.ndarray]:
    parts: list[list[np.ndarray]] = []
    with Progress(
        console=err, transient=True, disable=x.shape[0] <= batch or not err.is_terminal
    ) as bar:
        task = bar.add_task("numpy ANN reference", total=x.shape[0])
        for s in range(0, x.shape[0], batch):
            outs = run_ann(g, x[s : s + batch])
            parts.append([outs[o] for o in g.outputs])
            bar.advance(task, min(batch, x.shape[0] - s))
    return [np.concatenate([p[i] for p in parts]) for i in range(len(g.outputs))]


def compare(ref: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """(max absolute error, max absolute error / max |other|)."""
    diff = float(np.max(np.abs(ref.astype(np.float64) - other.astype(np.float64)), initial=0.0))
    scale = float(np.max(np.abs(other), initial=0.0))
    return diff, diff / scale if scale > 0 else diff


def run(args: argparse.Namespace) -> int:
    """Run ``verify``; returns the exit code (1 when over tolerance)."""
    import onnx

    from bsnnc.compiler.frontend.importer import import_onnx
    from bsnnc.runtime.ort import run_onnxruntime

    path = resolve_model(args.model)
    g = import_onnx(path, args.input_shape)
    images = _inputs(args, g)
    ref = _run_ref(g, images.x, args.batch)
    ort_out = run_onnxruntime(path, images.x, args.batch)
    onnx_names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    rows = []
    for name, onnx_name, a, b in zip(g.outputs, onnx_names, ref, ort_out, strict=True):
        abs_err, rel_err = compare(a, b)
        row: dict[str, Any] = {
            "output": name,
            "onnx_output": onnx_name,
            "max_abs_error": abs_err,
            "max_rel_error": rel_err,
            "ok": rel_err <= args.rtol,
        }
        if images.y is not None and a.ndim == 2:
            row["accuracy_reference"] = float(np.mean(a.argmax(1) == images.y))
            row["accuracy_onnxruntime"] = float(np.mean(b.argmax(1) == images.y))
            row["argmax_agreement"] = float(np.mean(a.argmax(1) == b.argmax(1)))
        rows.append(row)
    ok = all(r["ok"] for r in rows)
    if args.json:
        emit_json(
            {
                "model": args.model,
                "images": images.name,
                "count": len(images),
                "rtol": args.rtol,
                "ok": ok,
                "outputs": rows,
            }
        )
    else:
        _print(rows, images, args.rtol)
    return 0 if ok else 1


def _print(rows: list[dict[str, Any]], images: Images, rtol: float) -> None:
    t = Table(
        title=f"numpy ANN reference vs onnxruntime on {len(images)} images ({images.name})",
        title_justify="left",
    )
    for col in ("output", "max abs error", "max rel error", "accuracy (ref / ort)", "result"):
        t.add_column(col)
    for r in rows:
        acc = (
            f"{r['accuracy_reference']:.2%} / {r['accuracy_onnxruntime']:.2%}"
            if "accuracy_reference" in r
            else "—"
        )
        verdict = "[green]ok[/]" if r["ok"] else f"[red]FAIL (> {rtol:g})[/]"
        t.add_row(
            f"{r['onnx_output']} (%{r['output']})",
            f"{r['max_abs_error']:.3e}",
            f"{r['max_rel_error']:.3e}",
            acc,
            verdict,
        )
    err.print(t)
