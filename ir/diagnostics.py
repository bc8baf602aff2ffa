"""Parse-error messages shared by every text parser in bsnnc (IR text, tile programs).

One format for all of them::

    model.ir:9:8: unknown op 'relux'; known ops: ...
      %2 = relux(%1) : f32[?,4,3,3]
           ^

``source:line:column: message``, then the offending source line and a caret under the column
(tabs in the line are kept in front of the caret so it stays aligned). Lines and columns count
from 1, as lark reports them.

Also shared: :class:`TextLimits` and :func:`check_text_limits`, which bound what a parser hands
to lark (size, lines, longest line, tokens, bracket nesting) so that no input text can exhaust
memory or the stack, and :func:`decode_string`, the one checked decoder of string literals
(JSON escapes only).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lark import Token
from lark.exceptions import UnexpectedInput

from bsnnc.ir.errors import IRParseError

#: lines up to this long are shown whole in a diagnostic
EXCERPT_LINE_CHARS = 10_000
#: a longer line is shown as a window of this many characters around the column
EXCERPT_CHARS = 200


def source_excerpt(text: str, line: int, column: int) -> str:
    """The source line ``line`` of ``text`` and a caret under ``column``, each indented by two
    spaces (an empty line when ``line`` is outside the text); a line longer than
    :data:`EXCERPT_LINE_CHARS` is cut to :data:`EXCERPT_CHARS` characters around the column,
    marked ``…``."""
    lines = text.split("\n")
    src = lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
    if len(src) > EXCERPT_LINE_CHARS:
        start = max(0, min(column - 1 - EXCERPT_CHARS // 2, len(src) - EXCERPT_CHARS))
        cut = src[start : start + EXCERPT_CHARS]
        head = "…" if start > 0 else ""
        tail = "…" if start + EXCERPT_CHARS < len(src) else ""
        src, column = head + cut + tail, column - start + len(head)
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


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, column) of character ``offset`` of ``text``, both counted from 1."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


@dataclass(frozen=True)
class TextLimits:
    """What a text parser accepts before lark sees the text: at most ``chars`` characters,
    ``lines`` lines, ``line_chars`` characters in one line, ``tokens`` tokens (lark keeps every
    token of a valid prefix, a few hundred bytes each) and ``depth`` levels of open brackets
    (``[``, ``(``, ``{``). ``what`` names the format in messages."""

    what: str
    chars: int
    lines: int
    line_chars: int
    tokens: int
    depth: int


#: the tokens counted by :func:`check_text_limits`: strings and comments (comments are not
#: counted), brackets, punctuation, and runs of anything else
_SCAN = re.compile(
    r'(?P<string>"(?:[^"\\\n]|\\.)*"?)|(?P<comment>//[^\n]*)|(?P<open>[\[({])'
    r'|(?P<close>[\])}])|[^\s"\[\](){},:=/]+|[,:=/]'
)


def check_text_limits(text: str, source: str, limits: TextLimits) -> None:
    """Raise :class:`IRParseError` at ``source:line:column`` where ``text`` first exceeds one
    of ``limits`` (checked in the order: size, lines, longest line, tokens and nesting)."""

    def fail(offset: int, message: str) -> IRParseError:
        line, column = position(text, offset)
        return IRParseError(
            f"{source}:{line}:{column}: {message} (the limit for {limits.what}; "
            "the text is refused before it is parsed)"
        )

    if len(text) > limits.chars:
        raise fail(
            limits.chars, f"the text has {len(text):,} characters, more than {limits.chars:,}"
        )
    if text.count("\n") + (not text.endswith("\n")) > limits.lines:
        offset = 0
        for _ in range(limits.lines):
            offset = text.index("\n", offset) + 1
        raise fail(offset, f"the text has more than {limits.lines:,} lines")
    start = 0
    for line in text.split("\n"):
        if len(line) > limits.line_chars:
            raise fail(
                start + limits.line_chars,
                f"this line has {len(line):,} characters, more than {limits.line_chars:,}",
            )
        start += len(line) + 1
    tokens = depth = 0
    for m in _SCAN.finditer(text):
        kind = m.lastgroup
        if kind == "comment":
            continue
        tokens += 1
        if tokens > limits.tokens:
            raise fail(m.start(), f"more than {limits.tokens:,} tokens")
        if kind == "open":
            depth += 1
            if depth > limits.depth:
                raise fail(m.start(), f"brackets nested more than {limits.depth} deep")
        elif kind == "close":
            depth = max(depth - 1, 0)


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def decode_string(token: str, source: str, text: str, line: int, column: int) -> str:
    """The value of a string literal ``token`` (with its quotes) found at ``line:column`` of
    ``text``. JSON rules: the escapes ``\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX`` (a UTF-16
    surrogate only as a high-low pair), no raw control characters (U+0000 to U+001F), no
    surrogate code points. Anything else is an :class:`IRParseError` at its position."""

    def fail(i: int, message: str) -> IRParseError:
        at_line = line + token.count("\n", 0, i)
        at_col = i - token.rfind("\n", 0, i) if "\n" in token[:i] else column + i
        return IRParseError(format_diagnostic(source, text, at_line, at_col, message))

    if len(token) < 2 or token[0] != '"' or token[-1] != '"':
        raise fail(0, "unterminated string")
    out: list[str] = []
    i, end = 1, len(token) - 1
    while i < end:
        ch = token[i]
        if ch == "\\":
            nxt = token[i + 1] if i + 1 < end else ""
            if nxt in _ESCAPES and nxt:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt != "u":
                raise fail(
                    i,
                    f"bad escape {_short_escape(token[i : i + 2])} in a string "
                    '(allowed: \\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)',
                )
            code, i = _unicode_escape(token, i, end, fail)
            out.append(chr(code))
            continue
        if ord(ch) < 0x20:
            raise fail(i, f"control character U+{ord(ch):04X} in a string (write it as an escape)")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise fail(i, f"surrogate code point U+{ord(ch):04X} in a string")
        out.append(ch)
        i += 1
    return "".join(out)


def _hex4(token: str, i: int, end: int) -> int | None:
    """The value of the four hex digits after ``\\u`` at ``token[i]``, or None."""
    digits = token[i + 2 : i + 6]
    if i + 6 > end or not re.fullmatch(r"[0-9A-Fa-f]{4}", digits):
        return None
    return int(digits, 16)


def _unicode_escape(
    token: str, i: int, end: int, fail: Callable[[int, str], IRParseError]
) -> tuple[int, int]:
    """(code point, next index) of the ``\\uXXXX`` escape (or surrogate pair) at ``i``."""
    code = _hex4(token, i, end)
    if code is None:
        raise fail(i, "bad escape: \\u needs four hex digits")
    if 0xDC00 <= code <= 0xDFFF:
        raise fail(i, f"lone low surrogate \\u{code:04x} in a string")
    if 0xD800 <= code <= 0xDBFF:
        low = _hex4(token, i + 6, end) if token[i + 6 : i + 8] == "\\u" else None
        if low is None or not 0xDC00 <= low <= 0xDFFF:
            raise fail(i, f"high surrogate \\u{code:04x} without its low surrogate")
        return 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), i + 12
    return code, i + 6


def _short_escape(text: str) -> str:
    """An escape for a message: ``\\q``, or the code of a control character after ``\\``."""
    nxt = text[1:]
    if not nxt:
        return "\\ at the end of the string"
    return f"\\{nxt}" if nxt.isprintable() else f"\\ followed by U+{ord(nxt):04X}"


#: the largest magnitude of an integer in IR text or a tile program (64-bit signed)
MAX_INT = 2**63 - 1


def short(text: str, limit: int = 24) -> str:
    """``text``, cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class TokenReader:
    """Reads checked values out of the tokens of one source text: every error names
    ``source:line:column`` with the line and a caret (:func:`format_diagnostic`)."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.text = text

    def err_at(self, line: int, column: int, msg: str) -> IRParseError:
        """An error at ``line:column``."""
        return IRParseError(format_diagnostic(self.source, self.text, line, column, msg))

    def err(self, tok: Token, msg: str) -> IRParseError:
        """An error at ``tok``."""
        return self.err_at(int(tok.line or 1), int(tok.column or 1), msg)

    def int64(self, tok: Token, text: str, what: str) -> int:
        """``text`` (an integer literal at ``tok``) as an int of magnitude ≤ :data:`MAX_INT`."""
        v = int(text) if len(text.lstrip("-")) <= 19 else MAX_INT + 1
        if abs(v) > MAX_INT:
            raise self.err(tok, f"{what} {short(text)} does not fit in 64 bits")
        return v

    def string(self, tok: Token) -> str:
        """A string token's value (JSON escapes only; a bad one is an error at its place)."""
        return decode_string(
            str(tok), self.source, self.text, int(tok.line or 1), int(tok.column or 1)
        )
