"""`python -m bsnnc` and the ``bsnnc`` console script (:func:`entry`): the command line.

The CLI's modules (numpy, onnx, rich: about a second) are imported inside :func:`entry`, so
Ctrl-C while they load ends like Ctrl-C at any later point: one line, exit 130, no traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys


def entry() -> int:
    """Import and run the CLI (:func:`bsnnc.compiler.cli.main`); returns the exit code."""
    try:
        from bsnnc.compiler.cli import main

        return main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        # exit now with 130: an interrupt that landed inside an import can leave the
        # interpreter set to re-raise SIGINT on its way out (seen once in CI as exit -2)
        os._exit(130)


if __name__ == "__main__":
    raise SystemExit(entry())
