"""Winograd F(4×4, 3×3) convolution in float64: the calibration ANN's 3×3 layers.

Calibration runs the ANN in float64 (:mod:`bsnnc.compiler.calibrate`); VGG-style networks
spend nearly all of it in 3×3, stride-1 convolutions. Winograd's minimal filtering computes
each 4×4 block of outputs of one channel pair from a 6×6 block of input with 36 instead of
144 multiplications (Lavin & Gray 2016, points 0, ±1, ±2, ∞)::

    Y = Aᵀ [ Σ_c (G g_{o,c} Gᵀ) ⊙ (Bᵀ d_c B) ] A

with the 6×6 input tile ``d_c`` of channel c, the 3×3 filter ``g_{o,c}`` and the matrices
below. Summed over the channels, the ⊙ becomes 36 independent matrix products
``M_ξν = V_ξν · U_ξν`` ([tiles, C] by [C, O]), done by BLAS; the input transform (``V``, a
gather of overlapping 6×6 tiles) and the output transform run here, compiled with numba, in
parallel over tiles, in a fixed order per tile.

Exactness: the result is the same linear map as the direct convolution, rounded differently:
float64 with an error of ~1e-14 of the output's scale (measured 0.8–2.3e-14 on VGG-15's
shapes; the transforms' coefficients are at most 8 and their sums short), a hundred times the
difference between two BLAS kernels' summation orders. Calibration rounds its λ to float32
(grid ~6e-8 relative), which absorbs both (:mod:`bsnnc.compiler.calibrate`).

Threads: one per CPU the process may run on (``os.sched_getaffinity``), each taking a share
of the tile rows in the transforms and of the 36 products, with OpenBLAS on one thread
meanwhile (numba's and OpenBLAS's own pools spin after their parallel regions and slowed each
other by 40 %). Every tile and product is computed the same way whatever the thread count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import numba
import numpy as np

from bsnnc.runtime.threads import blas_single_threaded

F = TypeVar("F", bound=Callable[..., Any])

#: Bᵀ (6×6): the input transform
BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float64,
)
#: G (6×3): the filter transform
G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float64,
)
#: Aᵀ (4×6): the output transform
AT = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    np.float64,
)
#: the input and output tiles of F(4×4, 3×3)
TILE_IN, TILE_OUT = 6, 4
#: tiles per block: the transformed input and the products of a block stay near this many
#: bytes…
BLOCK_BYTES = 16 << 20
#: …unless that is fewer tiles than this (the products' rows; VGG-15's 512-channel layers at
#: 14 × 14 then take ~38 MB)
MIN_TILES = 128


def _jit(f: F) -> F:
    """numba's ``njit``, cached, releasing the GIL (the caller's threads run it in parallel),
    with a type mypy can follow."""
    return cast(F, numba.njit(cache=True, boundscheck=False, nogil=True, error_model="numpy")(f))


@_jit
def _filter_transform(w: np.ndarray, g: np.ndarray, u: np.ndarray) -> None:
    """``u[6ξ + ν, c, o] = (G w[c, :, :, o] Gᵀ)[ξ, ν]`` from the filters ``w`` [C, 3, 3, O]:
    G down the filter's columns, then across, each a loop over the output channels."""
    c_n, o_n = w.shape[0], w.shape[3]
    t = np.empty((6, 3, o_n))
    for c in range(c_n):
        for xi in range(6):
            g0, g1, g2 = g[xi, 0], g[xi, 1], g[xi, 2]
            for j in range(3):
                for o in range(o_n):
                    t[xi, j, o] = g0 * w[c, 0, j, o] + g1 * w[c, 1, j, o] + g2 * w[c, 2, j, o]
        for xi in range(6):
            for nu in range(6):
                g0, g1, g2 = g[nu, 0], g[nu, 1], g[nu, 2]
                for o in range(o_n):
                    u[6 * xi + nu, c, o] = g0 * t[xi, 0, o] + g1 * t[xi, 1, o] + g2 * t[xi, 2, o]


