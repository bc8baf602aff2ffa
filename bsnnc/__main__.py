"""`python -m bsnnc` and the ``bsnnc`` console script (:func:`entry`): the command line.

The CLI's modules (numpy, onnx, rich: about a second) are imported inside :func:`entry`, so
Ctrl-C while they load ends like Ctrl-C at any later point: one line, exit 130, no traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


def entry() -> int:
    """Import and run the CLI (:func:`bsnnc.compiler.cli.main`) and end the process with its
    exit code.

    The process ends with ``os._exit`` once stdout and stderr are flushed: every file a
    command writes is closed and renamed into place before :func:`main` returns, and the
    interpreter's own teardown (numba's LLVM and thread pools, module finalizers) took
    0.25 s of a 1.4 s ``simulate`` on VGG-15 (measured 2026-12-03). Under a profiler or a
    tracer (``python -m cProfile``, coverage) the CLI returns normally, so that they can write
    their data on the way out; so does a command that exits through ``SystemExit``
    (argparse's usage errors, ``--help``)."""
    try:
        from bsnnc.compiler.cli import main
        from bsnnc.runtime.allocator import keep_freed_memory

        keep_freed_memory()  # the process is ours (see bsnnc.runtime.allocator)
        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        _flush()
        # exit now with 130: an interrupt that landed inside an import can leave the
        # interpreter set to re-raise SIGINT on its way out (seen once in CI as exit -2)
        os._exit(130)
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return code
    _flush()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(entry())
