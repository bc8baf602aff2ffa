"""Value types of the IR: an element kind plus a shape.

Element kinds:

* ``f32``     real numbers (ANN activations, membrane currents, full-precision weights)
* ``spike``   binary events s ∈ {0, 1}
* ``bipolar`` binary weights w ∈ {-1, +1} (the scale α lives in a separate ``scale`` op)
* ``i32``     exact integer accumulators (spikes × bipolar weights)

A dimension is an ``int`` or ``None`` (dynamic, printed ``?``); only the batch dimension of a
graph is dynamic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Kind(StrEnum):
    """Element kind of a tensor value."""

    F32 = "f32"
    SPIKE = "spike"
    BIPOLAR = "bipolar"
    I32 = "i32"


#: numpy dtype that stores each kind's data (constants, runtime tensors).
STORAGE_DTYPE: dict[Kind, np.dtype[np.generic]] = {
    Kind.F32: np.dtype(np.float32),
    Kind.SPIKE: np.dtype(np.uint8),
    Kind.BIPOLAR: np.dtype(np.int8),
    Kind.I32: np.dtype(np.int32),
}

Dim = int | None
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class TensorType:
    """Type of an IR value: ``kind[d0,d1,...]``."""

    kind: Kind
    shape: Shape

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def with_kind(self, kind: Kind) -> TensorType:
        """The same shape with another element kind."""
        return TensorType(kind, self.shape)

    def with_shape(self, shape: Shape) -> TensorType:
        """The same element kind with another shape."""
        return TensorType(self.kind, tuple(shape))

    def numel_per_sample(self) -> int:
        """Π of all dimensions but the first (the batch)."""
        return math.prod(int(d) for d in self.shape[1:] if d is not None)

    def is_static(self) -> bool:
        """True when no dimension is dynamic."""
        return all(d is not None for d in self.shape)

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.kind.value}[{dims}]"
