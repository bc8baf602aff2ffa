"""``bsnnc simulate``: run a compiled B-SNN on images and report accuracy over time, spike
rates, normalized #OPS and early exit."""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bsnnc.backends.rram.energy import (
    DEFAULT_ENERGY,
    ENERGY_SETS,
    load_energy,
)
from bsnnc.backends.rram.hw import HwConfig, load_hw
from bsnnc.backends.rram.validate import check_artifact
from bsnnc.compiler.console import (
    EMBEDDED_MODELS,
    MAX_BATCH,
    MAX_IMAGES,
    MAX_SEED,
    emit_json,
    err,
    float_in,
    format_size,
    int_in,
    size_in,
)
from bsnnc.compiler.options import check_images
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.io import atomic_write, check_replaceable
from bsnnc.runtime.artifact import Artifact, read_artifact
from bsnnc.runtime.datasets import EMBEDDED, NAMED, ImageSource, data_dir, load_images

if TYPE_CHECKING:  # the simulators load onnxruntime: imported when a command runs
    from bsnnc.backends.rram.sim import NonIdeal

#: options of ``bsnnc compile`` that change the artifact (flag → takes a value): given to
#: ``simulate`` they fail with "recompile with …" instead of argparse's bare "unrecognized
#: arguments". (``--hw`` and ``--data-dir`` are options of ``simulate`` too.)
COMPILE_ONLY: dict[str, bool] = {
    "--reset": True,
    "--v-init": True,
    "--percentile": True,
    "--norm": True,
    "--calib-stat": True,
    "--calib": True,
    "--calib-limit": True,
    "--fp-layers": True,
    "--pack": False,
    "--duplicate": True,
    "--pipeline": True,
    "--passes": True,
    "--input-shape": True,
}

#: the non-ideal crossbar options (dest, flag), and the other options of the crossbar model
#: (dest, flag): all need ``--backend rram``.
NONIDEAL_OPTIONS = (
    ("adc_bits", "--adc-bits"),
    ("variation", "--variation"),
    ("stuck_at", "--stuck-at"),
    ("seed", "--seed"),
)
RRAM_OPTIONS = (("hw", "--hw"), ("energy", "--energy"))

#: ranges of the numeric flags (checked when the command line is parsed)
MAX_TIMESTEPS = 1_000_000
MAX_ADC_BITS = 32
MAX_VARIATION = 10.0
MIN_MEMORY, MAX_MEMORY = 16 << 20, 1 << 40
MAX_SHARDS = 100_000
MAX_RETRIES = 100
DEFAULT_RETRIES = 3


