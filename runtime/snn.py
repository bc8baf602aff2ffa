"""The numpy spiking runtime: the reference semantics of a B-SNN over T timesteps.

Semantics (per image, timestep t = 1..T):

* the network input is applied directly as a constant current at every step;
* an ``if`` neuron integrates ``v ← v + z[t]``, emits ``s[t] = 1`` when ``v ≥ θ``, then resets
  ``v ← v − θ`` (subtract) or ``v ← 0`` (zero); membranes are float64 and start at
  ``v(0) = init·θ`` (the node's ``init`` attribute, 0 when absent; a multiple of 1/256, so
  the product is exact);
* a ``readout`` accumulates ``V[t] = Σ_{τ ≤ t} z[τ]`` with no threshold, and the prediction at
  step t is ``argmax V[t]`` — one run gives the whole accuracy-vs-timestep curve.

Execution is layer by layer, not step by step: each layer is computed for all T steps of a
batch of images at once (one large product over T·N inputs), then the IF scan over time is a
cheap elementwise loop. Values that do not change over time (the input and everything computed
from it before the first IF: the first layer's current) are computed once, in float64 with a
fixed summation order (:func:`bsnnc.runtime.kernels.matmul_fixed_order`), so they do not
depend on the CPU or the batch size. Products of spikes with ±1 weights are exact integers,
computed by AND-popcount over bit-packed words, and the IF scan is one fused pass per layer
(:mod:`bsnnc.runtime.bitkernels`: the same float64 operations as :func:`if_scan`, which stays
the definition), fused into the binary convolution before it when it is that convolution's
only reader; full-precision products of spikes are computed in float64, which is exact for
0/1 inputs and so independent of the summation order. Between the compiled passes (binary
convolution → average pool → IF → the next binary convolution) values stay channels last
(``Value.nhwc``); any other op gets them in the IR's layout. The images are processed in
chunks that fit ``max_memory``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph, Node, attr_float, attr_int, attr_ints
from bsnnc.ir.ops import Trait, has_trait, if_init, is_binary_layer
from bsnnc.ir.verifier import verify_spiking
from bsnnc.runtime import kernels as K
from bsnnc.runtime.ann import ANN_KERNELS, last_uses
from bsnnc.runtime.threads import blas_single_threaded


@dataclass
class Value:
    """A tensor over time: ``data`` is [T, N, ...] or, when ``static``, [N, ...] for every t;
    with ``nhwc`` an image's axes are [H, W, C] instead of the IR's [C, H, W] (what the
    compiled kernels exchange: each position's channels contiguous)."""

    data: np.ndarray
    static: bool
    nhwc: bool = False


def nchw(v: Value) -> Value:
    """``v`` in the IR's layout."""
    if not v.nhwc:
        return v
    axes = (0, 3, 1, 2) if v.static else (0, 1, 4, 2, 3)
    return Value(np.ascontiguousarray(v.data.transpose(axes)), v.static)


@dataclass
class SnnTrace:
    """What one run records, for a chunk of N images."""

    #: readout membrane after every step, [T, N, classes] (the first graph output)
    final: np.ndarray
    #: per IF layer (result name): spikes per step and image, [T, N]
    spikes: dict[str, np.ndarray] = field(default_factory=dict)
    #: per IF layer: spikes per neuron over the window, [N, neurons] (for the spike digest)
    per_neuron: dict[str, np.ndarray] = field(default_factory=dict)
    #: per binary layer (result name): spikes arriving at its input per step and image, [T, N]
    layer_input: dict[str, np.ndarray] = field(default_factory=dict)
    #: per node (result name): wall seconds spent computing it (``simulate --profile``)
    seconds: dict[str, float] = field(default_factory=dict)


def if_scan(
    z: Value, theta: np.ndarray | float, reset: str, T: int, v: np.ndarray | None = None
) -> np.ndarray:
    """Integrate-and-fire over T steps from membranes ``v`` (zeros when None; updated in
    place, so a later window continues where this one stopped); returns spikes [T, N, ...]
    as uint8."""
    shape = z.data.shape if z.static else z.data.shape[1:]
    if v is None:
        v = np.zeros(shape, np.float64)
    out = np.empty((T, *shape), np.uint8)
    th = np.asarray(theta, np.float64)
    for t in range(T):
        v += z.data if z.static else z.data[t]
        fired = v >= th
        out[t] = fired
        if reset == "subtract":
            v -= fired * th
        else:
            v[fired] = 0.0
    return out


@dataclass
class WindowState:
    """What carries over from one time window to the next."""

    #: per IF layer: the membranes after the last step
    membranes: dict[str, np.ndarray] = field(default_factory=dict)
    #: values computed from the input alone (the same in every window)
    static: dict[str, Value] = field(default_factory=dict)
    #: the readout membrane after the last step
    readout: np.ndarray | None = None


def merge_traces(a: SnnTrace, b: SnnTrace) -> SnnTrace:
    """Trace ``a`` followed by the next window's trace ``b``."""
    return SnnTrace(
        final=np.concatenate([a.final, b.final]),
        spikes={k: np.concatenate([v, b.spikes[k]]) for k, v in a.spikes.items()},
        per_neuron={k: v + b.per_neuron[k] for k, v in a.per_neuron.items()},
        layer_input={k: np.concatenate([v, b.layer_input[k]]) for k, v in a.layer_input.items()},
        seconds=add_seconds(a.seconds, b.seconds),
    )


def add_seconds(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Per-node seconds of two runs, added."""
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in {**a, **b}}


class SnnRuntime:
    """Executes a spiking-form graph (see the module docstring)."""

    def __init__(self, g: Graph) -> None:
        verify_spiking(g)
        if not any(n.op == "readout" for n in g.nodes):
            raise BsnncError("the graph has no readout: compile it with the default pipeline")
        self.g = g
        #: per node index, the values it uses last (freed after it)
        self._last = last_uses(g)
        self._fast: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
        for n in g.nodes:
            if is_binary_layer(g, n):
                self._fast[n.result] = self._fast_kernel(n)
        #: binary convolution → the IF layer fused into it (its only reader)
        self._fires: dict[str, Node] = {}
        users = g.users()
        for n in g.nodes:
            if n.op != "conv2d" or n.result not in self._fast or n.result in g.outputs:
                continue
            readers = users.get(n.result, [])
            if (
                len(readers) == 1
                and readers[0].op == "if"
                and attr_int(readers[0].attrs, "axis") == 1
            ):
                self._fires[n.result] = readers[0]

    def _fast_kernel(self, n: Node) -> Callable[[np.ndarray], np.ndarray]:
        from bsnnc.runtime.bitkernels import PackedConv, PackedDense

        w = self.g.constants[n.const_operands()[0]].array()
        if n.op == "dense":
            return PackedDense(w)
        pad = attr_ints(n.attrs, "pad")
        stride, dil = attr_ints(n.attrs, "stride"), attr_ints(n.attrs, "dilation")
        return PackedConv(
            w, (stride[0], stride[1]), (pad[0], pad[1], pad[2], pad[3]), (dil[0], dil[1])
        )

    def run(self, x: np.ndarray, T: int, window: int | None = None) -> SnnTrace:
        """Simulate T steps on the images ``x`` [N, C, H, W], ``window`` steps at a time (all
        at once when None): membranes and the readout carry over between windows and values
        computed from the input alone are computed once, so any window gives the same bits."""
        return run_in_windows(T, window, lambda t0, w, state: self._window(x, t0, w, state))

    def _window(self, x: np.ndarray, t0: int, T: int, state: WindowState) -> SnnTrace:
        env: dict[str, Value] = {}
        trace = SnnTrace(final=np.zeros(0))
        for i, n in enumerate(self.g.nodes):
            start = time.perf_counter()
            if n.result in env:  # an IF layer computed with the convolution before it
                pass
            elif n.result in state.static:
                env[n.result] = state.static[n.result]
            elif not self._fused(n, env, T, trace, state):
                env[n.result] = self._node(n, env, x, T, trace, t0, state)
                if env[n.result].static:
                    state.static[n.result] = env[n.result]
                trace.seconds[n.result] = time.perf_counter() - start
            for v in self._last.get(i, []):
                env.pop(v, None)
        trace.final = env[self.g.outputs[0]].data
        state.readout = trace.final[-1]
        return trace

    def _fused(
        self, n: Node, env: dict[str, Value], T: int, trace: SnnTrace, state: WindowState
    ) -> bool:
        """When ``n`` is a binary convolution of spikes read by an IF layer alone, compute
        both at once into ``env`` (the IF's result; the convolution's is never needed) and
        return True. Its time is the convolution's; the IF's is recorded as 0."""
        f = self._fires.get(n.result)
        src = env.get(n.value_operands()[0]) if f is not None else None
        if f is None or src is None or src.static:
            return False
        start = time.perf_counter()
        env[f.result] = self._conv_fire(n, f, src, T, trace, state)
        trace.seconds[n.result], trace.seconds[f.result] = time.perf_counter() - start, 0.0
        return True

    def _node(
        self,
        n: Node,
        env: dict[str, Value],
        x: np.ndarray,
        T: int,
        trace: SnnTrace,
        t0: int,
        state: WindowState,
    ) -> Value:
        if n.op == "input":
            return Value(np.ascontiguousarray(x, np.float32), True)
        ins = [env[o[1:]] for o in n.operands if o.startswith("%")]
        consts = [self.g.constants[c].array() for c in n.const_operands()]
        if n.op == "if":
            return self._if(n, ins[0], consts, T, trace, state)
        if n.op == "readout":
            return readout(nchw(ins[0]), T, t0, state.readout)
        if n.result in self._fast:
            return self._binary(n, ins[0] if n.op == "conv2d" else nchw(ins[0]), T, trace)
        if n.op == "add":
            return merge(ins[0], ins[1], T)
        if n.op == "concat":
            return concat(ins[0], ins[1])
        return digital(n, ins[0], consts, T)

    def _if(
        self,
        n: Node,
        z: Value,
        consts: list[np.ndarray],
        T: int,
        trace: SnnTrace,
        state: WindowState,
    ) -> Value:
        theta, reset = _threshold(n, consts), str(n.attrs["reset"])
        v0 = if_init(n.attrs) * theta
        return fire(n.result, z, theta, attr_int(n.attrs, "axis"), reset, T, trace, state, v0)

    def _conv_fire(
        self, n: Node, f: Node, s: Value, T: int, trace: SnnTrace, state: WindowState
    ) -> Value:
        """Binary convolution ``n`` of spikes ``s`` and the IF layer ``f`` that reads it, in
        one compiled pass (:meth:`~bsnnc.runtime.bitkernels.PackedConv.fire`): the same
        spikes, membranes and counts as :meth:`_binary` then :meth:`_if`."""
        from bsnnc.runtime.bitkernels import PackedConv, step_counts

        kernel = self._fast[n.result]
        assert isinstance(kernel, PackedConv)
        trace.layer_input[n.result] = step_counts(s.data)
        consts = [self.g.constants[c].array() for c in f.const_operands()]
        shape = (s.data.shape[1], int(n.type.shape[2] or 0), int(n.type.shape[3] or 0))
        theta = _threshold(f, consts)
        if f.result not in state.membranes:
            state.membranes[f.result] = initial_membranes(
                (*shape, int(n.type.shape[1] or 0)), if_init(f.attrs) * theta, 3
            )
        subtract = str(f.attrs["reset"]) == "subtract"
        spikes, trace.spikes[f.result], trace.per_neuron[f.result] = kernel.fire(
            s.data, s.nhwc, theta, subtract, state.membranes[f.result]
        )
        return Value(spikes, False, True)

    def _binary(self, n: Node, s: Value, T: int, trace: SnnTrace) -> Value:
        from bsnnc.runtime.bitkernels import PackedConv, step_counts

        data = s.data
        trace.layer_input[n.result] = step_counts(data)
        flat = data.reshape(T * data.shape[1], *data.shape[2:])
        kernel = self._fast[n.result]
        if isinstance(kernel, PackedConv):  # channels last out
            y = kernel(flat, s.nhwc)
            return Value(y.reshape(T, data.shape[1], *y.shape[1:]), False, True)
        y = kernel(flat)
        return Value(y.reshape(T, data.shape[1], *y.shape[1:]), False)


def _threshold(n: Node, consts: list[np.ndarray]) -> np.ndarray:
    """An IF node's θ: one value, or one per channel (its constant times the attribute)."""
    theta = np.array([attr_float(n.attrs, "theta")], np.float64)
    if consts:  # θ per channel
        theta = theta * consts[0].astype(np.float64)
    return theta


def run_in_windows(
    T: int, window: int | None, run_window: Callable[[int, int, WindowState], SnnTrace]
) -> SnnTrace:
    """Runs steps 1..T as consecutive windows of ``window`` steps (one window when None):
    ``run_window(t0, steps, state)`` simulates steps t0+1 .. t0+steps, continuing from
    ``state``; the windows' traces are concatenated along time. BLAS runs on one thread
    meanwhile (:mod:`bsnnc.runtime.threads`)."""
    w = T if window is None else max(1, min(window, T))
    state = WindowState()
    merged: SnnTrace | None = None
    with blas_single_threaded():  # the compiled kernels use every core
        for t0 in range(0, T, w):
            part = run_window(t0, min(w, T - t0), state)
            merged = part if merged is None else merge_traces(merged, part)
    assert merged is not None
    return merged


def fire(
    layer: str,
    z: Value,
    theta: np.ndarray,
    axis: int,
    reset: str,
    T: int,
    trace: SnnTrace,
    state: WindowState,
    v0: np.ndarray | None = None,
) -> Value:
    """An IF layer over T steps (:func:`if_scan`'s semantics, compiled): currents ``z`` in
    either layout, ``theta`` one value or one per channel along ``axis`` of one step's shape
    in the IR's layout (with ``z.nhwc`` the channels are last); membranes from and back to
    ``state``, starting at ``v0`` (shaped like ``theta``; zeros when None) in the first
    window; records the spike counts in ``trace`` (per neuron in the IR's order, which the
    digest hashes). The spikes keep ``z``'s layout."""
    from bsnnc.runtime.bitkernels import if_scan_fast

    if z.nhwc and axis != 1:
        z = nchw(z)
    shape = z.data.shape if z.static else z.data.shape[1:]
    inner = 1 if z.nhwc or theta.size == 1 else int(np.prod(shape[axis + 1 :]))
    if layer not in state.membranes:
        state.membranes[layer] = initial_membranes(shape, v0, len(shape) - 1 if z.nhwc else axis)
    v = state.membranes[layer]
    s, trace.spikes[layer], trace.per_neuron[layer] = if_scan_fast(
        z.data, z.static, theta, inner, reset == "subtract", T, v, z.nhwc
    )
    return Value(s, False, z.nhwc)


def initial_membranes(shape: tuple[int, ...], v0: np.ndarray | None, axis: int) -> np.ndarray:
    """Membranes [N, ...] at t = 0 (float64): ``v0`` everywhere (one value) or per channel
    along ``axis`` of ``shape``; zeros when ``v0`` is None or all zero."""
    v = np.zeros(shape, np.float64)
    if v0 is None or not np.any(v0):
        return v
    vec = np.asarray(v0, np.float64).reshape(-1)
    if vec.size == 1:
        v[...] = vec[0]
    else:
        view = [1] * len(shape)
        view[axis] = vec.size
        v[...] = vec.reshape(view)
    return v


def readout(z: Value, T: int, t0: int = 0, last: np.ndarray | None = None) -> Value:
    """The final membrane after every step: ``V[t] = Σ_{τ ≤ t} z[τ]`` (float64), for the
    steps t0+1 .. t0+T of a window; ``last`` is V[t0] (the previous window's last row). The
    sums run in the same order as over the whole run, so windows change no bit."""
    if z.static:
        steps = np.arange(t0 + 1, t0 + T + 1, dtype=np.float64).reshape(T, *([1] * z.data.ndim))
        return Value(steps * z.data.astype(np.float64), False)
    if last is None:
        return Value(np.cumsum(z.data, axis=0, dtype=np.float64), False)
    both = np.concatenate([last[None].astype(np.float64), z.data.astype(np.float64)])
    return Value(np.cumsum(both, axis=0)[1:], False)


def digital(n: Node, x: Value, consts: list[np.ndarray], T: int) -> Value:
    """A non-binary op (full-precision layer, pooling, flatten, scale, bias) over all steps,
    with the reference kernels; full-precision weights on spikes run in float64, which is
    exact for 0/1 inputs and so independent of the summation order. An average pool keeps a
    channels-last input's layout; every other op takes the IR's."""
    if x.nhwc and n.op == "avgpool" and not x.static and x.data.dtype != np.float64:
        flat = x.data.reshape(T * x.data.shape[1], *x.data.shape[2:])
        y = _avgpool32(flat, n, nhwc=True)
        return Value(y.reshape(T, x.data.shape[1], *y.shape[1:]), False, True)
    x = nchw(x)
    if x.static and has_trait(n.op, Trait.WEIGHTED):
        # computed once from the input: float64 in a fixed summation order (exact products),
        # so the current is the same on every CPU and for every batch size; a convolution's
        # current stays channels last (the IF scan and the next packed layer read it so)
        from bsnnc.runtime.bitkernels import matmul_fixed_order_fast as fast

        if n.op == "dense":
            return Value(K.dense(x.data, consts[0], fixed_order=True, matmul=fast), True)
        return Value(_conv64(x.data, consts[0], n, fixed=fast), True, True)
    if x.static:
        return Value(ANN_KERNELS[n.op]([x.data, *consts], n.attrs), True)
    flat = x.data.reshape(T * x.data.shape[1], *x.data.shape[2:])
    if has_trait(n.op, Trait.WEIGHTED) and x.data.dtype == np.uint8:
        w = consts[0].astype(np.float64)
        y = (
            K.dense(flat.astype(np.float64), w)
            if n.op == "dense"
            else _conv64(flat.astype(np.float64), w, n)
        )
    elif n.op == "avgpool" and flat.dtype != np.float64:
        y = _avgpool32(flat, n)
    elif has_trait(n.op, Trait.AFFINE) and flat.dtype != np.float32:
        # spikes or integer currents of a merge branch times a dyadic factor: exact in float64
        y = ANN_KERNELS[n.op]([flat.astype(np.float64), *consts], n.attrs)
    else:
        y = ANN_KERNELS[n.op]([flat, *consts], n.attrs)
    return Value(y.reshape(T, x.data.shape[1], *y.shape[1:]), False)


def merge(a: Value, b: Value, T: int) -> Value:
    """``a + b`` of a residual merge, in float64 (integer currents plus dyadic multiples of
    spikes: exact), over T steps unless both are static."""
    a, b = nchw(a), nchw(b)
    if a.static and b.static:
        return Value(np.add(a.data, b.data, dtype=np.float64), True)
    x = a.data[None] if a.static else a.data
    y = b.data[None] if b.static else b.data
    return Value(np.add(x, y, dtype=np.float64), False)


def concat(a: Value, b: Value) -> Value:
    """``[a, b]`` along the channels (spikes stay uint8); a static operand is repeated over the
    steps of the other."""
    a, b = nchw(a), nchw(b)
    if a.static == b.static:
        return Value(np.concatenate([a.data, b.data], axis=1 if a.static else 2), a.static)
    steps = (b if a.static else a).data.shape[0]
    x = np.broadcast_to(a.data, (steps, *a.data.shape)) if a.static else a.data
    y = np.broadcast_to(b.data, (steps, *b.data.shape)) if b.static else b.data
    return Value(np.concatenate([x, y], axis=2), False)


def _avgpool32(x: np.ndarray, n: Node, nhwc: bool = False) -> np.ndarray:
    """The float32 average pool of the reference kernels, in one compiled pass."""
    from bsnnc.runtime.bitkernels import avgpool_fast

    k, st, p = attr_ints(n.attrs, "kernel"), attr_ints(n.attrs, "stride"), attr_ints(n.attrs, "pad")
    return avgpool_fast(
        x, (k[0], k[1]), (st[0], st[1]), (p[0], p[1], p[2], p[3]),
        bool(n.attrs["ceil_mode"]), bool(n.attrs["count_include_pad"]), nhwc,
    )  # fmt: skip


def _conv64(x: np.ndarray, w: np.ndarray, n: Node, fixed: K.MatMul | None = None) -> np.ndarray:
    """The node's convolution: BLAS ([N, O, OH, OW]), or with ``fixed`` in float64 summed in
    a fixed order, channels last ([N, OH, OW, O])."""
    s, p, d = (
        attr_ints(n.attrs, "stride"),
        attr_ints(n.attrs, "pad"),
        attr_ints(n.attrs, "dilation"),
    )
    geometry = ((s[0], s[1]), (p[0], p[1], p[2], p[3]), (d[0], d[1]))
    if fixed is None:
        return K.conv2d(x, w, *geometry)
    return K.conv2d(x, w, *geometry, fixed_order=True, matmul=fixed, channels_last=True)
