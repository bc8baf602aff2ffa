"""ONNX → IR import: one input, constant folding, then one converter per node.

Nodes whose inputs are all constants (Constant, Sign·α weight patterns, Reshape shapes, ...)
are evaluated at import time with onnx's reference evaluator, so weights computed in the graph
(``sign(W) · mean|W|``) arrive at Conv/Gemm as plain constants and binary detection applies.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from bsnnc.compiler.frontend.context import BATCH, Ctx, node_label
from bsnnc.compiler.frontend.converters import CONVERTERS
from bsnnc.compiler.frontend.loader import Initializers, LoadedModel, load_onnx
from bsnnc.compiler.frontend.quantizers import (
    QONNX_DOMAINS,
    conv_bipolar,
    conv_quant,
    fold_bipolar,
    fold_quant,
    qonnx_refusal,
)
from bsnnc.ir.builder import GraphBuilder
from bsnnc.ir.errors import BsnncError, OnnxImportError
from bsnnc.ir.graph import Graph
from bsnnc.ir.types import Kind, TensorType
from bsnnc.ir.verifier import verify

MIN_OPSET = 13
#: ops that are never folded even when their inputs are constant (they carry no run-time data).
_NO_FOLD = {"Dropout", "Identity"}


def supported_ops() -> list[str]:
    """ONNX op types the front end converts (plus any op on constants only, which is folded)."""
    return sorted([*CONVERTERS, "Constant"])


def import_onnx(path: str | os.PathLike[str], input_shape: Sequence[int] | None = None) -> Graph:
    """Load ``path`` and convert it to a verified IR graph (ANN form)."""
    loaded = load_onnx(path)
    if loaded.opset < MIN_OPSET:
        raise OnnxImportError(
            f"{loaded.path}: opset {loaded.opset} is too old; "
            f"export with opset {MIN_OPSET} or later"
        )
    newest = onnx.defs.onnx_opset_version()
    if loaded.opset > newest:
        raise OnnxImportError(
            f"{loaded.path}: opset {loaded.opset} is newer than any this onnx ({onnx.__version__}) "
            f"knows (≤ {newest}); export with opset {MIN_OPSET}..{newest}"
        )
    return convert_model(loaded, input_shape)


def convert_model(loaded: LoadedModel, input_shape: Sequence[int] | None = None) -> Graph:
    """Convert a loaded model (see :func:`import_onnx`)."""
    model = loaded.model
    name = loaded.path.stem or model.graph.name or "model"
    ctx = Ctx(GraphBuilder(name), loaded.shapes)
    ctx.consts = Initializers(model, loaded.path.parent, loaded.path)
    _declare_input(ctx, model.graph, input_shape, loaded)
    uses = Counter(i for node in model.graph.node for i in node.input)
    for node in model.graph.node:
        _convert_node(ctx, node, model)
        for i in node.input:
            uses[i] -= 1
            if uses[i] == 0 and i in ctx.consts:
                del ctx.consts[i]  # free each weight once its last reader is converted
    outputs = [_output(ctx, o.name) for o in model.graph.output]
    graph = ctx.builder.finish(outputs)
    verify(graph)
    return graph


def _declare_input(
    ctx: Ctx, g: onnx.GraphProto, shape: Sequence[int] | None, lm: LoadedModel
) -> None:
    inits = {t.name for t in g.initializer}
    real = [i for i in g.input if i.name not in inits]
    if len(real) != 1:
        names = ", ".join(f"'{i.name}'" for i in real) or "none"
        raise OnnxImportError(
            f"{lm.path}: the graph must have exactly one input (an image batch); it has "
            f"{len(real)}: {names}"
        )
    vi = real[0]
    tt = vi.type.tensor_type
    if tt.elem_type != onnx.TensorProto.FLOAT:
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type)
        raise OnnxImportError(
            f"{lm.path}: input '{vi.name}' is {dtype}; only float32 inputs are supported"
        )
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    dims = _resolve_dims(vi.name, dims, shape, lm)
    if dims[0]:
        ctx.fixed_batch = (int(dims[0]),)
    ctx.env[vi.name] = ctx.builder.input(vi.name, TensorType(Kind.F32, (None, *dims[1:])))


def _resolve_dims(
    name: str, dims: list[int | None], given: Sequence[int] | None, lm: LoadedModel
) -> list[int | None]:
    if given is not None:
        given = list(given)
        if len(given) == len(dims) - 1:
            given = [0, *given]
        if len(given) != len(dims):
            raise OnnxImportError(
                f"{lm.path}: --input-shape {list(given)} does not fit input '{name}' "
                f"of rank {len(dims)}"
            )
        for i, (d, g) in enumerate(zip(dims, given, strict=True)):
            if i > 0 and d is not None and d != g:
                raise OnnxImportError(
                    f"{lm.path}: --input-shape gives {g} for dimension {i} of '{name}', "
                    f"the model says {d}"
                )
        dims = [dims[0], *given[1:]]
    dynamic = [i for i, d in enumerate(dims) if i > 0 and (d is None or d <= 0)]
    if dynamic:
        raise OnnxImportError(
            f"{lm.path}: input '{name}' has dynamic dimension(s) {dynamic} (only the batch "
            "dimension may be dynamic); pass the per-sample shape, e.g. --input-shape 3,32,32"
        )
    return dims


def _convert_node(ctx: Ctx, node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    ctx.node = node
    if node.domain in QONNX_DOMAINS:
        _named(node, lambda: _convert_qonnx(ctx, node))
        return
    if node.domain not in ("", "ai.onnx"):
        raise OnnxImportError(
            f"{node_label(node)}: custom domain '{node.domain}' is not supported (known: the "
            f"standard ONNX domain and QONNX's {', '.join(QONNX_DOMAINS)})"
        )
    if node.op_type == "Shape" and node.input[0] in ctx.env:
        _shape_of_value(ctx, node)
        node = _renamed_input(node, 0, node.input[0] + "#shape")
        ctx.consts[node.output[0]] = ctx.consts[node.input[0]]
        return
    if node.op_type == "CastLike" and ctx.is_const(node.input[0]) and node.input[1] in ctx.env:
        # only the dtype of the second input matters, and every run-time tensor is float32
        ctx.consts[node.output[0]] = ctx.consts[node.input[0]].astype(np.float32)
        return
    if _foldable(ctx, node):
        _fold(ctx, node, model)
        return
    conv = CONVERTERS.get(node.op_type)
    if conv is None:
        raise OnnxImportError(
            f"{node_label(node)}: op {node.op_type} is not supported on run-time tensors; "
            f"supported ops: {', '.join(supported_ops())}"
        )
    _named(node, lambda: conv(ctx))


def _named(node: onnx.NodeProto, convert: Callable[[], None]) -> None:
    """Run a converter; an error that does not name the node is prefixed with it."""
    try:
        convert()
    except BsnncError as e:
        if isinstance(e, OnnxImportError):
            raise
        raise OnnxImportError(f"{node_label(node)}: {e.message}") from None


def _convert_qonnx(ctx: Ctx, node: onnx.NodeProto) -> None:
    """QONNX ``Quant`` / ``BipolarQuant``: folded on constants, converted on activations."""
    if node.op_type not in ("Quant", "BipolarQuant"):
        raise OnnxImportError(qonnx_refusal(node))
    on_consts = all(i == "" or ctx.is_const(i) for i in node.input)
    if node.op_type == "Quant":
        (fold_quant if on_consts else conv_quant)(ctx)
    else:
        (fold_bipolar if on_consts else conv_bipolar)(ctx)


def _foldable(ctx: Ctx, node: onnx.NodeProto) -> bool:
    if node.op_type in _NO_FOLD:
        return False
    return all(i == "" or ctx.is_const(i) for i in node.input)


def _renamed_input(node: onnx.NodeProto, index: int, name: str) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.input[index] = name
    return copy


def _shape_of_value(ctx: Ctx, node: onnx.NodeProto) -> None:
    """Shape of a run-time tensor: static dims are known; the batch dimension becomes
    :data:`BATCH`, a sentinel that Reshape recognises as "keep the batch axis"."""
    dims = [BATCH if d is None else int(d) for d in ctx.type_of(ctx.env[node.input[0]]).shape]
    start, end = int(ctx.attr("start", 0)), ctx.attr("end", None)
    ctx.consts[node.input[0] + "#shape"] = np.array(dims[start:end], dtype=np.int64)


#: constant folding refuses to make a tensor larger than this many elements (512 MB of
#: float32: the largest weight of VGG-15 for ImageNet has 103 M); a ConstantOfShape or
#: Expand of a huge shape is an error, not a memory blow-up.
FOLD_MAX_ELEMENTS = 1 << 27


def _fold_elements(node: onnx.NodeProto, feeds: dict[str, np.ndarray], ctx: Ctx) -> int | None:
    """How many elements folding ``node`` would produce, when it can be known before running
    it: from the shape argument of shape-making ops, else from ONNX's inferred shapes."""
    ins = [feeds.get(i) for i in node.input]
    if node.op_type == "ConstantOfShape" and ins and ins[0] is not None:
        return int(np.prod(ins[0].astype(np.float64)))
    if node.op_type == "Expand" and len(ins) > 1 and ins[0] is not None and ins[1] is not None:
        shape = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1].reshape(-1)))
        return int(np.prod(np.asarray(shape, np.float64)))
    if node.op_type == "Tile" and len(ins) > 1 and ins[0] is not None and ins[1] is not None:
        return int(ins[0].size * np.prod(ins[1].astype(np.float64)))
    total = 0.0
    for o in node.output:
        inferred = ctx.shapes.get(o) if o else None
        if inferred is None or not all(isinstance(d, int) for d in inferred):
            return None
        total += float(np.prod(np.asarray(inferred, np.float64)))
    return int(total)


