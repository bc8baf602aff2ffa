"""Per-channel affine maps ``y = s ⊙ x + b`` (along axis 1) and emitting them as IR nodes.

Shared by the passes that move ``scale``/``bias`` ops around (fold-scales) and fold them into
neuron thresholds (fold-threshold-normalization).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bsnnc.ir.builder import GraphBuilder
from bsnnc.ir.types import Kind


@dataclass
class Affine:
    """``ANN value = s ⊙ actual + b`` per channel (feature, for rank-2 values).

    ``origin`` is the weighted node whose output channels the actual value still follows
    (``channel_of[i]`` is the origin channel of channel i, or −1), so that a negative scale can
    be absorbed by negating that channel's weights; ``locked`` marks channels whose sign can no
    longer change (a max pool was crossed). ``folded`` lists the locs of absorbed ops.
    """

    s: np.ndarray
    b: np.ndarray
    origin: str | None = None
    channel_of: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    locked: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    folded: list[str] = field(default_factory=list)

    @staticmethod
    def identity(channels: int, origin: str | None = None) -> Affine:
        """``s = 1, b = 0``; follows ``origin``'s channels one to one when given."""
        chan = np.arange(channels) if origin else np.full(channels, -1)
        return Affine(
            np.ones(channels),
            np.zeros(channels),
            origin,
            chan,
            np.zeros(channels, bool),
        )

    def copy(self) -> Affine:
        """An independent copy."""
        return Affine(
            self.s.copy(),
            self.b.copy(),
            self.origin,
            self.channel_of.copy(),
            self.locked.copy(),
            list(self.folded),
        )

    def is_identity(self) -> bool:
        """True when nothing needs to be emitted."""
        return bool(np.all(self.s == 1.0) and np.all(self.b == 0.0))


def emit_scale_bias(
    b: GraphBuilder, x: str, s: np.ndarray, bias: np.ndarray, name: str, loc: str | None
) -> str:
    """Emit ``scale`` (unless s ≡ 1) then ``bias`` (unless b ≡ 0); uniform values become
    attributes, others per-channel constants named ``name.scale`` / ``name.bias``."""
    if not np.all(s == 1.0):
        if np.all(s == s[0]):
            x = b.add("scale", [x], {"factor": float(s[0])}, loc=loc)
        else:
            c = b.const(f"{name}.scale", Kind.F32, s.astype(np.float32))
            x = b.add("scale", [x, c], {"axis": 1}, loc=loc)
    if not np.all(bias == 0.0):
        if np.all(bias == bias[0]):
            x = b.add("bias", [x], {"value": float(bias[0])}, loc=loc)
        else:
            c = b.const(f"{name}.bias", Kind.F32, bias.astype(np.float32))
            x = b.add("bias", [x, c], {"axis": 1}, loc=loc)
    return x
