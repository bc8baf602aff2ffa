"""``bsnnc simulate``: run a compiled B-SNN on images and report accuracy over time, spike
rates, normalized #OPS and early exit."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bsnnc.backends.rram.energy import (
    DEFAULT_ENERGY,
    ENERGY_SETS,
    energy_report,
    load_energy,
)
from bsnnc.backends.rram.hw import HwConfig, load_hw
from bsnnc.compiler.console import emit_json, err, positive_int, size_arg
from bsnnc.compiler.options import check_images
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.runtime.artifact import read_artifact
from bsnnc.runtime.datasets import Images, load_images
from bsnnc.runtime.simulate import ann_accuracy, chunk_size, conversion_summary, metrics, run_chunks
from bsnnc.runtime.tilesim import Counters, NonIdeal, TileSimulator, cycles


def add_parser(sub: Any) -> None:
    """Register the command."""
    p = sub.add_parser(
        "simulate",
        help="run a compiled .tiles artifact on images",
        description="Simulate the binary spiking network in ARTIFACT for T timesteps on an image "
        "set: accuracy at every timestep, ANN accuracy beside it, spike rates per layer, "
        "normalized #OPS, early exit.",
    )
    p.add_argument("artifact", type=Path, help="a .tiles file written by bsnnc compile")
    p.add_argument(
        "--images",
        help="digits, cifar10, cifar100, imagenet or an .npz "
        "(default: the test split of the artifact's calibration data set)",
    )
    p.add_argument(
        "--timesteps", "-T", type=positive_int, default=64, help="timesteps (default: %(default)s)"
    )
    p.add_argument(
        "--early-exit",
        type=float,
        metavar="V",
        help="stop an image once its max final membrane exceeds V",
    )
    p.add_argument("--limit", type=positive_int, help="use the first N images")
    p.add_argument(
        "--batch",
        type=positive_int,
        default=128,
        help="images per chunk at most (default: %(default)s)",
    )
    p.add_argument(
        "--max-memory",
        type=size_arg,
        default="2G",
        help="memory bound per chunk, e.g. 512M, 4G (default: %(default)s)",
    )
    p.add_argument(
        "--backend",
        choices=("numpy", "rram"),
        default="numpy",
        help="numpy: the reference; rram: execute the tile program on the crossbar model, with "
        "cycle and event counts (default: %(default)s)",
    )
    ni = p.add_argument_group("non-idealities (--backend rram; off by default, seeded)")
    ni.add_argument(
        "--adc-bits", type=positive_int, help="clip each array's column sums to ±(2^(bits−1) − 1)"
    )
    ni.add_argument(
        "--variation",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="relative σ of each cell's conductance",
    )
    ni.add_argument(
        "--stuck-at",
        type=float,
        default=0.0,
        metavar="P",
        help="fraction of cells stuck at +1 or −1",
    )
    ni.add_argument(
        "--seed", type=int, default=0, help="seed of the non-idealities (default: %(default)s)"
    )
    p.add_argument(
        "--hw",
        metavar="PRESET|FILE",
        help="hardware configuration for --backend rram (default: the one the artifact was "
        "compiled for); its array geometry must match the artifact's — clock, ADC, row-drive "
        "limit, NoC latency and energy table may differ",
    )
    p.add_argument(
        "--energy",
        metavar="SET|FILE",
        help=f"per-event energy table for --backend rram: {', '.join(ENERGY_SETS)} or a JSON "
        f"file (default: the hardware configuration's, {DEFAULT_ENERGY} in the presets)",
    )
    p.add_argument(
        "--data-dir", help="directory of cifar/imagenet data (default: $BSNNC_DATA or ./data)"
    )
    p.add_argument("--no-ann", action="store_true", help="skip the ANN accuracy")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="write the accuracy-vs-timestep curve (needs matplotlib)",
    )
    p.set_defaults(func=run)


def _images(args: argparse.Namespace, meta: dict[str, Any]) -> Images:
    spec = args.images or meta.get("dataset")
    if spec is None:
        raise BsnncError("no --images given and the artifact records no data set; pass --images")
    return load_images(spec, split="test", limit=args.limit, root=args.data_dir)


def _spiking_graph(path: Path) -> Graph:
    g = read_artifact(path).graph
    if not any(n.op == "readout" for n in g.nodes):
        raise BsnncError(
            f"{path}: member graph.ir is not a spiking network (no readout); recompile it with "
            "the default pipeline: bsnnc compile MODEL --calib ..."
        )
    return g


def run(args: argparse.Namespace) -> int:
    """Run ``simulate``; returns the exit code."""
    nonideal = _nonideal(args)
    hw = _hw(args)
    art = read_artifact(args.artifact)
    g = _spiking_graph(args.artifact)
    images = check_images(_images(args, art.meta), g, "--images")
    T = args.timesteps
    size = chunk_size(g, T, args.batch, args.max_memory)
    t0 = time.perf_counter()
    with Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("", total=len(images))
        sim = (
            TileSimulator(art, str(args.artifact), hw, nonideal=nonideal, hw_spec=args.hw)
            if args.backend == "rram"
            else None
        )
        energy = None
        if sim is not None:  # a bad table fails now, not after the simulation
            origin = "--energy" if args.energy else f"energy table of hardware {sim.hw.name}:"
            energy = load_energy(args.energy or sim.hw.energy, origin)
        counters = Counters.zeros(T)
        runner = None if sim is None else (lambda x, t: sim.run(x, t, counters, args.early_exit))
        chunks = run_chunks(
            g, images, T, size, args.early_exit, lambda n: bar.advance(task, n), runner
        )
    seconds = time.perf_counter() - t0
    out = metrics(g, images, chunks, T, args.early_exit)
    ann = None if args.no_ann else ann_accuracy(g, images)[0]
    conversion_summary(out, ann)
    out.update(
        {
            "backend": args.backend,
            "artifact": str(args.artifact),
            "images_source": images.name,
            "seconds": round(seconds, 3),
            "image_timesteps_per_second": round(len(images) * T / seconds, 1) if seconds else None,
            "reset": art.meta.get("conversion", {}).get("reset"),
        }
    )
    if sim is not None and energy is not None:
        out.update(rram_report(sim, counters, len(images), art.extra, energy))
    if args.plot is not None:
        plot_curve(args.plot, out)
    if args.json:
        emit_json(out)
    else:
        _print(out)
    return 0


def _hw(args: argparse.Namespace) -> HwConfig | None:
    if args.hw is None:
        return None
    if args.backend != "rram":
        raise BsnncError("--hw needs --backend rram")
    return load_hw(args.hw)


def _nonideal(args: argparse.Namespace) -> NonIdeal:
    ni = NonIdeal(args.adc_bits, args.variation, args.stuck_at, args.seed)
    if not ni.ideal and args.backend != "rram":
        raise BsnncError("--adc-bits, --variation and --stuck-at need --backend rram")
    if ni.variation < 0 or not 0 <= ni.stuck_at <= 1:
        raise BsnncError("--variation must be ≥ 0 and --stuck-at within [0, 1]")
    return ni


def rram_report(
    sim: TileSimulator, c: Counters, images: int, extra: dict[str, bytes], energy: dict[str, Any]
) -> dict[str, Any]:
    """The tile simulator's numbers: events per inference (averaged over images, up to each
    image's exit step under early exit),
    cycles of the pipeline model, and the mapping's arrays, bounds and utilization."""
    per = {
        k: float(getattr(c, k).sum()) / images
        for k in (
            "row_activations",
            "reads_issued",
            "reads_skipped",
            "conversions",
            "psum_adds",
            "neuron_updates",
            "spike_packets",
            "packet_hops",
            "cell_reads",
        )
    }
    cyc = cycles(c, images)
    mapping = json.loads(extra["mapping.json"]) if "mapping.json" in extra else {}
    keep = ("arrays", "arrays_bound_per_layer", "arrays_bound_global", "utilization", "bnn_arrays")
    bits = sim.nonideal.adc_bits or sim.hw.adc_bits
    return {
        **per,
        **cyc,
        **energy_report(per, energy, bits),
        "latency_s": cyc["cycles"] / sim.hw.clock_hz,
        "hw": sim.hw.name,
        "nonideal": dataclasses.asdict(sim.nonideal),
        **{k: mapping[k] for k in keep if k in mapping},
    }