def _fold(ctx: Ctx, node: onnx.NodeProto, model: onnx.ModelProto) -> None:
    """Evaluate a node on constant inputs with onnx's reference evaluator (refused when the
    result would exceed :data:`FOLD_MAX_ELEMENTS`)."""
    feeds = {i: ctx.consts[i] for i in node.input if i}
    n = _fold_elements(node, feeds, ctx)
    if n is not None and n > FOLD_MAX_ELEMENTS:
        raise OnnxImportError(
            f"{node_label(node)}: folding this constant would make {n:,} elements "
            f"({4 * n / 2**30:,.1f} GiB as float32); the limit is {FOLD_MAX_ELEMENTS:,}"
        )
    graph = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for i, v in feeds.items()
        ],
        [
            helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
            for o in node.output
            if o
        ],
    )
    mini = helper.make_model(
        graph, opset_imports=list(model.opset_import), ir_version=model.ir_version
    )
    try:
        results = ReferenceEvaluator(mini).run(None, feeds)
    except Exception as e:  # the reference evaluator raises many types
        raise OnnxImportError(
            f"{node_label(node)}: cannot evaluate on constant inputs: {e}"
        ) from None
    for out, value in zip([o for o in node.output if o], results, strict=True):
        ctx.consts[out] = np.asarray(value)


def _output(ctx: Ctx, name: str) -> str:
    if name in ctx.env:
        return ctx.env[name]
    raise OnnxImportError(f"graph output '{name}' is a constant or is never computed")


def constant_tensor(t: onnx.TensorProto) -> np.ndarray:
    """numpy value of a TensorProto."""
    return numpy_helper.to_array(t)
