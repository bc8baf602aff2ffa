"""Terminal output helpers: a stderr rich console for people, stdout for IR text and JSON."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.progress import Progress, TaskID
from rich.table import Table

from bsnnc.compiler.passes.base import ProgressFn
from bsnnc.compiler.report import LayerRow
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.ops import INIT_BITS, on_init_grid
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


#: ``--input-shape``: at most this many dimensions, each at most :data:`MAX_DIM`, and at most
#: :data:`MAX_SAMPLE_ELEMENTS` elements per sample (64 MiB of float32).
MAX_RANK, MAX_DIM, MAX_SAMPLE_ELEMENTS = 8, 65536, 1 << 24

#: ranges of the count flags: images (``--limit``, ``--calib-limit``), images per batch
#: (``--batch``), seeds (``--seed``, numpy's generators take any non-negative integer)
MAX_IMAGES, MAX_BATCH, MAX_SEED = 10**9, 10**6, 2**63 - 1

#: byte multipliers of the size suffixes (:func:`size_in`)
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def shape_arg(text: str) -> tuple[int, ...]:
    """Parse ``3,32,32`` (or ``3x32x32``): 1 to :data:`MAX_RANK` positive integers, each at most
    :data:`MAX_DIM`, with at most :data:`MAX_SAMPLE_ELEMENTS` elements in all."""
    expected = (
        f"expected 1 to {MAX_RANK} comma-separated positive integers, each from 1 to "
        f"{MAX_DIM:,}, at most {MAX_SAMPLE_ELEMENTS:,} elements in all"
    )
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"dimensions must be positive: {expected}, got {text!r}")
    if len(dims) > MAX_RANK or max(dims) > MAX_DIM or math.prod(dims) > MAX_SAMPLE_ELEMENTS:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return dims


def percentile_arg(text: str) -> float:
    """An argparse type: a percentile in (0, 100], or ``max`` (= 100)."""
    if text == "max":
        return 100.0
    value = _float_or_nan(text)
    if not 0 < value <= 100:  # NaN and ±inf fail too
        raise argparse.ArgumentTypeError(
            f"expected a percentile from 0 (exclusive) to 100, or 'max', got {text!r}"
        )
    return value


#: ``--v-init``'s named starts (fractions of θ)
V_INIT_NAMES = {"zero": 0.0, "half": 0.5}


def v_init_arg(text: str) -> float:
    """An argparse type: ``zero``, ``half`` or a fraction of θ from 0 to 1 in steps of 1/256
    (the IF membranes' start, :data:`bsnnc.ir.ops.INIT_BITS`)."""
    if text in V_INIT_NAMES:
        return V_INIT_NAMES[text]
    value = _float_or_nan(text)
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(
            f"expected zero, half or a fraction of θ from 0 to 1, got {text!r}"
        )
    if not on_init_grid(value):
        near = round(value * (1 << INIT_BITS)) / (1 << INIT_BITS)
        raise argparse.ArgumentTypeError(
            f"expected a multiple of 1/{1 << INIT_BITS} (the tile program stores the initial "
            f"membrane as an integer), got {text!r}; the nearest is {near!r}"
        )
    return value


def format_size(n: int) -> str:
    """A byte count in the largest unit that divides it: ``16M``, ``1T``, ``1000``."""
    for suffix, unit in sorted(_SIZE_UNITS.items(), key=lambda kv: -kv[1]):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def _parse_size(text: str) -> int | None:
    """``512M``, ``1.5G``, ``4kb`` or ``1000000`` in bytes; None when it is not a finite size."""
    t = text.strip().upper().removesuffix("B")
    try:
        if t and t[-1] in _SIZE_UNITS:
            number = float(t[:-1])
            return int(number * _SIZE_UNITS[t[-1]]) if math.isfinite(number) else None
        return int(t)
    except ValueError:
        return None


def size_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type factory: a byte count like ``512M`` or ``4G`` from ``lo`` to ``hi``."""

    def parse(text: str) -> int:
        value = _parse_size(text)
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected a size like 512M or 4G from {format_size(lo)} to {format_size(hi)}, "
                f"got {text!r}"
            )
        return value

    return parse


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type factory: an integer from ``lo`` to ``hi`` (both included)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not an integer, or more digits than Python converts
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected an integer from {lo:,} to {hi:,}, got {text!r}"
            )
        return value

    return parse


def _float_or_nan(text: str) -> float:
    """``float(text)``, or NaN when ``text`` is not a number (NaN fails every range check)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def float_in(
    lo: float, hi: float | None = None, *, lo_open: bool = False
) -> Callable[[str], float]:
    """An argparse type factory: a finite number from ``lo`` (excluded when ``lo_open``) to
    ``hi`` (included; None: no upper bound). NaN and ±inf are always refused."""
    low = f"{lo:g} (exclusive)" if lo_open else f"{lo:g}"
    if hi is None:
        expected = f"a finite number {'>' if lo_open else '≥'} {lo:g}"
    else:
        expected = f"a number from {low} to {hi:g}"

    def parse(text: str) -> float:
        value = _float_or_nan(text)
        above = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and above and (hi is None or value <= hi)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


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
