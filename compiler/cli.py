"""The ``bsnnc`` command line.

Exit codes: 0 success; 1 a check failed (e.g. ``verify`` over tolerance); 2 bad input or
usage (the message names the place: ONNX node and op, IR line:column, artifact member); 3 the
Ray cluster failed a ``simulate --executor ray`` run;
130 interrupted (Ctrl-C, SIGINT); 143 terminated (SIGTERM). Either signal unwinds the command
like an error, so temporary files are removed, and ends with one line, no traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from bsnnc import __version__
from bsnnc.compiler import (
    cmd_compile,
    cmd_export,
    cmd_inspect,
    cmd_opt,
    cmd_simulate,
    cmd_verify,
)
from bsnnc.compiler.passes import PIPELINES, REGISTRY
from bsnnc.ir.errors import BsnncError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like :class:`KeyboardInterrupt` for SIGINT, so that
    ``finally`` blocks and :func:`bsnnc.ir.io.atomic_write` clean up before exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    """The SIGTERM handler: unwind the main thread with :class:`Terminated`."""
    raise Terminated


def _catch_sigterm() -> Any:
    """Install the SIGTERM handler; returns the previous one (None if it cannot be set here,
    e.g. outside the main thread, or was not set from Python)."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        return None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(
        prog="bsnnc",
        description="Compile binary-weight CNNs (ONNX) into binary spiking networks for RRAM "
        "in-memory-computing crossbars, and check every step against a numpy reference.",
        epilog="exit codes: 0 ok, 1 a check failed, 2 bad input or usage, 3 the Ray cluster "
        "failed (simulate --executor ray)",
    )
    p.add_argument("--version", action="version", version=f"bsnnc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in (cmd_compile, cmd_simulate, cmd_export, cmd_opt, cmd_verify, cmd_inspect):
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
    """Entry point of the CLI; returns the exit code."""
    previous = _catch_sigterm()
    try:
        args = build_parser().parse_args(argv)
        func: Any = args.func
        return int(func(args))
    except BsnncError as e:
        _print_error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        _print_error("interrupted")
        return EXIT_INTERRUPTED
    except Terminated:
        _print_error("terminated")
        return EXIT_TERMINATED
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _print_error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