def plot_curve(path: Path, out: dict[str, Any]) -> None:
    """Accuracy vs timestep (and the ANN accuracy) as a PNG."""
    curve = out.get("accuracy_per_timestep")
    if curve is None:
        raise BsnncError("--plot needs labelled images (the image set has no y)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BsnncError("--plot needs matplotlib: pip install 'bsnnc[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(range(1, len(curve) + 1), [100 * a for a in curve], label="B-SNN")
    if out.get("ann_accuracy") is not None:
        ax.axhline(100 * out["ann_accuracy"], color="gray", linestyle="--", label="ANN")
    ax.set_xlabel("timestep")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{out['images_source']}: accuracy vs timestep")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    except OSError as e:
        raise BsnncError(f"{path}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    err.print(f"wrote {path}")


def _print(out: dict[str, Any]) -> None:
    curve = out.get("accuracy_per_timestep")
    t = Table(
        title=f"B-SNN on {out['images']} images ({out['images_source']}), T={out['timesteps']}",
        title_justify="left",
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    if out.get("ann_accuracy") is not None:
        t.add_row("ANN accuracy", f"{out['ann_accuracy']:.2%}")
    if curve is not None:
        T = len(curve)
        for step in sorted({s for s in (8, 16, 32, 64, 128, 256) if s < T} | {T}):
            t.add_row(f"SNN accuracy at T={step}", f"{curve[step - 1]:.2%}")
        t.add_row("final accuracy", f"{out['final_accuracy']:.2%}")
    if out.get("conversion_loss") is not None:
        t.add_row("conversion loss", f"{100 * out['conversion_loss']:.2f} points")
        first = out.get("first_timestep_within_1pt")
        t.add_row("first T within 1 point of ANN", str(first) if first else "never")
    t.add_row("normalized #OPS", f"{out['normalized_ops']:.3f}")
    if "mean_exit_step" in out:
        t.add_row(f"mean exit step (V={out['early_exit']:g})", f"{out['mean_exit_step']:.1f}")
    t.add_row("throughput", f"{out['image_timesteps_per_second']:,.0f} image·timesteps/s")
    if out["backend"] == "rram":
        t.add_section()
        t.add_row(
            f"arrays on {out['hw']}",
            f"{out.get('arrays', '?')} (bound {out.get('arrays_bound_per_layer', '?')})",
        )
        t.add_row(
            "cycles per inference", f"{out['cycles']:,.0f} ({out['latency_s'] * 1e6:,.1f} µs)"
        )
        t.add_row(
            "  bounds (pipelined / serial)",
            f"{out['cycles_lower_bound']:,.0f} / {out['cycles_upper_bound']:,.0f}",
        )
        t.add_row("  critical layer", str(out["critical_layer"]))
        t.add_row("row activations / inference", f"{out['row_activations']:,.0f}")
        issued, skipped = out["reads_issued"], out["reads_skipped"]
        t.add_row("array reads issued / skipped", f"{issued:,.0f} / {skipped:,.0f}")
        t.add_row("ADC conversions / inference", f"{out['conversions']:,.0f}")
        e = out["energy_pj"]
        parts = ", ".join(f"{k} {v / 1e3:,.1f}" for k, v in e.items() if k != "total")
        missing = (
            f"; not in this set: {', '.join(out['energy_missing'])}"
            if out["energy_missing"]
            else ""
        )
        t.add_row(f"energy / inference ({out['energy_set']})", f"{e['total'] / 1e6:,.3f} µJ")
        t.add_row("  by component (nJ)", parts + missing)
        mean_hops = out["packet_hops"] / max(out["spike_packets"], 1)
        t.add_row("spike packets × mean hops", f"{out['spike_packets']:,.0f} × {mean_hops:.2f}")
    err.print(t)
    r = Table(title="per layer", title_justify="left")
    r.add_column("IF layer")
    r.add_column("spike rate / step", justify="right")
    for k, v in out["spike_rates"].items():
        r.add_row(k, f"{v:.4f}")
    err.print(r)
