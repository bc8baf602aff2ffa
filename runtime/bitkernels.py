"""Exact spiking kernels compiled with numba: bit-packed binary products and the fused IF scan.

**Binary products.** A binary layer multiplies 0/1 spikes by ±1 weights. With the spikes of
one input position packed 64 channels to a word (channels last) and the weights' signs packed
the same way (a bit per +1 weight), each 64-term slice of a dot product is

    Σ_c s_c·w_c = 2·popcount(s ∧ w⁺) − popcount(s),

one AND and one popcount for 64 multiply-accumulates. A convolution sums this over the
``kh·kw`` kernel offsets and the channel words of its receptive field; a dense layer is the
1×1 case. Every term is an integer, so the result is exact whatever the order, the number of
threads or the CPU, and equals the float reference bit for bit. Two refinements cost nothing
in exactness: a word with no spike adds nothing and is skipped (whole silent patches cost only
the popcount of their row), and the sum over output channels is vectorized (a word of spikes
against one word of weights per channel, contiguous in memory, int32 sums). Outputs are
channels last, [B, OH, OW, O]: each position's outputs are one contiguous run (writing them
in the IR's [B, O, OH, OW] order had made the first VGG-15 layer 6× slower).

**IF scan.** ``v ← v + z[t]; s[t] = (v ≥ θ); v ← v − θ·s[t]`` (subtract) or ``v ← 0`` where
``s[t]`` (zero), in float64, exactly the operations of :func:`bsnnc.runtime.snn.if_scan` in the
same order per neuron, so the spikes and membranes are the same bits; neurons are independent,
so the scan runs in parallel over them with time as the inner loop of each block, and counts
the spikes per step and per neuron as it goes. A binary convolution whose only reader is an IF
layer runs fused with it (:func:`_conv_fire`): per output row, the steps in order, each
step's currents integrated as soon as they are summed, so they never leave the cache (the same
operations per neuron; 10–30 % faster than the two passes on VGG-15's layer shapes).

**Other passes**, each the same bits as its numpy definition: the average pool in float32
(:func:`bsnnc.runtime.kernels.avgpool`), the crossbar's blocked product with the ADC's clip
(:class:`bsnnc.runtime.intkernels.BlockedSpikeMatMul`) and the fixed-order float64 product of
the first layer (:func:`bsnnc.runtime.kernels.matmul_fixed_order`).

numba compiles the kernels on first use and caches them next to this file (``__pycache__``);
the module is imported only when a spiking graph runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from bsnnc.ir.ops import window_out

F = TypeVar("F", bound=Callable[..., Any])


def _jit(parallel: bool) -> Callable[[F], F]:
    """numba's ``njit`` with a type that mypy can follow."""
    return cast(
        Callable[[F], F],
        numba.njit(
            parallel=parallel, cache=True, boundscheck=False, nogil=True, error_model="numpy"
        ),
    )


