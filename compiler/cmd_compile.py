"""``bsnnc compile``: ONNX → IR → passes → ``.tiles`` artifact."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bsnnc.compiler.console import (
    MAX_DIM,
    emit_json,
    err,
    layers_table,
    mapping_table,
    progress_bar,
    resolve_model,
    shape_arg,
)
from bsnnc.compiler.driver import Compiled, compile_graph
from bsnnc.compiler.options import (
    add_conversion_options,
    add_hardware_options,
    pass_options,
    rram_options,
)
from bsnnc.compiler.passes import PIPELINES, REGISTRY, resolve
from bsnnc.compiler.passes.base import DumpFn
from bsnnc.compiler.report import layer_table
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph
from bsnnc.ir.io import check_replaceable, save_ir, write_npz
from bsnnc.ir.printer import print_graph
from bsnnc.runtime.artifact import Artifact, write_artifact
from bsnnc.runtime.datasets import NAMED


def add_parser(sub: Any) -> None:
    """Register the command."""
    p = sub.add_parser(
        "compile",
        help="compile an ONNX model into a .tiles artifact",
        description="Import an ONNX binary-weight CNN, run the pass pipeline and write a .tiles "
        "artifact (IR, weights, checksums). Without -o the artifact is <model>.tiles in the "
        "current directory, unless --dump-ir is given (then nothing is written).",
    )
    p.add_argument("model", help="ONNX file, or an embedded model name (digits)")
    p.add_argument("-o", "--output", type=Path, help="artifact path (default: <model>.tiles)")
    p.add_argument(
        "--input-shape",
        type=shape_arg,
        help="per-sample input shape C,H,W for models with dynamic dimensions "
        f"(each 1..{MAX_DIM:,})",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--pipeline",
        default="default",
        choices=sorted(PIPELINES),
        help="named pass pipeline (default: %(default)s)",
    )
    group.add_argument(
        "--passes",
        type=lambda s: [x for x in s.split(",") if x],
        help="comma-separated passes to run instead of a pipeline",
    )
    p.add_argument("--dump-ir", action="store_true", help="print the final IR text to stdout")
    p.add_argument(
        "--dump-program",
        action="store_true",
        help="print the RRAM tile program (the tiled form) to stdout",
    )
    p.add_argument(
        "--dump-ir-after",
        metavar="PASS|all",
        help="print the IR after PASS (or after every stage) to stderr",
    )
    p.add_argument(
        "--dump-dir", type=Path, help="write NN-<stage>.ir and .npz after every stage into DIR"
    )
    p.add_argument("--pass-timing", action="store_true", help="report the time each pass took")
    add_conversion_options(p)
    add_hardware_options(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary to stdout")
    p.set_defaults(func=run)


def _dumper(args: argparse.Namespace, stages: list[str]) -> DumpFn:
    after = args.dump_ir_after
    if after is not None and after != "all" and after not in stages:
        raise BsnncError(f"--dump-ir-after {after}: no such stage; stages: {', '.join(stages)}")

    def dump(index: int, name: str, g: Graph) -> None:
        if args.dump_dir is not None:
            save_ir(args.dump_dir / f"{index:02d}-{name}.ir", g)
        if after in ("all", name):
            sys.stderr.write(f"// ----- IR after {name} -----\n{print_graph(g)}")

    return dump


def run(args: argparse.Namespace) -> int:
    """Compile; returns the exit code. A failure with ``--dump-dir`` keeps the stage files
    written so far (they show how far it got) and says where they are."""
    try:
        return _compile(args)
    except BaseException:
        if args.dump_dir is not None and any(Path(args.dump_dir).glob("[0-9][0-9]-*.ir")):
            note = f"note: stage files written so far are in {args.dump_dir}"
            err.print(note, markup=False, highlight=False)
        raise


def _compile(args: argparse.Namespace) -> int:
    """Import, run the passes, write the artifact and report; returns the exit code."""
    from bsnnc.compiler.frontend.importer import import_onnx  # onnx loads only to compile
    from bsnnc.compiler.frontend.nir_import import import_nir

    if sum([args.json, args.dump_ir, args.dump_program]) > 1:
        raise BsnncError("--json, --dump-ir and --dump-program all write to stdout; choose one")
    model = resolve_model(args.model)
    names = args.passes if args.passes is not None else PIPELINES[args.pipeline]
    nir = model.suffix == ".nir"
    if nir and args.passes is None and args.pipeline == "default":
        names = PIPELINES["cleanup"]  # a NIR graph is spiking already
    resolve(names, REGISTRY)
    printing = args.dump_ir or args.dump_program
    out = args.output or (None if printing else Path(model.stem + ".tiles"))
    if out is not None:
        check_replaceable(out)  # before the work, not after it
    dump = _dumper(args, ["import", *names])
    with err.status(f"importing {model.name}"):
        graph = import_nir(model) if nir else import_onnx(model, args.input_shape)
    dump(0, "import", graph)
    with progress_bar() as progress:
        options = replace(pass_options(args, graph), progress=progress)
        compiled = compile_graph(graph, options, rram_options(args), names=names, dump=dump)
    if args.dump_program and compiled.tiles is None:
        raise BsnncError(
            "--dump-program needs a spiking graph: the default pipeline (or passes ending in "
            "fold-threshold-normalization)"
        )
    if out is not None:
        with err.status(f"writing {out}"):
            write_artifact(out, _artifact(compiled, model, names, args))
    return _report(args, compiled, out)


def _artifact(c: Compiled, model: Path, names: list[str], args: argparse.Namespace) -> Artifact:
    h = hashlib.sha256(model.read_bytes()).hexdigest() if model.stat().st_size < (1 << 30) else None
    calib = c.pipeline.calibration
    meta = {
        "source": {"file": model.name, "sha256": h},
        "passes": list(names),
        "conversion": {
            "reset": args.reset,
            "v_init": args.v_init,
            "percentile": args.percentile,
            "norm": args.norm,
            "calib_stat": args.calib_stat,
        },
        "dataset": _dataset_name(calib.source) if calib else None,
    }
    facts = {"calibration": calib.as_dict() if calib else None, "notes": c.notes}
    extra = {"calibration.json": json.dumps(facts, indent=2, sort_keys=True).encode()}
    if c.tiles is not None:
        extra["mapping.json"] = json.dumps(c.tiles.mapping, indent=1, sort_keys=True).encode()
        buf = io.BytesIO()
        write_npz(buf, c.tiles.arrays)
        extra["program.txt"] = c.tiles.program.encode()
        extra["program.npz"] = buf.getvalue()
    return Artifact(c.graph, meta, extra)


def _mapping_summary(m: dict[str, Any] | None) -> dict[str, Any] | None:
    """The mapping without its per-block list (that lives in the artifact's mapping.json)."""
    return None if m is None else {k: v for k, v in m.items() if k != "blocks"}


def _dataset_name(source: str) -> str:
    """``cifar100:train`` → ``cifar100`` (an .npz path stays as it is)."""
    name = source.split(":")[0]
    return name if name in NAMED else source


def calibration_line(calib: dict[str, Any] | None) -> str | None:
    """``calibrated on 512 images from digits:train`` (None when nothing was calibrated)."""
    if not calib:
        return None
    fixed = sum(1 for layer in calib["layers"] if layer.get("from") == "quantizer")
    if not calib["images"]:
        return f"thresholds of all {fixed} IF layers from their quantizers (λ = L·Δ), no images"
    line = f"calibrated on {calib['images']} images from {calib['source']}"
    return f"{line}; {fixed} IF layer(s) from their quantizers" if fixed else line


def _report(args: argparse.Namespace, c: Compiled, out: Path | None) -> int:
    g = c.graph
    rows = layer_table(g)
    calib = c.pipeline.calibration.as_dict() if c.pipeline.calibration else None
    mapping = c.tiles.mapping if c.tiles else None
    if args.dump_ir:
        sys.stdout.write(print_graph(g))
    if args.dump_program and c.tiles is not None:
        sys.stdout.write(c.tiles.program)
    if args.json:
        emit_json(
            {
                "model": args.model,
                "output": str(out) if out else None,
                "graph": g.name,
                "layers": [r.as_dict() for r in rows],
                "passes": [
                    {"name": p.name, "seconds": round(p.seconds, 6), "changed": p.changed}
                    for p in c.pipeline.passes
                ],
                "notes": c.notes,
                "mapping": _mapping_summary(mapping),
                "calibration": calib,
            }
        )
        return 0
    if not (args.dump_ir or args.dump_program):
        err.print(layers_table(rows, f"@{g.name}: {len(rows)} weighted layers"))
        if mapping is not None:
            err.print(mapping_table(mapping))
        for note in c.notes:
            err.print(f"  note: {note}", highlight=False, markup=False)
        line = calibration_line(calib)
        if line is not None:
            err.print(line, markup=False, highlight=False)
    if args.pass_timing:
        for p in c.pipeline.passes:
            err.print(f"  {p.name:<24} {p.seconds * 1000:9.2f} ms")
    if out is not None:
        err.print(f"wrote {out}")
    return 0
