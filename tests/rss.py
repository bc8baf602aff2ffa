"""Running the CLI in a child process with its peak RSS measured (memory bombs, memory budgets)."""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
from pathlib import Path

#: ``python -c`` this, then a file and the CLI's arguments: the CLI in a child of this small
#: process, which writes the child's peak RSS in KiB (``os.wait4``) to the file. Not measured
#: from pytest itself: at exec, Linux starts a child's ru_maxrss at the high-water mark of the
#: process it was forked from, and pytest's is hundreds of MiB.
MEASURED = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, "-m", "bsnnc", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child_limits() -> None:
    """A safety net should a bomb go off: 3 GiB of address space, a minute of CPU."""
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (60, 60))


def measured(argv: list[object], cwd: Path) -> tuple[int, str, str, int]:
    """``bsnnc argv`` in a child process in ``cwd``: (exit code, stdout, stderr, peak RSS in
    KiB)."""
    with tempfile.TemporaryDirectory() as d:
        rss = Path(d) / "peak-rss"
        cmd = [sys.executable, "-c", MEASURED, str(rss), *[str(a) for a in argv]]
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            proc = subprocess.Popen(
                cmd, cwd=cwd, stdout=so, stderr=se, text=True, preexec_fn=child_limits
            )
            code = proc.wait(timeout=120)
            so.seek(0)
            se.seek(0)
            return code, so.read(), se.read(), int(rss.read_text())
