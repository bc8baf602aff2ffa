"""``bsnnc export``: a compiled artifact's spiking graph in an exchange format (NIR)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from bsnnc.backends.nir_export import to_nir
from bsnnc.compiler.console import emit_json, err
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.io import atomic_write_bytes
from bsnnc.runtime.artifact import read_artifact


def add_parser(sub: Any) -> None:
    """Register the command."""
    p = sub.add_parser(
        "export",
        help="write an artifact's B-SNN as NIR",
        description="Write the spiking graph of a compiled artifact as a NIR graph (the "
        "Neuromorphic Intermediate Representation, read by SpikingJelly, snnTorch, Norse, "
        "sinabs, ...). What NIR 1.0 cannot say (subtractive reset, the initial membrane, "
        "firing at v ≥ θ) is exported as the closest NIR, recorded in the node metadata and "
        "printed as a warning. Needs the nir extra: pip install 'bsnnc[nir]'.",
    )
    p.add_argument("artifact", type=Path, help="a .tiles artifact (bsnnc compile)")
    p.add_argument("--nir", type=Path, required=True, metavar="OUT.nir", help="the NIR file")
    p.add_argument(
        "--sum-pools",
        action="store_true",
        help="write each average pool as SumPool2d and multiply the θ of the IF layer that "
        "reads it by the window size (exact; power-of-two windows): for importers without "
        "AvgPool2d (Norse, sinabs)",
    )
    p.add_argument("--json", action="store_true", help="print the warnings as JSON to stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``export``; returns the exit code."""
    art = read_artifact(args.artifact)
    exported = to_nir(art.graph, sum_pools=args.sum_pools)
    import nir  # to_nir has checked that it is installed

    if args.nir.suffix != ".nir":
        raise BsnncError(f"--nir {args.nir}: the output must end in .nir")
    buf = io.BytesIO()  # h5py needs a readable, seekable file: build it in memory
    nir.write(buf, exported.graph)
    atomic_write_bytes(args.nir, buf.getvalue())
    if args.json:
        facts = {"nir": str(args.nir), "nodes": len(exported.graph.nodes)}
        emit_json({**facts, "warnings": exported.warnings})
    else:
        for w in exported.warnings:
            err.print(f"warning: {w}", markup=False, highlight=False)
        err.print(f"wrote {args.nir} ({len(exported.graph.nodes)} NIR nodes)")
    return 0
