"""numpy reference kernels (float32, NCHW). These define the semantics of the IR ops.

conv2d (cross-correlation, group 1)::

    y[n,o,i,j] = Σ_{c,u,v} x_pad[n, c, i·s_h + u·d_h, j·s_w + v·d_w] · w[o,c,u,v]

computed as matrix products over im2col patches (channels last, in chunks of images), either
with BLAS (float32 or float64; the summation order is BLAS's and may differ between CPUs and
batch sizes) or, with ``fixed_order=True``, in float64 as ``y = Σ_k x_k·w_k`` accumulated
strictly in k order (:func:`matmul_fixed_order`): every product of two float32 values is exact
in float64 and every addition is one IEEE rounding in a fixed order, so the result is the same
bit for bit on every CPU, batch size and thread count.
Pools use the same window geometry
(``bsnnc.ir.ops.window_out``); positions past the padded input that ``ceil_mode`` adds never
count, and ``count_include_pad`` decides whether explicit pads count in an average.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from bsnnc.ir.ops import window_out

Pads = tuple[int, int, int, int]
#: the patch matrix of a convolution is built for as many images as fit in this many bytes.
IM2COL_BYTES = 128 << 20
#: an image whose patch matrix is larger than this is done a block of output rows at a time
#: (VGG-15's 224×224×64 layer: 231 MB of float64 patches written and read back; in blocks
#: of 16 MB its convolution took 55 instead of 107 ms, 2026-12-03)
IM2COL_ROWS_BYTES = 16 << 20


def _out_hw(
    x: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int], pad: Pads, ceil: bool
) -> tuple[int, int]:
    oh = window_out(x.shape[2], k[0], s[0], d[0], pad[0], pad[2], ceil)
    ow = window_out(x.shape[3], k[1], s[1], d[1], pad[1], pad[3], ceil)
    return oh, ow


def _pad_to(x: np.ndarray, pad: Pads, need_h: int, need_w: int, fill: float) -> np.ndarray:
    """Pad with ``fill``: explicit pads before, and after up to ``need_h × need_w`` in total."""
    after_h = max(need_h - x.shape[2] - pad[0], pad[2])
    after_w = max(need_w - x.shape[3] - pad[1], pad[3])
    widths = ((0, 0), (0, 0), (pad[0], after_h), (pad[1], after_w))
    return np.pad(x, widths, constant_values=fill) if any(sum(p) for p in widths) else x


def _windows(
    xp: np.ndarray, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int], oh: int, ow: int
) -> Iterator[np.ndarray]:
    """Yield the strided slice of ``xp`` under each kernel offset (u, v)."""
    for u in range(k[0]):
        for v in range(k[1]):
            r0, c0 = u * d[0], v * d[1]
            yield xp[
                :, :, r0 : r0 + s[0] * (oh - 1) + 1 : s[0], c0 : c0 + s[1] * (ow - 1) + 1 : s[1]
            ]


#: a product in float64 summed in k order (:func:`matmul_fixed_order` or a compiled twin)
MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]


def matmul_fixed_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in float64, summed over k = 0, 1, … in that order for every output element:
    ``y = (((a₀·b₀) + a₁·b₁) + …)``. Elementwise IEEE operations in a fixed order: the result
    does not depend on the CPU, the BLAS kernel or the number of rows of ``a``."""
    a64, b64 = a.astype(np.float64, copy=False), b.astype(np.float64, copy=False)
    out = np.zeros((a.shape[0], b.shape[1]), np.float64)
    term = np.empty_like(out)
    for k in range(a.shape[1]):
        np.multiply(a64[:, k : k + 1], b64[k], out=term)
        out += term
    return out


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    pad: Pads,
    dilation: tuple[int, int],
    fixed_order: bool = False,
    matmul: MatMul = matmul_fixed_order,
    channels_last: bool = False,
) -> np.ndarray:
    """Cross-correlation of ``x`` [N,C,H,W] with ``w`` [O,C,kh,kw] via im2col + one GEMM
    (or, in float64 when ``fixed_order``, ``matmul``: :func:`matmul_fixed_order` or a kernel
    that computes the same bits); the result is [N,O,OH,OW], or with ``channels_last`` the
    same numbers as [N,OH,OW,O] (the GEMM's own layout, no transposed copy)."""
    kh, kw = w.shape[2], w.shape[3]
    oh, ow = _out_hw(x, (kh, kw), stride, dilation, pad, False)
    need_h, need_w = (
        (oh - 1) * stride[0] + (kh - 1) * dilation[0] + 1,
        (ow - 1) * stride[1] + (kw - 1) * dilation[1] + 1,
    )
    dtype = np.dtype(np.float64) if fixed_order else np.result_type(x.dtype, w.dtype)
    # channels last, so that every patch copy moves contiguous runs of C values
    xp = np.ascontiguousarray(_pad_to(x, pad, need_h, need_w, 0.0).transpose(0, 2, 3, 1), dtype)
    n, c, o = x.shape[0], x.shape[1], w.shape[0]
    # reordered in the weights' own (smaller) dtype, then converted: the same exact values
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, o).astype(dtype)
    out = np.empty((n, oh, ow, o) if channels_last else (n, o, oh, ow), dtype)
    row_bytes = ow * kh * kw * c * dtype.itemsize
    step = max(1, IM2COL_BYTES // max(oh * row_bytes, 1))
    block = oh if oh * row_bytes <= IM2COL_ROWS_BYTES else max(1, IM2COL_ROWS_BYTES // row_bytes)
    for s in range(0, n, step):
        xs = xp[s : s + step]
        for i0 in range(0, oh, block):
            i1 = min(oh, i0 + block)
            cols = np.empty((xs.shape[0], i1 - i0, ow, kh, kw, c), dtype)
            for u in range(kh):
                for v in range(kw):
                    r0, c0 = u * dilation[0] + i0 * stride[0], v * dilation[1]
                    rows = slice(r0, r0 + stride[0] * (i1 - i0 - 1) + 1, stride[0])
                    cs = slice(c0, c0 + stride[1] * (ow - 1) + 1, stride[1])
                    cols[:, :, :, u, v, :] = xs[:, rows, cs, :]
            a = cols.reshape(-1, kh * kw * c)
            y = matmul(a, wm) if fixed_order else a @ wm
            y4 = y.reshape(xs.shape[0], i1 - i0, ow, o)
            if channels_last:
                out[s : s + step, i0:i1] = y4
            else:
                out[s : s + step, :, i0:i1] = y4.transpose(0, 3, 1, 2)
    return out


def dense(
    x: np.ndarray, w: np.ndarray, fixed_order: bool = False, matmul: MatMul = matmul_fixed_order
) -> np.ndarray:
    """``y = x · Wᵀ`` with ``W`` [out, in], in the dtype of ``x`` (float32 or float64), or in
    float64 with :func:`matmul_fixed_order` when ``fixed_order``.

    Weights stored in another dtype (int8 signs) are converted a block of output rows at a
    time, so a large layer's weights are never copied whole."""
    if fixed_order:
        return matmul(x, w.T)
    dtype = np.result_type(x.dtype, np.float32)
    if w.dtype == dtype:
        return np.asarray(x @ w.T)
    out = np.empty((x.shape[0], w.shape[0]), dtype)
    step = max(1, (32 << 20) // max(w.shape[1] * dtype.itemsize, 1))
    for s in range(0, w.shape[0], step):
        out[:, s : s + step] = x @ w[s : s + step].astype(dtype).T
    return out


def maxpool(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: Pads,
    dilation: tuple[int, int],
    ceil_mode: bool,
) -> np.ndarray:
    """Max over each window; padding never wins (it is −∞, or 0 for 0/1 spikes)."""
    oh, ow = _out_hw(x, kernel, stride, dilation, pad, ceil_mode)
    need_h = (oh - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1
    need_w = (ow - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1
    fill = float(np.iinfo(x.dtype).min) if np.issubdtype(x.dtype, np.integer) else -np.inf
    xp = _pad_to(x, pad, need_h, need_w, fill)
    out: np.ndarray | None = None
    for win in _windows(xp, kernel, stride, dilation, oh, ow):
        out = win.copy() if out is None else np.maximum(out, win)
    assert out is not None
    return out


def avgpool(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: Pads,
    ceil_mode: bool,
    count_include_pad: bool,
    dtype: type[np.floating] = np.float32,
) -> np.ndarray:
    """Mean over each window: Σ x / (#positions counted), see the module docstring; the sum
    runs over the window's positions in a fixed order, in ``dtype``."""
    oh, ow = _out_hw(x, kernel, stride, (1, 1), pad, ceil_mode)
    need_h, need_w = (oh - 1) * stride[0] + kernel[0], (ow - 1) * stride[1] + kernel[1]
    xp = _pad_to(x.astype(dtype, copy=False), pad, need_h, need_w, 0.0)
    mask = np.zeros((1, 1, *xp.shape[2:]), dtype=dtype)
    if count_include_pad:
        mask[:, :, : x.shape[2] + pad[0] + pad[2], : x.shape[3] + pad[1] + pad[3]] = 1.0
    else:
        mask[:, :, pad[0] : pad[0] + x.shape[2], pad[1] : pad[1] + x.shape[3]] = 1.0
    total = np.zeros((x.shape[0], x.shape[1], oh, ow), dtype=dtype)
    count = np.zeros((1, 1, oh, ow), dtype=dtype)
    for win, m in zip(
        _windows(xp, kernel, stride, (1, 1), oh, ow),
        _windows(mask, kernel, stride, (1, 1), oh, ow),
        strict=True,
    ):
        total += win
        count += m
    return total / count


def global_avgpool(x: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """Mean over H and W, keeping them as size-1 axes, in ``dtype``."""
    return np.asarray(x.astype(dtype, copy=False).mean(axis=(2, 3), keepdims=True), dtype=dtype)


def channel_broadcast(p: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """Reshape a per-channel vector [C] to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis] = p.shape[0]
    return p.reshape(shape)
