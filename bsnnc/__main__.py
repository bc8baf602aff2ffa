"""`python -m bsnnc` and the ``bsnnc`` console script (:func:`entry`): the command line.

The CLI's modules (numpy, onnx, rich: about a second) are imported inside :func:`entry`, so
Ctrl-C while they load ends like Ctrl-C at any later point: one line, exit 130, no traceback.
"""

from __future__ import annotations

import sys


def entry() -> int:
    """Import and run the CLI (:func:`bsnnc.compiler.cli.main`); returns the exit code."""
    try:
        from bsnnc.compiler.cli import main

        return main()
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(entry())
