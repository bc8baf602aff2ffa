"""State shared by the per-op converters while one ONNX graph is imported."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from bsnnc.ir.builder import GraphBuilder
from bsnnc.ir.errors import OnnxImportError
from bsnnc.ir.types import TensorType

#: stands for the dynamic batch size in shapes computed at import (Shape of a run-time tensor).
BATCH = -7_777_777_777


def node_label(node: onnx.NodeProto) -> str:
    """``node 'name' (Op)`` — how errors name an ONNX node."""
    name = node.name or (node.output[0] if node.output else "?")
    return f"node '{name}' ({node.op_type})"


@dataclass
class Ctx:
    """Maps ONNX tensor names to IR operands (``env``) or folded constants (``consts``)."""

    builder: GraphBuilder
    shapes: dict[str, tuple[int | str | None, ...]]
    env: dict[str, str] = field(default_factory=dict)
    consts: MutableMapping[str, np.ndarray] = field(default_factory=dict)
    node: onnx.NodeProto | None = None
    #: the model's batch size when its input declares a fixed one (Reshape may name it).
    fixed_batch: tuple[int, ...] = ()
    #: QuantizeLinear outputs on activations awaiting their DequantizeLinear (see
    #: :mod:`bsnnc.compiler.frontend.quantizers`).
    pending: dict[str, Any] = field(default_factory=dict)

    @property
    def loc(self) -> str:
        """The current node's name, recorded as the IR node's ``loc``."""
        assert self.node is not None
        return self.node.name or f"{self.node.op_type}:{self.node.output[0]}"

    def fail(self, msg: str) -> OnnxImportError:
        """An error naming the current node, its op and the fix."""
        assert self.node is not None
        return OnnxImportError(f"{node_label(self.node)}: {msg}")

    def attr(self, name: str, default: Any = None) -> Any:
        """The value of an attribute of the current node (``default`` when absent)."""
        assert self.node is not None
        for a in self.node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def str_attr(self, name: str, default: str) -> str:
        """A string attribute of the current node (ONNX stores them as bytes)."""
        v = self.attr(name, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    def inputs(self) -> list[str]:
        """Input names of the current node (empty strings for omitted optional inputs)."""
        assert self.node is not None
        return list(self.node.input)

    def is_const(self, name: str) -> bool:
        """Whether an ONNX tensor is a known constant."""
        return name in self.consts

    def value(self, name: str) -> str:
        """The IR operand carrying the (non-constant) ONNX tensor ``name``."""
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            raise self.fail(f"input '{name}' is a constant where a computed tensor is expected")
        if name in self.pending:
            raise self.fail(
                f"input '{name}' is the integer output of {self.pending[name].label}; only "
                "Clip and DequantizeLinear may read it (integer activations are not imported)"
            )
        raise self.fail(f"input '{name}' is not produced by any earlier node")

    def const(self, name: str, what: str) -> np.ndarray:
        """The constant value of ``name``; an error if it is computed at run time."""
        if name in self.consts:
            return self.consts[name]
        raise self.fail(f"{what} '{name}' must be a constant (an initializer), but it is computed")

    def numeric(self, name: str, what: str) -> np.ndarray:
        """A constant that is numeric data of the network (weights, biases, BatchNorm
        parameters, scale factors): float32 or float64, every value finite — anything else is
        an error naming the tensor, never silently converted (a float16 or integer weight
        would make the float32 reference disagree with onnxruntime; NaN or ±inf would make
        calibration meaningless)."""
        v = self.const(name, what)
        if v.dtype not in (np.float32, np.float64):
            raise self.fail(
                f"{what} '{name}' is {v.dtype}; bsnnc imports float32 networks: re-export the "
                "model in float32 (weights, biases and normalization parameters)"
            )
        # NaN and ±inf show in the extremes: two reductions, no mask of the whole tensor
        if v.size and not (np.isfinite(v.min()) and np.isfinite(v.max())):
            bad = ~np.isfinite(v)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise self.fail(
                f"{what} '{name}' has {int(bad.sum())} non-finite value(s) (NaN or ±inf), "
                f"the first at index {list(first)}: {v[first]}"
            )
        return v

    def type_of(self, operand: str) -> TensorType:
        """IR type of an operand."""
        return self.builder.type_of(operand)

    def emit(self, op: str, operands: list[str], attrs: dict[str, Any] | None = None) -> str:
        """Append an IR node for the current ONNX node."""
        return self.builder.add(op, operands, attrs, loc=self.loc)

    def bind(self, out_index: int, operand: str) -> None:
        """Make the node's ``out_index``-th output refer to ``operand``."""
        assert self.node is not None
        self.env[self.node.output[out_index]] = operand