class CompileOnlyAction(argparse.Action):
    """A compile-time option given to ``simulate``: a usage error that says how to recompile."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        flag = option_string or self.option_strings[0]
        given = f" {values}" if isinstance(values, str) else ""
        artifact = getattr(namespace, "artifact", None) or "ARTIFACT.tiles"
        parser.error(
            f"{flag} is a compile-time option: recompile with bsnnc compile MODEL -o {artifact} "
            f"{flag}{given} (the artifact records how it was converted; simulate only runs it)"
        )


def _add_compile_only(p: argparse.ArgumentParser) -> None:
    """Register :data:`COMPILE_ONLY`, hidden from ``--help``."""
    for flag, takes_value in COMPILE_ONLY.items():
        p.add_argument(
            flag,
            action=CompileOnlyAction,
            nargs="?" if takes_value else 0,
            dest=f"compile_only_{flag.strip('-').replace('-', '_')}",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )


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
        "--timesteps",
        "-T",
        type=int_in(1, MAX_TIMESTEPS),
        default=64,
        help=f"timesteps (1..{MAX_TIMESTEPS:,}; default: %(default)s)",
    )
    p.add_argument(
        "--early-exit",
        type=float_in(0.0),
        metavar="V",
        help="stop an image once its max final membrane exceeds V (a finite number ≥ 0)",
    )
    p.add_argument(
        "--limit",
        type=int_in(1, MAX_IMAGES),
        metavar="N",
        help=f"use the first N images (1..{MAX_IMAGES:,})",
    )
    p.add_argument(
        "--batch",
        type=int_in(1, MAX_BATCH),
        default=128,
        metavar="B",
        help=f"images per chunk at most (1..{MAX_BATCH:,}; default: %(default)s)",
    )
    p.add_argument(
        "--max-memory",
        type=size_in(MIN_MEMORY, MAX_MEMORY),
        default="2G",
        metavar="SIZE",
        help=f"memory bound per chunk, e.g. 512M, 4G ({format_size(MIN_MEMORY)}.."
        f"{format_size(MAX_MEMORY)}; default: %(default)s)",
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
        "--adc-bits",
        type=int_in(1, MAX_ADC_BITS),
        metavar="BITS",
        help=f"clip each array's column sums to ±(2^(bits−1) − 1) (1..{MAX_ADC_BITS})",
    )
    ni.add_argument(
        "--variation",
        type=float_in(0.0, MAX_VARIATION),
        metavar="SIGMA",
        help=f"relative σ of each cell's conductance (0..{MAX_VARIATION:g}; default: 0)",
    )
    ni.add_argument(
        "--stuck-at",
        type=float_in(0.0, 1.0),
        metavar="P",
        help="fraction of cells stuck at +1 or −1 (0..1; default: 0)",
    )
    ni.add_argument(
        "--seed",
        type=int_in(0, MAX_SEED),
        metavar="S",
        help="seed of the non-idealities (0..2^63−1; default: 0)",
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
    ex = p.add_argument_group("executor (where the images run)")
    ex.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: shards of the image set as Ray tasks, merged into the "
        "same JSON (pip install 'bsnnc[ray]'; default: %(default)s)",
    )
    ex.add_argument(
        "--address",
        metavar="ADDR",
        help="the Ray cluster to join, e.g. 10.0.0.1:6379 or auto (default: start a local "
        "Ray instance for this run)",
    )
    ex.add_argument(
        "--shards",
        type=int_in(1, MAX_SHARDS),
        metavar="N",
        help=f"contiguous image ranges, one Ray task each (1..{MAX_SHARDS:,}; default: the "
        "cluster's CPUs)",
    )
    ex.add_argument(
        "--retries",
        type=int_in(0, MAX_RETRIES),
        metavar="N",
        help=f"times a shard whose worker process died is rerun (0..{MAX_RETRIES}; default: "
        f"{DEFAULT_RETRIES})",
    )
    p.add_argument("--no-ann", action="store_true", help="skip the ANN accuracy")
    p.add_argument("--json", action="store_true", help="print one JSON object to stdout")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also report the wall seconds spent in each layer (JSON: layer_seconds)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="write the accuracy-vs-timestep curve (needs matplotlib; the directory must exist)",
    )
    _add_compile_only(p)
    p.set_defaults(func=run)


def _image_spec(args: argparse.Namespace, meta: dict[str, Any]) -> str:
    """``--images``, else the test split of the artifact's data set, else (an .npz) the
    calibration images themselves, with a warning."""
    spec = args.images or meta.get("dataset")
    if spec is None:
        raise BsnncError("no --images given and the artifact records no data set; pass --images")
    if args.images is None and spec not in NAMED:
        err.print(
            f"warning: no --images given: evaluating on the calibration images {spec}; pass "
            "--images for a held-out set",
            style="bold yellow",
            markup=False,
            highlight=False,
        )
    return str(spec)


def _check_artifact_path(path: Path) -> None:
    """An ONNX model or an embedded model's name given instead of a .tiles artifact: say how
    to compile it."""
    spec = str(path)
    if path.suffix.lower() == ".onnx" or (not path.exists() and spec in EMBEDDED_MODELS):
        tiles = f"{path.stem}.tiles"
        raise BsnncError(
            f"{spec} is a model, not a .tiles artifact: compile it first: bsnnc compile {spec} "
            f"-o {tiles}, then bsnnc simulate {tiles}"
        )


def _spiking_graph(art: Artifact, path: Path) -> Graph:
    g = art.graph
    if not any(n.op == "readout" for n in g.nodes):
        raise BsnncError(
            f"{path}: member graph.ir is not a spiking network (no readout); recompile it with "
            "the default pipeline: bsnnc compile MODEL --calib ..."
        )
    return g


def run(args: argparse.Namespace) -> int:
    """Run ``simulate``; returns the exit code."""
    from bsnnc.backends.rram.report import rram_report
    from bsnnc.compiler.shards import SimOptions, run_shard, tile_simulator
    from bsnnc.runtime.simulate import conversion_summary, metrics

    _check_artifact_path(args.artifact)
    _check_executor(args)
    opts = SimOptions(
        args.timesteps,
        args.batch,
        args.max_memory,
        args.early_exit,
        args.backend,
        _nonideal(args),
        _hw(args),
        args.hw,
        not args.no_ann,
    )
    plt = _pyplot(args.plot)
    data = _artifact_bytes(args.artifact) if args.executor == "ray" else None
    art = read_artifact(args.artifact, data)  # the bytes the workers get are these
    g = _spiking_graph(art, args.artifact)
    if args.backend == "numpy":  # the rram backend validates its program itself
        check_artifact(art, str(args.artifact))
    spec = _image_spec(args, art.meta)
    sim = tile_simulator(art, str(args.artifact), opts)
    energy = None
    if sim is not None:  # a bad table fails now, not after the simulation
        origin = "--energy" if args.energy else f"energy table of hardware {sim.hw.name}:"
        energy = load_energy(args.energy or sim.hw.energy, origin)
    with _progress_bar() as bar:
        if args.executor == "ray":
            from bsnnc.compiler.ray_executor import RaySettings, run_on_ray

            settings = RaySettings(args.address, args.shards, args.retries)
            assert data is not None
            source = _source(args, spec)
            labels = args.plot is not None
            result, executor = run_on_ray(args.artifact, data, opts, source, settings, bar, labels)
            seconds = float(executor["seconds"])
        else:
            images = check_images(
                load_images(spec, split="test", limit=args.limit, root=args.data_dir),
                g,
                "--images",
            )
            if args.plot is not None and images.y is None:
                raise BsnncError(f"--plot needs labelled images ({images.name} has no y)")
            task = bar.add_task("", total=len(images))
            result = run_shard(g, sim, opts, images, lambda n: bar.advance(task, n))
            seconds = result.seconds
            executor = {
                "kind": "local",
                "shards": 1,
                "nodes": 1,
                "seconds_per_shard": [round(seconds, 3)],
            }
    out = metrics(g, Labels(result.labels), result.chunks, opts.timesteps, args.early_exit)
    ann = None
    if result.ann_predictions is not None and result.labels is not None:
        ann = float(np.mean(result.ann_predictions == result.labels))
    conversion_summary(out, ann)
    n_images = len(result.chunks.image_digests)
    out.update(
        {
            "backend": args.backend,
            "artifact": str(args.artifact),
            "images_source": result.name,
            "seconds": round(seconds, 3),
            "image_timesteps_per_second": round(n_images * opts.timesteps / seconds, 1)
            if seconds
            else None,
            "reset": art.meta.get("conversion", {}).get("reset"),
            # artifacts from before --v-init started every membrane empty
            "v_init": art.meta.get("conversion", {}).get("v_init", 0.0),
            "evaluated_on_calibration_images": args.images is None
            and result.name == art.meta.get("dataset"),
            "executor": executor,
        }
    )
    if args.profile:
        out["layer_seconds"] = layer_seconds(g, result.chunks.seconds)
    if sim is not None and energy is not None and result.counters is not None:
        out.update(rram_report(sim, result.counters, n_images, energy))
    if args.plot is not None:
        plot_curve(args.plot, out, plt)
    if args.json:
        emit_json(out)
    else:
        _print(out)
    return 0


@dataclass(frozen=True)
class Labels:
    """The labels of the images a run simulated (what the metrics read of them)."""

    y: np.ndarray | None


def _progress_bar() -> Progress:
    """The progress bar over images (on stderr, only on a terminal)."""
    return Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _check_executor(args: argparse.Namespace) -> None:
    """``--address``, ``--shards`` and ``--retries`` need ``--executor ray``."""
    flags = (("address", "--address"), ("shards", "--shards"), ("retries", "--retries"))
    given = [f for d, f in flags if getattr(args, d) is not None]
    if given and args.executor != "ray":
        raise BsnncError(f"{', '.join(given)}: needs --executor ray")
    if args.retries is None:
        args.retries = DEFAULT_RETRIES


def _artifact_bytes(path: Path) -> bytes:
    """The artifact file's bytes (for the cluster's object store), within the size an
    artifact may have."""
    from bsnnc.runtime.artifact import MAX_TOTAL_BYTES

    if not path.is_file():
        raise BsnncError(f"{path}: no such file")
    try:
        size = path.stat().st_size
        if size > MAX_TOTAL_BYTES:
            raise BsnncError(f"{path}: {size:,} bytes, more than an artifact may hold")
        return path.read_bytes()
    except OSError as e:
        raise BsnncError(f"{path}: cannot read it ({e.strerror or e})") from None


def _source(args: argparse.Namespace, spec: str) -> ImageSource:
    """Where the workers read the images: a name, or an .npz path made absolute (a Ray worker
    does not run in this directory); the data directory likewise."""
    named = spec in NAMED
    root = None if spec in EMBEDDED else str(data_dir(args.data_dir).resolve())
    path = spec if named else str(Path(spec).resolve())
    return ImageSource(path, "test", args.limit, root, name=None if named else spec)


def _given(args: argparse.Namespace, options: tuple[tuple[str, str], ...]) -> list[str]:
    """The flags of ``options`` (dest, flag) given on the command line."""
    return [flag for dest, flag in options if getattr(args, dest) is not None]


def _hw(args: argparse.Namespace) -> HwConfig | None:
    """``--hw`` loaded; ``--hw`` and ``--energy`` need ``--backend rram``."""
    given = _given(args, RRAM_OPTIONS)
    if given and args.backend != "rram":
        verb = "needs" if len(given) == 1 else "need"
        raise BsnncError(
            f"{' and '.join(given)} {verb} --backend rram (the numpy backend has no crossbar "
            "hardware and would ignore it)"
        )
    return None if args.hw is None else load_hw(args.hw)


def _nonideal(args: argparse.Namespace) -> NonIdeal:
    """The non-idealities; they need ``--backend rram``."""
    from bsnnc.backends.rram.sim import NonIdeal

    given = _given(args, NONIDEAL_OPTIONS)
    if given and args.backend != "rram":
        raise BsnncError(
            f"{', '.join(given)}: the non-idealities (--adc-bits, --variation, --stuck-at, "
            "--seed) need --backend rram"
        )
    # ranges are checked when the flags are parsed (see add_parser)
    return NonIdeal(args.adc_bits, args.variation or 0.0, args.stuck_at or 0.0, args.seed or 0)


def _write_png(f: IO[bytes], buf: io.BytesIO) -> None:
    f.write(buf.getvalue())


def _pyplot(path: Path | None) -> Any:
    """matplotlib's pyplot for ``--plot PATH`` (None without it), checked before simulating:
    PATH's directory must exist and matplotlib must be importable."""
    if path is None:
        return None
    if not path.parent.is_dir():
        raise BsnncError(f"--plot {path}: directory {path.parent} does not exist; create it first")
    check_replaceable(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BsnncError("--plot needs matplotlib: pip install 'bsnnc[plot]'") from None
    return plt


def plot_curve(path: Path, out: dict[str, Any], plt: Any) -> None:
    """Accuracy vs timestep (and the ANN accuracy) as a PNG, drawn with ``plt`` (pyplot, from
    :func:`_pyplot`)."""
    curve = out.get("accuracy_per_timestep")
    if curve is None:
        raise BsnncError("--plot needs labelled images (the image set has no y)")
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
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    # atomically, with the umask, never replacing a symlink, FIFO or device
    atomic_write(path, lambda f: _write_png(f, buf))
    err.print(f"wrote {path}")


def _print(out: dict[str, Any]) -> None:
    curve = out.get("accuracy_per_timestep")
    t = Table(
        title=f"B-SNN on {out['images']} images ({out['images_source']}), T={out['timesteps']}",
        title_justify="left",
    )
    t.add_column("metric", overflow="fold")
    t.add_column("value", justify="right", overflow="fold")
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
    ex = out["executor"]
    if ex["kind"] == "ray":
        nodes = f"{ex['nodes']} node" + ("s" if ex["nodes"] != 1 else "")
        t.add_row("executor", f"Ray ({ex['address']}): {ex['shards']} shards on {nodes}")
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
        t.add_row("  critical layer", str(out["critical_layer_name"]))
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
    r.add_column("IF layer", overflow="fold")
    r.add_column("spike rate / step", justify="right", no_wrap=True, overflow="fold")
    for k, v in out["spike_rates"].items():
        r.add_row(k, f"{v:.4f}")
    err.print(r)
    if "layer_seconds" in out:
        # the shards' own seconds: several shards run at once on a cluster
        _print_profile(out["layer_seconds"], sum(out["executor"]["seconds_per_shard"]))


def layer_seconds(g: Graph, seconds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """``--profile``: per node that ran (graph order), its op and wall seconds over the run."""
    return {
        f"%{n.result}": {"op": n.op, "seconds": round(seconds[n.result], 6)}
        for n in g.nodes
        if n.result in seconds
    }


def _print_profile(layers: dict[str, dict[str, Any]], total: float) -> None:
    """The ten slowest layers and each op's share of the simulation's wall time."""
    t = Table(title="profile (wall seconds)", title_justify="left")
    t.add_column("layer")
    t.add_column("op")
    t.add_column("seconds", justify="right")
    t.add_column("share", justify="right")
    slowest = sorted(layers.items(), key=lambda kv: -float(kv[1]["seconds"]))[:10]
    for name, row in slowest:
        s = float(row["seconds"])
        t.add_row(name, str(row["op"]), f"{s:.3f}", f"{s / total:.0%}" if total else "")
    by_op: dict[str, float] = {}
    for row in layers.values():
        by_op[str(row["op"])] = by_op.get(str(row["op"]), 0.0) + float(row["seconds"])
    t.add_section()
    for op, s in sorted(by_op.items(), key=lambda kv: -kv[1]):
        t.add_row("all", op, f"{s:.3f}", f"{s / total:.0%}" if total else "")
    err.print(t)
