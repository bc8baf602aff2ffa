"""Terminal output helpers: a stderr rich console for people, stdout for IR text and JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.progress import Progress, TaskID
from rich.table import Table

from bsnnc.compiler.passes.base import ProgressFn
from bsnnc.compiler.report import LayerRow
from bsnnc.ir.errors import BsnncError
from bsnnc.runtime.datasets import embedded_file

#: the width of the console when stderr is not a terminal: wide enough for any table.
PIPE_WIDTH = 4096


class StderrConsole(Console):
    """A rich console that is as wide as its output when it is not a terminal.

    In a pipe or a file (and under ``COLUMNS=40``) lines are never wrapped or cut: a table
    keeps its natural width, so no number is truncated to ``315,703,2…``. In a terminal the
    terminal's width applies, and the tables fold their cells instead of cutting them.
    """

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size, or :data:`PIPE_WIDTH` columns when not a terminal."""
        dims = super().size
        return dims if self.is_terminal else ConsoleDimensions(PIPE_WIDTH, dims.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size


#: human-facing output goes to stderr so stdout stays machine-readable.
err = StderrConsole(stderr=True, highlight=False)

EMBEDDED_MODELS = {"digits": "digits.onnx"}


def emit_json(obj: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def shape_arg(text: str) -> tuple[int, ...]:
    """Parse ``3,32,32``."""
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def percentile_arg(text: str) -> float:
    """An argparse type: a percentile in (0, 100], or ``max`` (= 100)."""
    if text == "max":
        return 100.0
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a percentile or 'max', got {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"a percentile must be in (0, 100], got {text!r}")
    return value


def size_arg(text: str) -> int:
    """An argparse type: a byte count like ``512M``, ``4G`` or ``1000000``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B")
    try:
        value = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 512M or 4G, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a size must be positive, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def resolve_model(spec: str) -> Path:
    """A model path, or the name of a model embedded in bsnnc (``digits``)."""
    p = Path(spec)
    if p.exists():
        return p
    if spec in EMBEDDED_MODELS:
        return embedded_file(EMBEDDED_MODELS[spec])
    names = ", ".join(EMBEDDED_MODELS)
    raise BsnncError(f"{spec}: no such file (embedded models: {names})")


def layers_table(rows: Sequence[LayerRow], title: str) -> Table:
    """A rich table of weighted layers with totals."""
    t = Table(title=title, title_justify="left")
    t.add_column("#", justify="right", no_wrap=True, overflow="fold")
    for col in ("layer", "op", "output", "weights", "binary", "α"):
        t.add_column(col, overflow="fold")
    t.add_column("ops/image", justify="right", no_wrap=True, overflow="fold")
    for r in rows:
        binary = "[green]yes[/]" if r.binary else "no"
        name = r.loc or r.value
        t.add_row(str(r.index), name, r.op, r.output, r.weight, binary, r.alpha, f"{r.ops:,}")
    total = sum(r.ops for r in rows)
    binary_ops = sum(r.ops for r in rows if r.binary)
    n_bin = sum(r.binary for r in rows)
    t.add_section()
    t.add_row("", "total", "", "", "", f"{n_bin}/{len(rows)}", "", f"{total:,}")
    t.caption = (
        f"binary layers carry {binary_ops:,} of {total:,} ops/image ({_pct(binary_ops, total)})"
    )
    return t


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "n/a"


def mapping_table(m: dict[str, Any]) -> Table:
    """The crossbar mapping report (the summary the backend lowering records)."""
    hw = m["hw_config"]
    t = Table(
        title=f"crossbar mapping on {m['hw']} ({hw['rows']}×{hw['columns']} arrays)",
        title_justify="left",
    )
    for col in ("layer", "kind"):
        t.add_column(col, overflow="fold")
    for col in ("matrix K×N", "blocks", "copies", "arrays", "bound"):
        t.add_column(col, justify="right", no_wrap=True, overflow="fold")
    for lm in m["layers"]:
        blocks = f"{lm['row_blocks']}×{lm['col_blocks']}" if lm["kind"] != "digital" else "—"
        t.add_row(
            lm["loc"] or lm["node"],
            lm["kind"],
            f"{lm['K']}×{lm['N']}",
            blocks,
            str(lm.get("copies", 1)),
            str(len(lm["arrays"])),
            str(lm["bound"]),
        )
    t.add_section()
    t.add_row(
        "total",
        "packed" if m["packed"] else "",
        "",
        "",
        "",
        str(m["arrays"]),
        str(m["arrays_bound_per_layer"]),
    )
    p = m["placement"]
    t.caption = (
        f"global bound {m['arrays_bound_global']} · utilization {m['utilization']:.1%} of data "
        f"cells, {m['utilization_physical']:.1%} of physical · BNN (2 rows/input) "
        f"{m['bnn_arrays']} arrays · {p['tiles']} tiles on a {p['mesh'][0]}×{p['mesh'][1]} mesh"
    )
    return t


@contextmanager
def progress_bar() -> Iterator[ProgressFn]:
    """A transient progress bar on stderr (drawn only in a terminal), driven through the
    :data:`~bsnnc.compiler.passes.base.ProgressFn` callback that passes report to: one bar
    per distinct ``what``."""
    with Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield report