@intrinsic
def _ctpop(typingctx: Any, x: Any) -> Any:
    """``llvm.ctpop.i64``: one ``popcnt`` (or ``vpopcntq`` lane once vectorized)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, [args[0]])

    return sig, codegen


#: the intrinsic as numba code calls it (``_popcount(x)`` on a uint64)
_popcount = cast(Callable[[Any], Any], _ctpop)


@_jit(parallel=True)
def _pack(s: np.ndarray, nhwc: bool, top: int, left: int, hp: int, wp: int) -> np.ndarray:
    """Spikes ``s`` (0/1), [B, C, H, W] or with ``nhwc`` [B, H, W, C] → words [B, hp, wp,
    ⌈C/64⌉] uint64, channels last: bit ``c mod 64`` of word ``c // 64`` at (y + top,
    x + left); the border stays 0."""
    if nhwc:
        b_n, h_n, w_n, c_n = s.shape
    else:
        b_n, c_n, h_n, w_n = s.shape
    words = (c_n + 63) // 64
    out = np.zeros((b_n, hp, wp, words), np.uint64)
    for by in prange(b_n * h_n):
        b, y = by // h_n, by % h_n
        row = np.empty(w_n, np.uint64)
        for k in range(words):
            row[:] = 0
            if nhwc:
                for x in range(w_n):
                    word = np.uint64(0)
                    for c in range(k * 64, min(c_n, k * 64 + 64)):
                        word |= np.uint64(s[b, y, x, c] != 0) << np.uint64(c - k * 64)
                    row[x] = word
            else:
                for c in range(k * 64, min(c_n, k * 64 + 64)):
                    bit = np.uint64(c - k * 64)
                    for x in range(w_n):
                        row[x] |= np.uint64(s[b, c, y, x] != 0) << bit
            for x in range(w_n):
                out[b, y + top, x + left, k] = row[x]
    return out


@_jit(parallel=False)
def _gather(p: np.ndarray, b: int, i: int, j: int, geom: np.ndarray, q: np.ndarray) -> np.int64:
    """The receptive field of output (i, j) of image b: its words into ``q`` in (u, v, word)
    order; returns their spike count. ``geom`` = (kh, kw, sh, sw, dh, dw)."""
    kh, kw, sh, sw, dh, dw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    words = p.shape[3]
    k = 0
    ones = np.int64(0)
    for u in range(kh):
        for v in range(kw):
            for w in range(words):
                x = p[b, i * sh + u * dh, j * sw + v * dw, w]
                q[k] = x
                ones += np.int64(_popcount(x))
                k += 1
    return ones


@_jit(parallel=False)
def _accumulate(
    q: np.ndarray, k0: int, k1: int, wt: np.ndarray, row: int, part: np.ndarray
) -> None:
    """``part[o] += Σ_{k0 ≤ k < k1} popcount(q[k] ∧ wt[row + k − k0, o])``, silent words
    skipped; vectorized over o."""
    for k in range(k0, k1):
        x = q[k]
        if x != 0:
            r = row + k - k0
            for o in range(part.shape[0]):
                part[o] += np.int32(_popcount(x & wt[r, o]))


@_jit(parallel=True)
def _conv(p: np.ndarray, wt: np.ndarray, geom: np.ndarray, out: np.ndarray) -> None:
    """``out[b, i, j, o] = Σ_{u,v,k} 2·popcount(p[b, i·sh+u·dh, j·sw+v·dw, k] ∧ wt[(u,v,k), o])
    − popcount(p[…])`` for packed spikes ``p`` [B, Hp, Wp, words], packed +1 masks ``wt``
    [kh·kw·words, O] and ``geom`` = (kh, kw, sh, sw, dh, dw); ``out`` [B, OH, OW, O] float32
    (exact integers), channels last so that each position's outputs are one contiguous run;
    int32 sums (a layer has far fewer than 2^31 inputs)."""
    b_n, oh, ow, o_n = out.shape
    k_n = wt.shape[0]
    for bi in prange(b_n * oh):
        b, i = bi // oh, bi % oh
        q = np.empty(k_n, np.uint64)
        acc = np.empty(o_n, np.int32)
        for j in range(ow):
            ones = _gather(p, b, i, j, geom, q)
            acc[:] = 0
            if ones != 0:
                _accumulate(q, 0, k_n, wt, 0, acc)
            for o in range(o_n):
                out[b, i, j, o] = np.float32(2 * np.int64(acc[o]) - ones)


def _geometry(
    kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> np.ndarray:
    return np.array([*kernel, *stride, *dilation], np.int64)


def _packed_input(
    s: np.ndarray,
    nhwc: bool,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> tuple[np.ndarray, int, int]:
    """Spikes [B, C, H, W] (or [B, H, W, C] with ``nhwc``) → (padded packed words, OH, OW) of
    a convolution's input."""
    (sh, sw), (dh, dw), (t, left, b, r) = stride, dilation, pad
    height, width = (s.shape[1], s.shape[2]) if nhwc else (s.shape[2], s.shape[3])
    h, w = height + t + b, width + left + r
    oh = (h - (kernel[0] - 1) * dh - 1) // sh + 1
    ow = (w - (kernel[1] - 1) * dw - 1) // sw + 1
    return _pack(np.ascontiguousarray(s, np.uint8), nhwc, t, left, h, w), oh, ow


@_jit(parallel=True)
def _pack_weights(w: np.ndarray, out: np.ndarray) -> None:
    """``out[(u·kw + v)·words + k, o]`` bit ``c − 64k`` = ``w[o, c, u, v] > 0``."""
    o_n, c_n, kh, kw = w.shape
    words = (c_n + 63) // 64
    for o in prange(o_n):
        for u in range(kh):
            for v in range(kw):
                for k in range(words):
                    word = np.uint64(0)
                    for c in range(k * 64, min(c_n, k * 64 + 64)):
                        word |= np.uint64(w[o, c, u, v] > 0) << np.uint64(c - k * 64)
                    out[(u * kw + v) * words + k, o] = word


