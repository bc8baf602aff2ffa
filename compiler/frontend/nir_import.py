"""NIR → spiking IR: a B-SNN made in another tool (or exported by bsnnc) onto crossbars.

A NIR graph describes continuous-time dynamics (``dv/dt = r·I``); bsnnc simulates them with
the Euler step dt = 1/r of its ``IF`` nodes (every ``IF`` and ``I`` must share one r), so
that a neuron integrates ``v += I`` per step as bsnnc's does (SpikingJelly exports r = 1/dt,
bsnnc r = 1). Node by node:

* ``Input`` → the graph input; ``Output`` → the graph output (through a ``readout``; an
  ``I`` integrator before it *is* the readout, else one is added: the last layer's current
  accumulated over steps);
* ``Conv2d`` (group 1) / ``Affine`` / ``Linear`` → ``conv2d`` / ``dense`` [+ ``bias``]: ±1
  weights (up to one positive factor per layer or per output channel) are ``bipolar`` — a
  crossbar layer — with the factor as a ``scale``; other weights stay full precision;
* ``AvgPool2d`` → ``avgpool``; ``SumPool2d`` → ``avgpool`` then ``scale`` by the window size
  (``SumPool2d`` then ``Threshold`` 0.5 — bsnnc's export of a max pool of spikes — →
  ``maxpool``; bsnnc's ``--sum-pools`` export: the average pool again, the window divided
  out of the reading IF's θ); ``Flatten`` → ``flatten``; ``Scale`` → ``scale`` (per tensor
  or per channel);
* ``IF`` → ``if`` (θ per layer or per channel; ``v_reset`` must be 0: reset ``zero``);
* a node with several inputs sums them: ``add``.

Files bsnnc exported carry its exact semantics in ``metadata["bsnnc"]`` (reset, initial
membrane, the IR ops, attributes, locs and constant names): they are read back into the same
IR. ``LIF``, ``CubaLIF``, ``LI``, ``Delay`` and any other node are refused by name.
"""

from __future__ import annotations

import json
import os
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

import numpy as np

from bsnnc.compiler.frontend.converters import detect_binary
from bsnnc.ir.builder import GraphBuilder
from bsnnc.ir.errors import OnnxImportError
from bsnnc.ir.graph import Attrs, Graph, attr_float
from bsnnc.ir.types import Kind, TensorType
from bsnnc.ir.verifier import verify_spiking


class NirImportError(OnnxImportError):
    """A NIR file bsnnc cannot import; the message names the file and node."""


def _facts(node: Any) -> dict[str, Any]:
    """bsnnc's metadata of a node it exported ({} for other tools' nodes)."""
    raw = getattr(node, "metadata", {}) or {}
    text = raw.get("bsnnc") if isinstance(raw, dict) else None
    if isinstance(text, bytes):
        text = text.decode()
    try:
        out = json.loads(text) if isinstance(text, str) else {}
    except json.JSONDecodeError:
        return {}
    return out if isinstance(out, dict) else {}


def _attrs(d: dict[str, Any]) -> Attrs:
    """The IR attributes bsnnc recorded for a node (JSON lists back to tuples)."""
    raw = json.loads(d["attrs"])
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def read_nir(path: str | os.PathLike[str]) -> Any:
    """The NIR graph of ``path``; a clear error for a missing, truncated or foreign file."""
    p = Path(path)
    if not p.is_file():
        raise NirImportError(f"{p}: no such file")
    try:
        import nir
    except ImportError:
        raise NirImportError(
            f"{p}: reading NIR needs the nir package: pip install 'bsnnc[nir]'"
        ) from None
    try:
        return nir.read(p)
    except Exception as e:  # h5py and nir raise many types for a bad file
        raise NirImportError(f"{p}: not a readable NIR file ({type(e).__name__}: {e})") from None


