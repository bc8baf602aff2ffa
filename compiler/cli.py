"""The ``bsnnc`` command line.

Exit codes: 0 success; 1 a check failed (e.g. ``verify`` over tolerance); 2 bad input or
usage (the message names the place: ONNX node and op, IR line:column, artifact member).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from bsnnc import __version__
from bsnnc.compiler import cmd_compile, cmd_inspect, cmd_opt, cmd_simulate, cmd_verify
from bsnnc.compiler.passes import PIPELINES, REGISTRY
from bsnnc.ir.errors import BsnncError

EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="bsnnc",
        description="Compile binary-weight CNNs (ONNX) into binary spiking networks for RRAM "
        "in-memory-computing crossbars, and check every step against a numpy reference.",
        epilog="exit codes: 0 ok, 1 a check failed, 2 bad input or usage",
    )
    p.add_argument("--version", action="version", version=f"bsnnc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in (cmd_compile, cmd_simulate, cmd_opt, cmd_verify, cmd_inspect):
        mod.add_parser(sub)
    lp = sub.add_parser(
        "passes",
        help="list passes and pipelines",
        description="List every pass and named pipeline.",
    )
    lp.set_defaults(func=_list_passes)
    return p


def _list_passes(args: argparse.Namespace) -> int:
    for name, p in sorted(REGISTRY.items()):
        sys.stdout.write(f"{name:<24} {p.summary}\n")
    for name, names in sorted(PIPELINES.items()):
        sys.stdout.write(f"pipeline {name:<15} {','.join(names) or '(import only)'}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    func: Any = args.func
    try:
        return int(func(args))
    except BsnncError as e:
        _print_error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in bsnnc, not in the input
        if os.environ.get("BSNNC_DEBUG"):
            traceback.print_exc()
        _print_error(
            f"internal error: {type(e).__name__}: {e} "
            "(set BSNNC_DEBUG=1 for a traceback, and please report it)"
        )
        return EXIT_INTERNAL


def _print_error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