def filter_transform(w: np.ndarray) -> np.ndarray:
    """``U_ξν = (G g Gᵀ)_ξν`` for every filter: [O, C, 3, 3] → [36, C, O] float64 (no
    temporaries beyond the result: VGG's 512×512 layers have 75 MB of it)."""
    u = np.empty((TILE_IN * TILE_IN, w.shape[1], w.shape[0]))
    _filter_transform(np.ascontiguousarray(w.transpose(1, 2, 3, 0), np.float64), G, u)
    return u


@_jit
def _input_transform(
    x: np.ndarray,
    top: int,
    left: int,
    th: int,
    tw: int,
    rows: tuple[int, int, int],
    v: np.ndarray,
) -> None:
    """``V[:, t, :] = Bᵀ d_t B`` for the tile rows r0 ≤ r < r1 of ``rows`` = (b0, r0, r1)
    (r = n·th + ty; tile t = (r − b0)·tw + tx in the block starting at row b0) of ``x``
    [N, C, H, W] padded by ``top``/``left`` zeros (and zeros past its end). Per tile row:
    its 6 input rows reordered channels last in a local buffer (in cache), Bᵀ down every
    column, then B across every tile, each a loop over the channels (vectorized)."""
    n_c, h, w = x.shape[1], x.shape[2], x.shape[3]
    wp = 4 * tw + 2
    b0, r0, r1 = rows
    for r in range(r0, r1):
        n, ty, rr = r // th, r % th, r - b0
        d = np.zeros((6, wp, n_c))
        for k in range(6):
            y = 4 * ty + k - top
            if 0 <= y < h:
                for c in range(n_c):
                    for xx in range(w):
                        d[k, xx + left, c] = x[n, c, y, xx]
        z = np.empty((6, wp, n_c))  # Bᵀ d
        for p in range(wp):
            for c in range(n_c):
                d0, d1, d2 = d[0, p, c], d[1, p, c], d[2, p, c]
                d3, d4, d5 = d[3, p, c], d[4, p, c], d[5, p, c]
                z[0, p, c] = 4.0 * d0 - 5.0 * d2 + d4
                z[1, p, c] = -4.0 * d1 - 4.0 * d2 + d3 + d4
                z[2, p, c] = 4.0 * d1 - 4.0 * d2 - d3 + d4
                z[3, p, c] = -2.0 * d1 - d2 + 2.0 * d3 + d4
                z[4, p, c] = 2.0 * d1 - d2 - 2.0 * d3 + d4
                z[5, p, c] = 4.0 * d1 - 5.0 * d3 + d5
        for i in range(6):
            for tx in range(tw):
                t, p = rr * tw + tx, 4 * tx
                for c in range(n_c):
                    d0, d1, d2 = z[i, p, c], z[i, p + 1, c], z[i, p + 2, c]
                    d3, d4, d5 = z[i, p + 3, c], z[i, p + 4, c], z[i, p + 5, c]
                    v[6 * i, t, c] = 4.0 * d0 - 5.0 * d2 + d4
                    v[6 * i + 1, t, c] = -4.0 * d1 - 4.0 * d2 + d3 + d4
                    v[6 * i + 2, t, c] = 4.0 * d1 - 4.0 * d2 - d3 + d4
                    v[6 * i + 3, t, c] = -2.0 * d1 - d2 + 2.0 * d3 + d4
                    v[6 * i + 4, t, c] = 2.0 * d1 - d2 - 2.0 * d3 + d4
                    v[6 * i + 5, t, c] = 4.0 * d1 - 5.0 * d3 + d5


