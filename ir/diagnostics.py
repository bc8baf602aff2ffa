"""Parse-error messages shared by every text parser in bsnnc (IR text, tile programs).

One format for all of them::

    model.ir:9:8: unknown op 'relux'; known ops: ...
      %2 = relux(%1) : f32[?,4,3,3]
           ^

``source:line:column: message``, then the offending source line and a caret under the column
(tabs in the line are kept in front of the caret so it stays aligned). Lines and columns count
from 1, as lark reports them.
"""

from __future__ import annotations

from lark.exceptions import UnexpectedInput


def source_excerpt(text: str, line: int, column: int) -> str:
    """The source line ``line`` of ``text`` and a caret under ``column``, each indented by two
    spaces (an empty line when ``line`` is outside the text)."""
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    pad = "".join("\t" if ch == "\t" else " " for ch in src[: max(column - 1, 0)])
    pad += " " * max(column - 1 - len(src), 0)
    return f"  {src}\n  {pad}^"


def format_diagnostic(source: str, text: str, line: int, column: int, message: str) -> str:
    """``source:line:column: message``, the offending line and a caret under the column."""
    return f"{source}:{line}:{column}: {message}\n{source_excerpt(text, line, column)}"


def syntax_position(e: UnexpectedInput, text: str) -> tuple[int, int]:
    """(line, column) of a lark syntax error; an error at the end of the input (lark gives no
    position) is placed on the last line."""
    line = e.line if e.line and e.line > 0 else max(len(text.splitlines()), 1)
    column = e.column if e.column and e.column > 0 else 1
    return int(line), int(column)


def expected_terminals(e: UnexpectedInput) -> set[str]:
    """The terminal names lark would have accepted at a syntax error (may be empty)."""
    raw = getattr(e, "accepts", None) or getattr(e, "expected", None) or getattr(e, "allowed", None)
    return {str(t) for t in raw or ()}
