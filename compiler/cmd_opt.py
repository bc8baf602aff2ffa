"""``bsnnc opt``: IR text in, passes, IR text out (the compiler engineer's ``mlir-opt``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from bsnnc.compiler.console import err, progress_bar
from bsnnc.compiler.options import add_conversion_options, pass_options
from bsnnc.compiler.passes import REGISTRY, resolve
from bsnnc.compiler.passes.base import run_passes
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.io import load_ir, save_ir, weights_path
from bsnnc.ir.parser import MAX_INLINE_ELEMENTS, parse
from bsnnc.ir.printer import print_graph
from bsnnc.ir.verifier import verify


def add_parser(sub: Any) -> None:
    """Register the command."""
    p = sub.add_parser(
        "opt",
        help="run passes on IR text",
        description="Read IR text (weights from the .npz beside it, if present), verify it, run "
        "the named passes and print the result. With no passes the input is printed unchanged.",
    )
    p.add_argument("file", help="an .ir file, or - for standard input (no weights)")
    p.add_argument("--passes", default="", help="comma-separated pass names (see: bsnnc passes)")
    p.add_argument(
        "-o", "--output", type=Path, help="write OUT.ir (and OUT.npz) instead of printing"
    )
    p.add_argument(
        "--inline-max",
        type=inline_max_arg,
        default=0,
        metavar="N",
        help="print constants of at most N elements inline (`= [...]`) instead of as a hash "
        f"(0..{MAX_INLINE_ELEMENTS}; default: %(default)s)",
    )
    add_conversion_options(p)
    p.set_defaults(func=run)


def inline_max_arg(text: str) -> int:
    """``--inline-max N``: an integer in 0..MAX_INLINE_ELEMENTS."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not 0 <= n <= MAX_INLINE_ELEMENTS:
        raise argparse.ArgumentTypeError(
            f"expected an integer from 0 to {MAX_INLINE_ELEMENTS}, got {text!r}"
        )
    return n


def run(args: argparse.Namespace) -> int:
    """Run ``opt``; returns the exit code."""
    passes = resolve([x for x in args.passes.split(",") if x], REGISTRY)
    if args.file == "-":
        g = parse(sys.stdin.read(), source="<stdin>")
        verify(g)
    else:
        g = load_ir(args.file, need_weights=False)
        no_data = any(c.data is None for c in g.constants.values())
        if no_data and not weights_path(args.file).is_file():
            err.print(f"note: {weights_path(args.file)} not found; constants carry no data")
    with progress_bar() as progress:
        g = run_passes(g, passes, replace(pass_options(args, g), progress=progress)).graph
    if args.output is None:
        sys.stdout.write(print_graph(g, inline_max=args.inline_max))
        return 0
    if any(c.data is None for c in g.constants.values()):
        raise BsnncError("cannot write -o without the input's weights (.npz beside the .ir)")
    save_ir(args.output, g)
    err.print(f"wrote {args.output} and {weights_path(args.output)}")
    return 0