def pack_weights(w: np.ndarray) -> np.ndarray:
    """±1 weights [O, C, kh, kw] (or [O, C]) → the +1 masks [kh·kw·⌈C/64⌉, O] uint64, in the
    order of :func:`_conv`'s receptive-field words (offset u, offset v, channel word)."""
    w4 = w.reshape(*w.shape, 1, 1) if w.ndim == 2 else w
    o_n, c_n, kh, kw = w4.shape
    out = np.empty((kh * kw * ((c_n + 63) // 64), o_n), np.uint64)
    _pack_weights(np.ascontiguousarray(w4), out)
    return out


class PackedConv:
    """``conv2d(spikes, ±1)`` over a uint8 batch [B, C, H, W] (or [B, H, W, C]) → float32
    exact integers [B, OH, OW, O], channels last, by AND-popcount over bit-packed words (see
    the module docstring)."""

    def __init__(
        self,
        w: np.ndarray,
        stride: tuple[int, int],
        pad: tuple[int, int, int, int],
        dilation: tuple[int, int],
    ) -> None:
        self.o, self.kernel = w.shape[0], (w.shape[2], w.shape[3])
        self.stride, self.pad, self.dilation = stride, pad, dilation
        self.wt = pack_weights(w)

    def __call__(self, s: np.ndarray, nhwc: bool = False) -> np.ndarray:
        p, oh, ow = _packed_input(s, nhwc, self.kernel, self.stride, self.pad, self.dilation)
        out = np.empty((s.shape[0], oh, ow, self.o), np.float32)
        _conv(p, self.wt, _geometry(self.kernel, self.stride, self.dilation), out)
        return out

    def fire(
        self, s: np.ndarray, nhwc: bool, theta: np.ndarray, subtract: bool, v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The convolution of spikes ``s`` [steps, N, …] (either layout) fused with the IF
        layer that reads it (:func:`_conv_fire`): ``theta`` one value or one per output
        channel, membranes ``v`` [N, OH, OW, O] float64 (updated). Returns the spikes
        [steps, N, OH, OW, O] uint8, their count per step and image [steps, N] int64 and per
        image and neuron in the IR's order [N, O·OH·OW] int32 — what :func:`if_scan_fast`
        returns for the convolution's output."""
        steps, n = s.shape[0], s.shape[1]
        flat = s.reshape(steps * n, *s.shape[2:])
        p, oh, ow = _packed_input(flat, nhwc, self.kernel, self.stride, self.pad, self.dilation)
        assert v.shape == (n, oh, ow, self.o)
        th = np.ascontiguousarray(np.broadcast_to(np.asarray(theta, np.float64), (self.o,)))
        out = np.empty((steps, n, oh, ow, self.o), np.uint8)
        partial = np.empty((n * oh, steps), np.int64)
        per_neuron = np.empty((n, self.o * oh * ow), np.int32)
        geometry = _geometry(self.kernel, self.stride, self.dilation)
        _conv_fire(p, self.wt, geometry, th, subtract, v, out, partial, per_neuron)
        per_step = partial.reshape(n, oh, steps).sum(axis=1).T
        return out, np.ascontiguousarray(per_step), per_neuron


@_jit(parallel=True)
def _conv_fire(
    p: np.ndarray,
    wt: np.ndarray,
    geom: np.ndarray,
    theta: np.ndarray,
    subtract: bool,
    v: np.ndarray,
    out: np.ndarray,
    partial: np.ndarray,
    per_neuron: np.ndarray,
) -> None:
    """:func:`_conv` with the IF layer that reads it fused in: for each image n and output
    row i, steps t = 0, 1, … in order, the row's currents ``z = 2·popcount(q ∧ w⁺) −
    popcount(q)`` (float32, exact) are integrated into the membranes ``v`` [N, OH, OW, O]
    float64 as :func:`_if_scan` does (``x = v + z; fired = x ≥ θ[o]``; then ``x − θ`` or 0),
    so the currents never leave the cache. ``p`` holds the packed input of step t, image n at
    ``t·N + n``; spikes go to ``out`` [steps, N, OH, OW, O], spike counts per row and step to
    ``partial`` [N·OH, steps] and per neuron, in the IR's [N, O, OH, OW] order, to
    ``per_neuron`` [N, O·OH·OW]."""
    steps, n_n, oh, ow, o_n = out.shape
    k_n = wt.shape[0]
    for ni in prange(n_n * oh):
        n, i = ni // oh, ni % oh
        q = np.empty(k_n, np.uint64)
        acc = np.empty(o_n, np.int32)
        count = np.zeros((ow, o_n), np.int32)
        for t in range(steps):
            total = 0
            for j in range(ow):
                ones = _gather(p, t * n_n + n, i, j, geom, q)
                acc[:] = 0
                if ones != 0:
                    _accumulate(q, 0, k_n, wt, 0, acc)
                if subtract:
                    for o in range(o_n):
                        x = v[n, i, j, o] + np.float64(np.float32(2 * np.int64(acc[o]) - ones))
                        fired = x >= theta[o]
                        v[n, i, j, o] = x - (theta[o] if fired else 0.0)
                        out[t, n, i, j, o] = fired
                        count[j, o] += fired
                        total += fired
                else:
                    for o in range(o_n):
                        x = v[n, i, j, o] + np.float64(np.float32(2 * np.int64(acc[o]) - ones))
                        fired = x >= theta[o]
                        v[n, i, j, o] = 0.0 if fired else x
                        out[t, n, i, j, o] = fired
                        count[j, o] += fired
                        total += fired
            partial[ni, t] = total
        for j in range(ow):
            for o in range(o_n):
                per_neuron[n, (o * oh + i) * ow + j] = count[j, o]


class PackedDense:
    """``spikes [B, K] · Wᵀ`` with W [N, K] ±1 → float32 exact integers [B, N] (the 1×1 case
    of :class:`PackedConv`)."""

    def __init__(self, w: np.ndarray) -> None:
        self.n = w.shape[0]
        self.wt = pack_weights(w)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        s4 = np.ascontiguousarray(s, np.uint8).reshape(s.shape[0], 1, 1, s.shape[1])
        out = np.empty((s.shape[0], 1, 1, self.n), np.float32)
        _conv(_pack(s4, True, 0, 0, 1, 1), self.wt, _geometry((1, 1), (1, 1), (1, 1)), out)
        return out.reshape(s.shape[0], self.n)


@_jit(parallel=True)
def _if_scan(
    z: np.ndarray,
    theta: np.ndarray,
    inner: int,
    subtract: bool,
    v: np.ndarray,
    out: np.ndarray,
    per_step: np.ndarray,
    per_neuron: np.ndarray,
    last: int,
) -> None:
    """The IF scan over ``steps`` = ``out.shape[0]`` steps for N images of P neurons: ``z``
    [Tz, N, P] (Tz = 1: the same current every step), ``theta`` [C] with neuron p in channel
    ``(p // inner) % C``, membranes ``v`` [N, P] float64 (updated), spikes ``out`` [steps, N,
    P] uint8, and their counts: ``per_step`` [steps, N] (over neurons) and ``per_neuron``
    [N, P] (over steps) — with ``last`` > 0 the neurons are channels last, [positions, last],
    and ``per_neuron`` is written channels first (neuron p at ``(p % last)·(P / last) +
    p // last``: the IR's order, which the spike digest hashes). Parallel over blocks of one
    image's neurons; within a block the
    membranes stay in a local buffer, each step is one branch-free pass over the block (one
    loop per reset mode, so that it vectorizes), and ``x − (θ if fired else 0)`` is ``x`` bit
    for bit when the neuron does not fire."""
    steps = out.shape[0]
    n_n, p_n = v.shape
    c_n = theta.shape[0]
    static = z.shape[0] == 1
    block = 1024
    blocks = (p_n + block - 1) // block
    partial = np.zeros((n_n * blocks, steps), np.int64)
    for job in prange(n_n * blocks):
        n, p0 = job // blocks, (job % blocks) * block
        m = min(p_n, p0 + block) - p0
        th = np.empty(m, np.float64)
        vv = np.empty(m, np.float64)
        for p in range(m):
            th[p] = theta[((p0 + p) // inner) % c_n]
            vv[p] = v[n, p0 + p]
        count = np.zeros(m, np.int32)
        for t in range(steps):
            zrow = z[0 if static else t, n, p0 : p0 + m]
            orow = out[t, n, p0 : p0 + m]
            total = 0
            if subtract:
                for p in range(m):
                    x = vv[p] + np.float64(zrow[p])
                    fired = x >= th[p]
                    vv[p] = x - (th[p] if fired else 0.0)
                    orow[p] = fired
                    count[p] += fired
                    total += fired
            else:
                for p in range(m):
                    x = vv[p] + np.float64(zrow[p])
                    fired = x >= th[p]
                    vv[p] = 0.0 if fired else x
                    orow[p] = fired
                    count[p] += fired
                    total += fired
            partial[job, t] = total
        positions = p_n // last if last > 0 else 0
        for p in range(m):
            q = p0 + p
            if last > 0:
                q = (q % last) * positions + q // last
            per_neuron[n, q] = count[p]
            v[n, p0 + p] = vv[p]
    for n in range(n_n):
        for t in range(steps):
            per_step[t, n] = partial[n * blocks : (n + 1) * blocks, t].sum()


def if_scan_fast(
    z: np.ndarray, static: bool, theta: np.ndarray, inner: int, subtract: bool, steps: int,
    v: np.ndarray, channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """The IF scan of :func:`_if_scan` for currents ``z`` ([steps, N, ...], or [N, ...] when
    ``static``) from membranes ``v`` [N, ...] float64 (updated in place); ``theta`` [C] per
    channel, the channel of neuron p of an image (flat index) is (p // inner) mod C. Returns
    the spikes [steps, N, ...] uint8, their count per step and image [steps, N] int64 and per
    image and neuron [N, neurons] int32 — with ``channels_last`` (``v`` [N, H, W, C], one θ
    per channel) the per-neuron counts are in [N, C, H, W] order."""
    n = v.shape[0]
    zf = z.reshape(1 if static else steps, n, -1)
    flat_v = v.reshape(n, -1)
    assert np.shares_memory(flat_v, v)
    out = np.empty((steps, *v.shape), np.uint8)
    per_step = np.empty((steps, n), np.int64)
    per_neuron = np.empty(flat_v.shape, np.int32)
    last = v.shape[-1] if channels_last else 0
    _if_scan(
        zf, theta, inner, subtract, flat_v, out.reshape(steps, n, -1), per_step, per_neuron, last
    )
    return out, per_step, per_neuron


@_jit(parallel=True)
def _blocked_conv(
    p: np.ndarray,
    wt: np.ndarray,
    whole: np.ndarray,
    masks: np.ndarray,
    spans: np.ndarray,
    geom: np.ndarray,
    clip: int,
    out: np.ndarray,
    driven: np.ndarray,
) -> None:
    """A crossbar layer split into row blocks: block j holds the receptive-field words
    ``spans[j, 0] .. spans[j, 1]`` (exclusive), stored at rows ``spans[j, 2] ..`` of ``wt``
    (its +1 masks, bits outside the block cleared) and ``masks`` (the block's rows). Per output
    position: ``driven[pos, j]`` = the block's input spikes; the block's partial sum
    ``2·popcount(q ∧ wt) − driven`` is clipped to ±``clip`` (the ADC) and the partial sums are
    added in block order into ``out`` [B, OH, OW, O] float32. Without a clip (clip < 0) the
    sum of the blocks' partial sums is the whole product, computed in one pass over the
    unsplit masks ``whole`` [words, O] as :func:`_conv` does."""
    b_n, oh, ow, o_n = out.shape
    k_n = whole.shape[0]
    j_n = spans.shape[0]
    for bi in prange(b_n * oh):
        b, i = bi // oh, bi % oh
        q = np.empty(k_n, np.uint64)
        acc = np.empty(o_n, np.int64)
        part = np.empty(o_n, np.int32)
        for j in range(ow):
            total = _gather(p, b, i, j, geom, q)
            pos = (b * oh + i) * ow + j
            for blk in range(j_n):
                k0, k1, row = spans[blk, 0], spans[blk, 1], spans[blk, 2]
                ones = np.int64(0)
                for k in range(k0, k1):
                    ones += np.int64(_popcount(q[k] & masks[row + k - k0]))
                driven[pos, blk] = ones
            if clip < 0:
                part[:] = 0
                if total != 0:
                    _accumulate(q, 0, k_n, whole, 0, part)
                for o in range(o_n):
                    out[b, i, j, o] = np.float32(2 * np.int64(part[o]) - total)
                continue
            acc[:] = 0
            for blk in range(j_n):
                k0, k1, row = spans[blk, 0], spans[blk, 1], spans[blk, 2]
                ones = np.int64(driven[pos, blk])
                part[:] = 0
                if ones != 0:
                    _accumulate(q, k0, k1, wt, row, part)
                for o in range(o_n):
                    acc[o] += min(max(2 * np.int64(part[o]) - ones, -clip), clip)
            for o in range(o_n):
                out[b, i, j, o] = np.float32(acc[o])


class PackedBlockedConv:
    """One crossbar layer with its rows split into blocks (one per array row range), exact
    for ±1 cells: ``w`` [K, N] int8 in im2col order (kernel offset u, offset v, channel c:
    row k = (u·kw + v)·C + c; a dense layer is the 1×1 case with C = K), ``bounds`` the row
    ranges. Returns the sum of the (optionally clipped) block partial sums, [B, OH, OW, N]
    float32, channels last (or [B, N] for dense), and the driven rows per output position
    and block,
    [B·OH·OW, blocks] int32 — what :class:`bsnnc.runtime.intkernels.BlockedSpikeMatMul`
    computes from im2col rows, here from bit-packed words."""

    def __init__(
        self,
        w: np.ndarray,
        bounds: list[tuple[int, int]],
        channels: int,
        kernel: tuple[int, int],
        stride: tuple[int, int] = (1, 1),
        pad: tuple[int, int, int, int] = (0, 0, 0, 0),
        dilation: tuple[int, int] = (1, 1),
        clip: int | None = None,
        dense: bool = False,
    ) -> None:
        assert w.dtype == np.int8 and w.shape[0] == kernel[0] * kernel[1] * channels
        self.kh, self.kw = kernel
        self.stride, self.pad, self.dilation, self.dense = stride, pad, dilation, dense
        self.n, self.clip = w.shape[1], -1 if clip is None else clip
        cw = (channels + 63) // 64
        k = np.arange(w.shape[0])
        word = (k // channels) * cw + (k % channels) // 64
        bit = np.left_shift(np.uint64(1), ((k % channels) % 64).astype(np.uint64))
        spans, masks, wts = [], [], []
        row = 0
        for r0, r1 in bounds:
            k0, k1 = int(word[r0]), int(word[r1 - 1]) + 1
            m = np.zeros(k1 - k0, np.uint64)
            np.bitwise_or.at(m, word[r0:r1] - k0, bit[r0:r1])
            wt = np.zeros((k1 - k0, self.n), np.uint64)
            pos = w[r0:r1] > 0
            for kk in range(r0, r1):  # one row of cells at a time: O(K·N) once per layer
                wt[word[kk] - k0] |= np.where(pos[kk - r0], bit[kk], np.uint64(0))
            spans.append((k0, k1, row))
            masks.append(m)
            wts.append(wt)
            row += k1 - k0
        self.spans = np.array(spans, np.int64)
        self.masks = np.concatenate(masks)
        self.wt = np.concatenate(wts)
        self.whole = np.zeros((kernel[0] * kernel[1] * cw, self.n), np.uint64)
        for (k0, k1, _), wt in zip(spans, wts, strict=True):  # the blocks partition the rows
            self.whole[k0:k1] |= wt

    def __call__(self, s: np.ndarray, nhwc: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Spikes [B, C, H, W] (or [B, H, W, C] with ``nhwc``, or [B, K] dense) → (outputs,
        driven rows per block)."""
        s4 = s.reshape(s.shape[0], 1, 1, s.shape[1]) if self.dense else s
        nhwc = nhwc or self.dense
        kernel = (self.kh, self.kw)
        p, oh, ow = _packed_input(s4, nhwc, kernel, self.stride, self.pad, self.dilation)
        out = np.empty((s4.shape[0], oh, ow, self.n), np.float32)
        driven = np.empty((s4.shape[0] * oh * ow, len(self.spans)), np.int32)
        geom = _geometry(kernel, self.stride, self.dilation)
        _blocked_conv(p, self.wt, self.whole, self.masks, self.spans, geom, self.clip, out, driven)
        return (out.reshape(s4.shape[0], self.n) if self.dense else out), driven


@_jit(parallel=True)
def _step_counts(s: np.ndarray, per_step: np.ndarray) -> None:
    """``per_step[r] = Σ_p s[r, p]`` for spikes ``s`` [T·N, P] (0/1), in parallel over rows."""
    for r in prange(s.shape[0]):
        total = 0
        for p in range(s.shape[1]):
            total += s[r, p]
        per_step[r] = total


def step_counts(s: np.ndarray) -> np.ndarray:
    """Spikes [T, N, ...] → their count per step and image, [T, N] int64."""
    flat = np.ascontiguousarray(s, np.uint8).reshape(s.shape[0] * s.shape[1], -1)
    per_step = np.empty(flat.shape[0], np.int64)
    _step_counts(flat, per_step)
    return per_step.reshape(s.shape[0], s.shape[1])


@_jit(parallel=True)
def _avgpool(
    x: np.ndarray,
    nhwc: bool,
    kh: int,
    kw: int,
    sh: int,
    sw: int,
    pads: np.ndarray,
    include_pad: bool,
    out: np.ndarray,
) -> None:
    """``out[b, c, i, j] = (Σ_{u,v} x[b, c, i·sh+u−top, j·sw+v−left]) / count`` in float32 (in
    [B, H, W, C] layout with ``nhwc``), the sum over the window's input positions in (u, v)
    order (padding adds +0.0, which changes no sum that starts at +0.0), ``count`` = the
    window's positions inside the input, or inside input and explicit pads when
    ``include_pad``: :func:`bsnnc.runtime.kernels.avgpool` bit for bit. ``pads`` = (top,
    left, bottom, right)."""
    if nhwc:
        b_n, h_n, w_n, c_n = x.shape
        oh, ow = out.shape[1], out.shape[2]
    else:
        b_n, c_n, h_n, w_n = x.shape
        oh, ow = out.shape[2], out.shape[3]
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    lo_r, hi_r = (-top, h_n + bottom) if include_pad else (0, h_n)
    lo_c, hi_c = (-left, w_n + right) if include_pad else (0, w_n)
    for bi in prange(b_n * oh):
        b, i = bi // oh, bi % oh
        total = np.empty(c_n, np.float32)
        for j in range(ow):
            total[:] = 0.0
            count = np.float32(0.0)
            for u in range(kh):
                r = i * sh + u - top
                for v in range(kw):
                    q = j * sw + v - left
                    if 0 <= r < h_n and 0 <= q < w_n:
                        for c in range(c_n):
                            total[c] += np.float32(x[b, r, q, c] if nhwc else x[b, c, r, q])
                    if lo_r <= r < hi_r and lo_c <= q < hi_c:
                        count += np.float32(1.0)
            for c in range(c_n):
                if nhwc:
                    out[b, i, j, c] = total[c] / count
                else:
                    out[b, c, i, j] = total[c] / count


def avgpool_fast(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    ceil_mode: bool,
    count_include_pad: bool,
    nhwc: bool = False,
) -> np.ndarray:
    """:func:`bsnnc.runtime.kernels.avgpool` in float32 for [B, C, H, W] input (or, with
    ``nhwc``, [B, H, W, C] input and output), one pass."""
    h, w = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
    oh = window_out(h, kernel[0], stride[0], 1, pad[0], pad[2], ceil_mode)
    ow = window_out(w, kernel[1], stride[1], 1, pad[1], pad[3], ceil_mode)
    c = x.shape[3] if nhwc else x.shape[1]
    out = np.empty((x.shape[0], oh, ow, c) if nhwc else (x.shape[0], c, oh, ow), np.float32)
    _avgpool(np.ascontiguousarray(x), nhwc, kernel[0], kernel[1], stride[0], stride[1],
             np.array(pad, np.int64), count_include_pad, out)  # fmt: skip
    return out


@_jit(parallel=True)
def _matmul_fixed(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[m, n] = (((0 + a[m,0]·b[0,n]) + a[m,1]·b[1,n]) + …)`` in float64, k in order."""
    for m in prange(a.shape[0]):
        out[m, :] = 0.0
        for k in range(a.shape[1]):
            x = a[m, k]
            for n in range(b.shape[1]):
                out[m, n] += x * b[k, n]


def matmul_fixed_order_fast(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`bsnnc.runtime.kernels.matmul_fixed_order` compiled, the same bits: the same
    IEEE additions in the same order per output, and each product of float32 values is exact
    in float64 (so a fused multiply-add, where the compiler uses one, rounds the same)."""
    a64 = np.ascontiguousarray(a, np.float64)
    b64 = np.ascontiguousarray(b, np.float64)
    out = np.empty((a.shape[0], b.shape[1]), np.float64)
    _matmul_fixed(a64, b64, out)
    return out