class _Importer:
    def __init__(self, g: Any, path: Path) -> None:
        import nir

        self.nir, self.src, self.path = nir, g, path
        self.b = GraphBuilder(_facts(g).get("graph") or path.stem or "nir")
        self.env: dict[str, str] = {}  # NIR node → IR operand
        self.inputs: dict[str, list[str]] = {k: [] for k in g.nodes}
        for a, z in g.edges:
            if a not in g.nodes or z not in g.nodes:
                raise self.fail(
                    z if a in g.nodes else a, "an edge names a node that is not in the graph"
                )
            self.inputs[z].append(a)
        self._check_r()
        #: bsnnc's metadata of each node, parsed once
        self.facts = {k: _facts(n) for k, n in g.nodes.items()}
        #: SumPool2d nodes that are bsnnc max pools (their Threshold completes them)
        self.or_of: set[str] = set()
        #: I nodes (readouts)
        self.readouts: set[str] = set()

    def fail(self, name: str, msg: str) -> NirImportError:
        node = self.src.nodes.get(name)
        kind = type(node).__name__ if node is not None else "?"
        return NirImportError(f"{self.path}: node '{name}' ({kind}): {msg}")

    def _check_r(self) -> None:
        """Every IF and I shares one r: bsnnc steps them with dt = 1/r (``v += I``)."""
        rs = {
            float(np.asarray(n.r).reshape(-1)[0])
            for n in self.src.nodes.values()
            if isinstance(n, self.nir.IF | self.nir.I)
        }
        for name, n in self.src.nodes.items():
            if isinstance(n, self.nir.IF | self.nir.I) and len(np.unique(np.asarray(n.r))) != 1:
                raise self.fail(name, "r must be one value (bsnnc steps with dt = 1/r)")
        if len(rs) > 1:
            raise NirImportError(
                f"{self.path}: the IF/I nodes have different r ({sorted(rs)}); bsnnc steps "
                "all neurons with one dt = 1/r"
            )
        r = rs.pop() if rs else 1.0
        if not (np.isfinite(r) and r > 0):
            raise NirImportError(f"{self.path}: r = {r} (must be finite and > 0)")

    def order(self) -> list[str]:
        """Nodes in an order every edge respects (bsnnc's exports: the IR's own order)."""
        sorter = TopologicalSorter({k: set(v) for k, v in self.inputs.items()})
        try:
            sorter.prepare()
        except CycleError:
            raise NirImportError(
                f"{self.path}: the graph has a cycle (recurrent NIR graphs are not supported)"
            ) from None
        rank = {k: self._rank(k) for k in self.inputs}
        done: list[str] = []
        ready: list[str] = []
        while sorter.is_active():
            ready = sorted([*ready, *sorter.get_ready()], key=rank.__getitem__)
            done.append(ready.pop(0))
            sorter.done(done[-1])
        return done

    def _rank(self, name: str) -> tuple[int, str]:
        nodes = self.facts[name].get("nodes") or []
        first = nodes[0]["result"] if nodes else ""
        return (int(first) if str(first).isdigit() else -1, name)

    def run(self) -> Graph:
        outputs = []
        for name in self.order():
            node = self.src.nodes[name]
            kind = type(node).__name__
            if kind == "Output":
                outputs.append(self._readout(name))
                continue
            handler = getattr(self, f"node_{kind}", None)
            if handler is None:
                raise self.fail(
                    name,
                    "not supported: bsnnc imports Input, Conv2d, Affine, Linear, AvgPool2d, "
                    "SumPool2d, Threshold (after SumPool2d), Flatten, Scale, IF, I and Output",
                )
            handler(name, node)
        if len(outputs) != 1:
            raise NirImportError(f"{self.path}: the graph must have exactly one Output")
        g = self.b.finish(outputs)
        verify_spiking(g)
        return g

    def _x(self, name: str) -> str:
        """The node's input operand: its sources summed (``add``) in edge order."""
        srcs = self.inputs[name]
        if not srcs:
            raise self.fail(name, "has no input")
        adds = self.facts[name].get("merges", [])
        x = self.env[srcs[0]]
        for i, s in enumerate(srcs[1:]):
            loc = adds[i]["loc"] if i < len(adds) else name
            x = self.b.add("add", [x, self.env[s]], loc=loc or None)
        return x

    def _desc(self, name: str, op: str) -> dict[str, Any] | None:
        for d in self.facts[name].get("nodes", []):
            if d.get("op") == op:
                return dict(d)
        return None

    def _emit(self, name: str, op: str, operands: list[str], attrs: Attrs) -> str:
        d = self._desc(name, op)
        if d is not None:
            attrs = _attrs(d)
        loc = (d or {}).get("loc") or name
        try:
            return self.b.add(op, operands, attrs, loc=loc)
        except Exception as e:
            raise self.fail(name, str(getattr(e, "message", e))) from None

    def _const(self, name: str, op: str, index: int, kind: Kind, data: np.ndarray) -> str:
        d = self._desc(name, op)
        cname = d["consts"][index] if d and len(d.get("consts", [])) > index else f"{name}.{op}"
        return self.b.const(cname, kind, data)

    def _finite(self, name: str, what: str, a: Any) -> np.ndarray:
        v = np.asarray(a, np.float64)
        if not np.all(np.isfinite(v)):
            raise self.fail(name, f"{what} has non-finite values (NaN or ±inf)")
        return v

    # --- nodes -------------------------------------------------------------------------

    def node_Input(self, name: str, node: Any) -> None:
        shape = tuple(int(d) for d in np.asarray(node.input_type["input"]).reshape(-1))
        if len(shape) not in (1, 3) or min(shape) < 1:
            raise self.fail(name, f"input shape {list(shape)} must be [C, H, W] or [features]")
        d = self._desc(name, "input")
        self.env[name] = self.b.input(
            (d or {}).get("result") or "input", TensorType(Kind.F32, (None, *shape))
        )

    def _weighted(self, name: str, op: str, w: np.ndarray, attrs: Attrs, bias: Any) -> None:
        w = self._finite(name, "weight", w).astype(np.float32)
        d = self._desc(name, op)
        kinds = (d or {}).get("kinds") or []
        x = self._x(name)
        if kinds and kinds[0] == "bipolar":
            if not np.all(np.abs(w) == 1):
                raise self.fail(name, "bsnnc's metadata says ±1 weights, the weights differ")
            y = self._emit(name, op, [x, self._const(name, op, 0, Kind.BIPOLAR, w)], attrs)
        elif kinds:
            y = self._emit(name, op, [x, self._const(name, op, 0, Kind.F32, w)], attrs)
        else:
            y = self._foreign_weighted(name, op, x, w, attrs)
        self.env[name] = self._bias(name, y, bias)

    def _foreign_weighted(self, name: str, op: str, x: str, w: np.ndarray, attrs: Attrs) -> str:
        found = detect_binary(w)
        if found is None:
            return self._emit(name, op, [x, self._const(name, op, 0, Kind.F32, w)], attrs)
        signs, alpha = found
        y = self._emit(name, op, [x, self._const(name, op, 0, Kind.BIPOLAR, signs)], attrs)
        if isinstance(alpha, float):
            return self.b.add("scale", [y], {"factor": alpha}, loc=name) if alpha != 1 else y
        c = self.b.const(f"{name}.alpha", Kind.F32, np.asarray(alpha, np.float32))
        return self.b.add("scale", [y, c], {"axis": 1}, loc=name)

    def _bias(self, name: str, y: str, bias: Any) -> str:
        if bias is None:
            return y
        b = self._finite(name, "bias", bias).astype(np.float32).reshape(-1)
        d = self._desc(name, "bias")
        if d is None:
            if not np.any(b):
                return y
            c = self.b.const(f"{name}.bias", Kind.F32, b)
            return self.b.add("bias", [y, c], {"axis": 1}, loc=name)
        attrs = _attrs(d)
        operands = [y]
        if d.get("consts"):
            operands.append(self.b.const(d["consts"][0], Kind.F32, b))
        elif not np.all(b == np.float32(attr_float(attrs, "value") if "value" in attrs else 0)):
            raise self.fail(name, "the bias disagrees with bsnnc's metadata")
        return self.b.add("bias", operands, attrs, loc=d.get("loc") or name)

    def node_Conv2d(self, name: str, node: Any) -> None:
        if int(np.asarray(node.groups).reshape(-1)[0]) != 1:
            raise self.fail(name, "grouped convolution: a crossbar layer maps a dense matrix")
        if isinstance(node.padding, str):
            raise self.fail(name, f"padding '{node.padding}': give the padding as numbers")
        pad = [int(v) for v in np.asarray(node.padding).reshape(-1)]
        pad = pad * 2 if len(pad) == 1 else pad
        stride = [int(v) for v in np.broadcast_to(np.asarray(node.stride).reshape(-1), (2,))]
        dil = [int(v) for v in np.broadcast_to(np.asarray(node.dilation).reshape(-1), (2,))]
        attrs: Attrs = {
            "stride": tuple(stride),
            "dilation": tuple(dil),
            "pad": (pad[0], pad[1], pad[0], pad[1]),
        }
        if self._desc(name, "conv2d") is None and self._desc(name, "bias") is not None:
            # bsnnc's identity 1×1 convolution that carries a bias
            self.env[name] = self._bias(name, self._x(name), node.bias)
            return
        self._weighted(name, "conv2d", node.weight, attrs, node.bias)

    def node_Affine(self, name: str, node: Any) -> None:
        if self._desc(name, "dense") is None and self._desc(name, "bias") is not None:
            self.env[name] = self._bias(name, self._x(name), node.bias)
            return
        self._weighted(name, "dense", node.weight, {}, node.bias)

    def node_Linear(self, name: str, node: Any) -> None:
        self._weighted(name, "dense", node.weight, {}, None)

    def _pool(self, name: str, node: Any) -> Attrs:
        k = [int(v) for v in np.broadcast_to(np.asarray(node.kernel_size).reshape(-1), (2,))]
        s = [int(v) for v in np.broadcast_to(np.asarray(node.stride).reshape(-1), (2,))]
        p = [int(v) for v in np.broadcast_to(np.asarray(node.padding).reshape(-1), (2,))]
        return {
            "kernel": tuple(k),
            "stride": tuple(s),
            "pad": (p[0], p[1], p[0], p[1]),
            "ceil_mode": False,
        }

    def node_AvgPool2d(self, name: str, node: Any) -> None:
        if self._desc(name, "global_avgpool") is not None:
            self.env[name] = self._emit(name, "global_avgpool", [self._x(name)], {})
            return
        attrs = {**self._pool(name, node), "count_include_pad": True}
        self.env[name] = self._emit(name, "avgpool", [self._x(name)], attrs)

    def node_SumPool2d(self, name: str, node: Any) -> None:
        if self._desc(name, "maxpool") is not None:
            self.env[name] = self._emit(name, "maxpool", [self._x(name)], self._pool(name, node))
            self.or_of.add(name)
            return
        attrs = {**self._pool(name, node), "count_include_pad": True}
        for op in ("avgpool", "global_avgpool"):  # bsnnc's export with --sum-pools
            if self._desc(name, op) is not None:
                self.env[name] = self._emit(name, op, [self._x(name)], attrs)
                return
        y = self.b.add("avgpool", [self._x(name)], attrs, loc=name)
        k = attrs["kernel"]
        assert isinstance(k, tuple)
        self.env[name] = self.b.add("scale", [y], {"factor": float(k[0] * k[1])}, loc=name)

    def node_Threshold(self, name: str, node: Any) -> None:
        srcs = self.inputs[name]
        if len(srcs) == 1 and srcs[0] in self.or_of:
            self.env[name] = self.env[srcs[0]]  # the max pool of spikes it completes
            return
        raise self.fail(name, "a Threshold is supported only after bsnnc's max-pool SumPool2d")

    def node_Flatten(self, name: str, node: Any) -> None:
        self.env[name] = self._emit(name, "flatten", [self._x(name)], {})

    def node_Scale(self, name: str, node: Any) -> None:
        s = self._finite(name, "scale", node.scale).astype(np.float32)
        x = self._x(name)
        shape = self.b.type_of(x).shape[1:]
        d = self._desc(name, "scale")
        chans = s.reshape(s.shape[0], -1)[:, 0] if s.ndim else s.reshape(1)
        if s.ndim and s.shape != tuple(shape):
            raise self.fail(name, f"scale of shape {list(s.shape)} on a value of {list(shape)}")
        if s.ndim and np.any(s.reshape(s.shape[0], -1) != chans[:, None]):
            raise self.fail(name, "a scale per element (not per channel) is not supported")
        if d is not None and d.get("consts"):
            c = self.b.const(d["consts"][0], Kind.F32, chans)
            self.env[name] = self._emit(name, "scale", [x, c], {})
        elif np.all(chans == chans[0]):
            self.env[name] = self._emit(name, "scale", [x], {"factor": float(chans[0])})
        else:
            c = self.b.const(f"{name}.scale", Kind.F32, chans)
            self.env[name] = self.b.add("scale", [x, c], {"axis": 1}, loc=name)

    def node_IF(self, name: str, node: Any) -> None:
        x = self._x(name)
        shape = self.b.type_of(x).shape[1:]
        theta = self._finite(name, "v_threshold", node.v_threshold)
        reset = self._finite(name, "v_reset", node.v_reset)
        if tuple(theta.shape) != tuple(shape):
            raise self.fail(name, f"θ of shape {list(theta.shape)} on a current of {list(shape)}")
        if np.any(theta <= 0):
            raise self.fail(name, "v_threshold must be > 0")
        d = self._desc(name, "if")
        if d is None and np.any(reset != 0):
            raise self.fail(name, "v_reset must be 0 (bsnnc resets to 0 or subtracts θ)")
        chans = theta.reshape(theta.shape[0], -1)[:, 0] if len(shape) > 1 else theta
        if np.any(theta.reshape(theta.shape[0], -1) != chans[:, None]):
            raise self.fail(name, "θ per neuron (not per layer or channel) is not supported")
        if d is not None:
            ops = [x]
            # --sum-pools: the sum pool's window (a power of two) multiplies θ in the file
            factor = float(self.facts[name].get("semantics", {}).get("theta_factor", 1))
            if d.get("consts"):
                exact = (chans / factor).astype(np.float32)
                ops.append(self.b.const(d["consts"][0], Kind.F32, exact))
            self.env[name] = self.b.add("if", ops, _attrs(d), loc=d.get("loc") or name)
        elif np.all(chans == chans[0]):
            attrs: Attrs = {"theta": float(chans[0]), "reset": "zero", "axis": 1}
            self.env[name] = self.b.add("if", [x], attrs, loc=name)
        else:
            c = self.b.const(f"{name}.theta", Kind.F32, chans.astype(np.float32))
            attrs = {"theta": 1.0, "reset": "zero", "axis": 1}
            self.env[name] = self.b.add("if", [x, c], attrs, loc=name)

    def node_I(self, name: str, node: Any) -> None:
        x = self._x(name)
        d = self._desc(name, "readout")
        self.env[name] = self.b.add("readout", [x], loc=(d or {}).get("loc") or name)
        self.readouts.add(name)

    def _readout(self, output: str) -> str:
        """The graph output: an ``I`` that alone feeds it, else a readout of its input."""
        srcs = self.inputs[output]
        if len(srcs) == 1 and srcs[0] in self.readouts:
            return self.env[srcs[0]]
        x = self._x(output)
        if self.b.type_of(x).kind == Kind.SPIKE:
            raise self.fail(
                output, "the output must be a current (a layer or an I integrator), not spikes"
            )
        return self.b.add("readout", [x], loc=output)


def import_nir(path: str | os.PathLike[str]) -> Graph:
    """Read ``path`` (a NIR file) into a verified spiking IR graph (see the module docstring)."""
    p = Path(path)
    return _Importer(read_nir(p), p).run()
