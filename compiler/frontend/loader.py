"""Load an ONNX file safely: clear errors for missing, truncated or non-ONNX files and for
missing external data; then the onnx checker and shape inference.

Shape inference runs on a *skeleton* of the model (large initializers replaced by typed graph
inputs), so a 500 MB model is not serialized again just to infer shapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper, numpy_helper, shape_inference

from bsnnc.ir.errors import OnnxImportError

_SMALL = 4096  # initializers with at most this many elements stay in the skeleton


@dataclass
class LoadedModel:
    """An ONNX model with its external data loaded and the shapes ONNX inferred."""

    model: onnx.ModelProto
    path: Path
    shapes: dict[str, tuple[int | str | None, ...]]

    @property
    def opset(self) -> int:
        """Version of the default ('' / ai.onnx) domain."""
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 0


def load_onnx(path: str | os.PathLike[str]) -> LoadedModel:
    """Read, check and shape-infer ``path``; raises :class:`OnnxImportError` with the fix."""
    p = Path(path)
    if not p.is_file():
        raise OnnxImportError(f"{p}: no such file")
    model = _parse(p)
    _check_external(model, p)
    _check(model, p)
    return LoadedModel(model, p, _infer_shapes(model, p))


def _parse(p: Path) -> onnx.ModelProto:
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise OnnxImportError(
            f"{p}: not an ONNX model, or the file is truncated ({type(e).__name__}: {e}); "
            "re-export it with torch.onnx.export or onnx.save"
        ) from None
    if model.ir_version == 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise OnnxImportError(
            f"{p}: not an ONNX model (no IR version or an empty graph); is it truncated?"
        )
    return model


def external_path(base: Path, location: str, tensor: str, model_path: Path) -> Path:
    """The file an external-data ``location`` names, resolved (symlinks included); it must lie
    inside the model's directory ``base``, or :class:`OnnxImportError` is raised before any
    byte is read."""
    root = base.resolve()
    if not location or Path(location).is_absolute() or "\x00" in location:
        raise OnnxImportError(
            f"{model_path}: tensor '{tensor}' names external data '{location}': locations must "
            "be relative paths inside the model's folder"
        )
    f = (root / location).resolve()
    if not f.is_relative_to(root):
        raise OnnxImportError(
            f"{model_path}: tensor '{tensor}' names external data '{location}', which resolves "
            f"to {f}, outside the model's folder {root}; refusing to read it"
        )
    return f


def _check_external(model: onnx.ModelProto, p: Path) -> None:
    """Every external-data location of every tensor (initializers, Constant attributes,
    sparse tensors, in any order) resolves inside the model's folder, and every file exists
    and is long enough — all checked before any byte is read. Initializers are read later,
    one at a time (:class:`Initializers`); other tensors (Constant attributes) are read now."""
    base = p.parent
    tensors = list(external_data_helper._get_all_tensors(model))
    external = [t for t in tensors if external_data_helper.uses_external_data(t)]
    for t in external:
        info = external_data_helper.ExternalDataInfo(t)
        f = external_path(base, info.location, t.name, p)
        if not f.is_file():
            raise OnnxImportError(
                f"{p}: initializer '{t.name}' keeps its data in '{info.location}', which is "
                f"missing; place that file beside the model (expected at {f})"
            )
        need = (info.offset or 0) + (info.length or 0)
        if info.length and f.stat().st_size < need:
            raise OnnxImportError(
                f"{p}: external data file {f} is truncated: initializer '{t.name}' needs bytes "
                f"up to {need}, the file has {f.stat().st_size}"
            )
    for t in external_data_helper._get_attribute_tensors(model):
        if not external_data_helper.uses_external_data(t):
            continue
        try:
            external_data_helper.load_external_data_for_tensor(t, str(base))
        except (OSError, ValueError) as e:
            raise OnnxImportError(f"{p}: cannot read external data of '{t.name}': {e}") from None


def _check(model: onnx.ModelProto, p: Path) -> None:
    try:
        onnx.checker.check_model(_skeleton(model))
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise OnnxImportError(f"{p}: the ONNX checker rejects the model: {first}") from None


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the bytes of large initializers (they become typed graph inputs)."""
    skel = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    skel.opset_import.extend(model.opset_import)
    skel.functions.extend(model.functions)
    g, sg = model.graph, skel.graph
    sg.name = g.name
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    names = {i.name for i in g.input}
    for t in g.initializer:
        if int(np.prod(t.dims)) <= _SMALL and not external_data_helper.uses_external_data(t):
            sg.initializer.append(t)
        elif t.name not in names:
            sg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return skel


def _infer_shapes(model: onnx.ModelProto, p: Path) -> dict[str, tuple[int | str | None, ...]]:
    try:
        inferred = shape_inference.infer_shapes(_skeleton(model), strict_mode=True, data_prop=True)
    except (shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        first = str(e).strip().splitlines()[0]
        raise OnnxImportError(f"{p}: ONNX shape inference fails: {first}") from None
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(_dim(d) for d in tt.shape.dim)
    return shapes


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    return d.dim_param if d.HasField("dim_param") else None


class Initializers(MutableMapping[str, np.ndarray]):
    """Constant tensors by ONNX name, read on first use.

    External-data initializers are read straight from their file (one copy, no detour through
    the protobuf); embedded ones are converted and their protobuf bytes released. With the
    importer deleting each weight after its last reader, a large model's weights are never all
    in memory at once.
    """

    def __init__(self, model: onnx.ModelProto, base: Path, model_path: Path | None = None) -> None:
        self._tensors = {t.name: t for t in model.graph.initializer}
        self._values: dict[str, np.ndarray] = {}
        self._base = base
        self._model_path = model_path or base

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = self._read(self._tensors.pop(name))
        return self._values[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self._tensors.pop(name, None)
        self._values[name] = value

    def __delitem__(self, name: str) -> None:
        if self._values.pop(name, None) is None and self._tensors.pop(name, None) is None:
            raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in self._values or name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter([*self._values, *self._tensors])

    def __len__(self) -> int:
        return len(self._values) + len(self._tensors)

    def _read(self, t: onnx.TensorProto) -> np.ndarray:
        if not external_data_helper.uses_external_data(t):
            value = numpy_helper.to_array(t)
            t.ClearField("raw_data")
            return value
        info = external_data_helper.ExternalDataInfo(t)
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        count = int(np.prod(t.dims))
        path = external_path(self._base, info.location, t.name, self._model_path)
        with path.open("rb") as f:
            f.seek(int(info.offset or 0))
            data = np.fromfile(f, dtype=dtype.newbyteorder("<"), count=count)
        if data.size != count:
            raise OnnxImportError(f"external data of initializer '{t.name}' is truncated")
        return data.astype(dtype, copy=False).reshape(tuple(t.dims))
