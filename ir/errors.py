"""Error types shared by every bsnnc layer.

Every error a user can cause derives from :class:`BsnncError`; the CLI prints its message (no
traceback) and exits with :attr:`BsnncError.exit_code`.
"""

from __future__ import annotations


class BsnncError(Exception):
    """A user-facing error: the message names the place and, where possible, the fix."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class IRParseError(BsnncError):
    """IR text that does not parse; the message starts with ``file:line:column``."""


class VerifyError(BsnncError):
    """A graph that breaks an IR invariant (types, attributes, shapes, def-before-use)."""


class OnnxImportError(BsnncError):
    """An ONNX model the front end cannot convert; the message names the node and op."""


class ArtifactError(BsnncError):
    """A malformed or incompatible compiled artifact; the message names the member."""


class DataError(BsnncError):
    """A missing or malformed data set; the message says which file to place where."""