@_jit
def _output_transform(
    m: np.ndarray, th: int, tw: int, rows: tuple[int, int, int], out: np.ndarray
) -> None:
    """``Y_t = Aᵀ M_t A`` for the tile rows r0 ≤ r < r1 of ``rows`` = (b0, r0, r1) of the
    block ``m`` [36, tiles, O] that starts at tile row b0, written into ``out``
    [N, O, OH, OW], cropped at its border. Per tile row: Aᵀ down and A across every tile
    into a local channels-last buffer (loops over the channels, vectorized), then that
    buffer reordered into the output's rows."""
    n_o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    b0, r0, r1 = rows
    for r in range(r0, r1):
        n, ty, rr = r // th, r % th, r - b0
        z = np.empty((4, 6, n_o))  # Aᵀ M of one tile
        y = np.empty((4, 4 * tw, n_o))
        for tx in range(tw):
            t = rr * tw + tx
            for j in range(6):
                for o in range(n_o):
                    m0, m1, m2 = m[j, t, o], m[6 + j, t, o], m[12 + j, t, o]
                    m3, m4, m5 = m[18 + j, t, o], m[24 + j, t, o], m[30 + j, t, o]
                    z[0, j, o] = m0 + m1 + m2 + m3 + m4
                    z[1, j, o] = m1 - m2 + 2.0 * m3 - 2.0 * m4
                    z[2, j, o] = m1 + m2 + 4.0 * m3 + 4.0 * m4
                    z[3, j, o] = m1 - m2 + 8.0 * m3 - 8.0 * m4 + m5
            for i in range(4):
                for o in range(n_o):
                    a0, a1, a2 = z[i, 0, o], z[i, 1, o], z[i, 2, o]
                    a3, a4, a5 = z[i, 3, o], z[i, 4, o], z[i, 5, o]
                    y[i, 4 * tx, o] = a0 + a1 + a2 + a3 + a4
                    y[i, 4 * tx + 1, o] = a1 - a2 + 2.0 * a3 - 2.0 * a4
                    y[i, 4 * tx + 2, o] = a1 + a2 + 4.0 * a3 + 4.0 * a4
                    y[i, 4 * tx + 3, o] = a1 - a2 + 8.0 * a3 - 8.0 * a4 + a5
        for i in range(min(4, oh - 4 * ty)):
            for o in range(n_o):
                for xx in range(ow):
                    out[n, o, 4 * ty + i, xx] = y[i, xx, o]


def conv3x3(x: np.ndarray, u: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """The 3×3, stride-1 cross-correlation of ``x`` [N, C, H, W] (float64) with the filters
    whose transform is ``u`` [36, C, O] (:func:`filter_transform`), padding ``pad`` (top,
    left, bottom, right) → [N, O, OH, OW] float64, a block of tile rows at a time:
    transformed input ``V`` [36, tiles, C], 36 products ``M_k = V_k · U_k`` [36, tiles, O],
    output transform."""
    n, c, h, w = x.shape
    o = u.shape[2]
    x = np.ascontiguousarray(x, np.float64)
    oh, ow = h + pad[0] + pad[2] - 2, w + pad[1] + pad[3] - 2
    th, tw = -(-oh // TILE_OUT), -(-ow // TILE_OUT)
    out = np.empty((n, o, oh, ow))
    if out.size == 0:
        return out
    per_row = TILE_IN * TILE_IN * tw * (c + o) * 8
    step = min(n * th, max(1, BLOCK_BYTES // per_row, -(-MIN_TILES // tw)))
    vb = mk = np.empty((0, 0, 0))
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    def block(job: int, b0: int, b1: int, part: str) -> None:
        """Thread ``job``'s share of one part of the block of tile rows b0 ≤ r < b1."""
        rows = (b0, b0 + (b1 - b0) * job // threads, b0 + (b1 - b0) * (job + 1) // threads)
        if part == "in":
            _input_transform(x, pad[0], pad[1], th, tw, rows, vb)
        elif part == "product":
            for k in range(job, TILE_IN * TILE_IN, threads):
                np.matmul(vb[k], u[k], out=mk[k])
        else:
            _output_transform(mk, th, tw, rows, out)

    jobs = range(threads)
    with blas_single_threaded(), ThreadPoolExecutor(threads) as pool:
        for b0 in range(0, n * th, step):
            b1 = min(n * th, b0 + step)
            tiles = (b1 - b0) * tw
            if tiles != vb.shape[1]:  # contiguous blocks: numba vectorizes them
                vb = np.empty((TILE_IN * TILE_IN, tiles, c))
                mk = np.empty((TILE_IN * TILE_IN, tiles, o))
            for part in ("in", "product", "out"):
                list(pool.map(block, jobs, [b0] * threads, [b1] * threads, [part] * threads))
    return out
