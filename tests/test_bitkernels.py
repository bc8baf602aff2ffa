"""The bit-packed kernels (runtime/bitkernels.py) against the definitions: binary
convolutions and dense layers equal the float64 reference convolution, the crossbar's blocked
product equals onnxruntime's blocked product on im2col rows (partial sums, ADC clipping and
driven-row counts), and the fused IF scan equals the numpy scan bit for bit (spikes and
membranes) — across channel counts that do and do not fill 64-bit words, strides, dilations,
asymmetric pads, row blocks that split words, and both resets."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import TIMING_KEYS

from bsnnc.runtime import kernels as K
from bsnnc.runtime.bitkernels import (
    PackedBlockedConv,
    PackedConv,
    PackedDense,
    avgpool_fast,
    if_scan_fast,
    pack_weights,
)
from bsnnc.runtime.intkernels import BlockedSpikeMatMul
from bsnnc.runtime.snn import Value, if_scan

GEOMETRIES = [
    # kernel, stride, pad (top, left, bottom, right), dilation
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 1), (1, 0, 2, 1), (1, 2)),
    ((2, 3), (3, 2), (0, 0, 0, 0), (2, 1)),
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
]


def _spikes(rng: np.random.Generator, shape: tuple[int, ...], rate: float) -> np.ndarray:
    return (rng.random(shape) < rate).astype(np.uint8)


def _signs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, 1, -1).astype(np.int8)


@pytest.mark.parametrize("channels", [1, 5, 63, 64, 65, 130])
@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
def test_packed_conv_equals_the_reference_convolution(channels: int, geometry: int) -> None:
    (kh, kw), stride, pad, dil = GEOMETRIES[geometry]
    rng = np.random.default_rng(channels * 10 + geometry)
    s = _spikes(rng, (7, channels, 9, 8), 0.3)
    s[0] = 0  # a silent image: every patch is skipped
    w = _signs(rng, (6, channels, kh, kw))
    ref = K.conv2d(s.astype(np.float64), w.astype(np.float64), stride, pad, dil)
    conv = PackedConv(w, stride, pad, dil)
    y = conv(s)  # channels last out, from either layout in
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.transpose(0, 3, 1, 2), ref)
    np.testing.assert_array_equal(conv(np.ascontiguousarray(s.transpose(0, 2, 3, 1)), True), y)


@pytest.mark.parametrize("k", [1, 40, 64, 100, 513])
def test_packed_dense_equals_the_integer_product(k: int) -> None:
    rng = np.random.default_rng(k)
    s = _spikes(rng, (9, k), 0.5)
    w = _signs(rng, (7, k))
    np.testing.assert_array_equal(PackedDense(w)(s), s.astype(np.int64) @ w.T.astype(np.int64))


def test_weight_packing_puts_each_sign_at_its_receptive_field_bit() -> None:
    w = -np.ones((2, 70, 1, 2), np.int8)
    w[1, 65, 0, 1] = 1  # offset v=1, channel word 1, bit 1
    wt = pack_weights(w)
    assert wt.shape == (4, 2) and wt.dtype == np.uint64
    assert wt[:, 0].tolist() == [0, 0, 0, 0]
    assert wt[:, 1].tolist() == [0, 0, 0, 2]


@pytest.mark.parametrize("shape", [(3, 1, 1, 1), (5, 63, 3, 3), (4, 64, 2, 3), (2, 130, 3, 1)])
def test_weight_packing_equals_packbits_of_the_channels_last_signs(
    shape: tuple[int, int, int, int],
) -> None:
    w = _signs(np.random.default_rng(sum(shape)), shape)
    o, c, kh, kw = shape
    words = -(-c // 64)
    bits = np.zeros((o, kh, kw, words * 64), bool)
    bits[..., :c] = (w > 0).transpose(0, 2, 3, 1)
    want = np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)
    assert np.array_equal(pack_weights(w), want.reshape(o, kh * kw * words).T)
    dense = _signs(np.random.default_rng(1), (o, c))
    assert np.array_equal(pack_weights(dense), pack_weights(dense.reshape(o, c, 1, 1)))


def _im2col(
    s: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    dil: tuple[int, int],
) -> tuple[np.ndarray, int, int]:
    """Rows [B·oh·ow, kh·kw·C] in (u, v, c) order, written out plainly."""
    (kh, kw), (b, c, h, w) = kernel, s.shape
    xp = np.zeros((b, h + pad[0] + pad[2], w + pad[1] + pad[3], c), np.uint8)
    xp[:, pad[0] : pad[0] + h, pad[1] : pad[1] + w] = s.transpose(0, 2, 3, 1)
    oh = (xp.shape[1] - (kh - 1) * dil[0] - 1) // stride[0] + 1
    ow = (xp.shape[2] - (kw - 1) * dil[1] - 1) // stride[1] + 1
    cols = np.empty((b, oh, ow, kh, kw, c), np.uint8)
    for u in range(kh):
        for v in range(kw):
            r, q = u * dil[0], v * dil[1]
            rows = slice(r, r + stride[0] * (oh - 1) + 1, stride[0])
            cs = slice(q, q + stride[1] * (ow - 1) + 1, stride[1])
            cols[:, :, :, u, v] = xp[:, rows, cs]
    return cols.reshape(b * oh * ow, -1), oh, ow


@pytest.mark.parametrize("clip", [None, 3])
@pytest.mark.parametrize("blocks", [1, 3, 7])
@pytest.mark.parametrize("channels", [3, 64, 70, 130])
def test_packed_blocked_conv_equals_the_blocked_product(
    channels: int, blocks: int, clip: int | None
) -> None:
    """Row blocks cut anywhere (inside a channel word, across kernel offsets): each block's
    partial sum, its ADC clipping and its driven rows are the crossbar's."""
    (kh, kw), stride, pad, dil = GEOMETRIES[1]
    rng = np.random.default_rng(channels * 100 + blocks * 10 + (clip or 0))
    k, n = kh * kw * channels, 11
    s = _spikes(rng, (6, channels, 9, 8), 0.3)
    w = _signs(rng, (k, n))
    cuts = sorted(rng.choice(np.arange(1, k), blocks - 1, replace=False).tolist())
    edges = [0, *cuts, k]
    bounds = list(itertools.pairwise(edges))
    cols, oh, ow = _im2col(s, (kh, kw), stride, pad, dil)
    total, counts = BlockedSpikeMatMul(w, bounds, clip)(cols)
    kernel = PackedBlockedConv(w, bounds, channels, (kh, kw), stride, pad, dil, clip)
    y, driven = kernel(s)
    np.testing.assert_array_equal(y, total.reshape(6, oh, ow, n))  # channels last
    np.testing.assert_array_equal(driven, counts)
    y2, driven2 = kernel(np.ascontiguousarray(s.transpose(0, 2, 3, 1)), True)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(driven2, driven)
    if clip is not None and blocks > 1:  # the clip did bite somewhere, so it was tested
        assert not np.array_equal(total, cols.astype(np.int64) @ w.astype(np.int64))


def test_packed_blocked_dense_equals_the_blocked_product() -> None:
    rng = np.random.default_rng(5)
    s = _spikes(rng, (9, 300), 0.4)
    w = _signs(rng, (300, 5))
    bounds = [(0, 17), (17, 128), (128, 300)]
    total, counts = BlockedSpikeMatMul(w, bounds, 2)(s)
    y, driven = PackedBlockedConv(w, bounds, 300, (1, 1), clip=2, dense=True)(s)
    np.testing.assert_array_equal(y, total)
    np.testing.assert_array_equal(driven, counts)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_fused_if_scan_equals_the_numpy_scan(reset: str, static: bool, dtype: type) -> None:
    """Per-channel thresholds along axis 1 of [N, C, H, W], currents that hit θ exactly,
    two windows in a row (the membranes carry over)."""
    rng = np.random.default_rng(1)
    shape = (3, 5, 4, 6)
    theta = rng.integers(1, 9, size=5).astype(np.float64) / 4
    z = (rng.integers(-3, 12, size=shape if static else (7, *shape)) / 4).astype(dtype)
    if dtype == np.int32:
        z = rng.integers(-3, 12, size=z.shape).astype(np.int32)
    v_ref = np.zeros(shape, np.float64)
    v = np.zeros(shape, np.float64)
    for _ in range(2):
        ref = if_scan(Value(z, static), theta.reshape(1, 5, 1, 1), reset, 7, v_ref)
        out, per_step, per_neuron = if_scan_fast(z, static, theta, 4 * 6, reset == "subtract", 7, v)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(v, v_ref)
        np.testing.assert_array_equal(per_step, ref.reshape(7, 3, -1).sum(axis=2))
        np.testing.assert_array_equal(per_neuron, ref.sum(axis=0).reshape(3, -1))
    assert 0 < ref.mean() < 1


def test_fused_if_scan_with_one_threshold() -> None:
    """More neurons per image than one block of the kernel (so counts add across blocks)."""
    rng = np.random.default_rng(2)
    z = rng.standard_normal((9, 4, 5000)).astype(np.float32)
    v_ref, v = np.zeros((4, 5000)), np.zeros((4, 5000))
    ref = if_scan(Value(z, False), 0.7, "subtract", 9, v_ref)
    out, per_step, per_neuron = if_scan_fast(z, False, np.array([0.7]), 1, True, 9, v)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(v, v_ref)
    np.testing.assert_array_equal(per_step, ref.sum(axis=2))
    np.testing.assert_array_equal(per_neuron, ref.sum(axis=0))


@pytest.mark.parametrize("ceil", [False, True])
@pytest.mark.parametrize("include_pad", [False, True])
@pytest.mark.parametrize(
    ("kernel", "stride", "pad"),
    [
        ((2, 2), (2, 2), (0, 0, 0, 0)),
        ((3, 3), (2, 2), (1, 1, 1, 1)),
        ((3, 2), (2, 3), (1, 0, 2, 1)),
    ],
)
def test_fused_avgpool_equals_the_reference(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int, int, int],
    include_pad: bool,
    ceil: bool,
) -> None:
    """Integer currents (a binary layer's) and arbitrary float32 values, odd sizes so that
    ceil mode adds partial windows: the same float32 bits as the reference pool."""
    rng = np.random.default_rng(3)
    for x in (
        rng.integers(-40, 40, size=(3, 4, 9, 7)).astype(np.float32),
        rng.standard_normal((3, 4, 9, 7)).astype(np.float32),
    ):
        ref = K.avgpool(x, kernel, stride, pad, ceil, include_pad)
        np.testing.assert_array_equal(avgpool_fast(x, kernel, stride, pad, ceil, include_pad), ref)
        last = avgpool_fast(x.transpose(0, 2, 3, 1), kernel, stride, pad, ceil, include_pad, True)
        np.testing.assert_array_equal(last.transpose(0, 3, 1, 2), ref)


def test_blas_single_threaded_restores_the_thread_count() -> None:
    from bsnnc.runtime.threads import _openblas, blas_single_threaded

    lib = _openblas()
    if lib is None:
        pytest.skip("numpy does not use OpenBLAS here")
    setter, getter = lib
    before = getter()
    setter(2)
    try:
        with blas_single_threaded():
            assert getter() == 1
        assert getter() == 2
    finally:
        setter(before)


def test_results_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    """The same report (spikes, predictions, every counter) with one thread and with two, for
    both backends: each kernel's sums are exact or in a fixed order per output."""
    art = tmp_path / "digits.tiles"
    run = [sys.executable, "-m", "bsnnc"]
    subprocess.run([*run, "compile", "digits", "-o", art], check=True, capture_output=True)
    reports = []
    for threads in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        for backend in ("numpy", "rram"):
            argv = [*run, "simulate", art, "-T", "12", "--limit", "24", "--json", "--no-ann"]
            out = subprocess.run(
                [*argv, "--backend", backend], check=True, capture_output=True, env=env
            ).stdout
            r = json.loads(out)
            for k in TIMING_KEYS:
                r.pop(k)
            reports.append(r)
    assert reports[0] == reports[2] and reports[1] == reports[3]
    assert reports[0]["spike_digest"] == reports[1]["spike_digest"]


def test_compiled_fixed_order_product_equals_the_reference() -> None:
    """Float32 values of every magnitude and sign (sums that round, cancel, produce -0.0)."""
    from bsnnc.runtime.bitkernels import matmul_fixed_order_fast

    rng = np.random.default_rng(4)
    a = (rng.standard_normal((50, 27)) * 10.0 ** rng.integers(-20, 20, (50, 27))).astype(np.float32)
    b = (rng.standard_normal((27, 19)) * 10.0 ** rng.integers(-20, 20, (27, 19))).astype(np.float32)
    a[3] = -0.0
    ref = K.matmul_fixed_order(a, b)
    got = matmul_fixed_order_fast(a, b)
    assert got.tobytes() == ref.tobytes()  # bit for bit, signed zeros included


@pytest.mark.parametrize("static", [False, True])
def test_channels_last_if_scan_counts_neurons_in_the_ir_order(static: bool) -> None:
    """Channels-last membranes [N, H, W, C]: the same spikes and membranes as the channels-first
    scan, and the per-neuron counts in [N, C, H, W] order (more neurons than one block)."""
    rng = np.random.default_rng(7)
    steps, n, c, h, w = 6, 3, 5, 31, 17
    z = rng.standard_normal((n, c, h, w) if static else (steps, n, c, h, w)).astype(np.float32)
    theta = rng.uniform(0.3, 1.2, c)
    axes = (0, 2, 3, 1) if static else (0, 1, 3, 4, 2)
    v_first, v_last = np.zeros((n, c, h, w)), np.zeros((n, h, w, c))
    first = if_scan_fast(z, static, theta, h * w, True, steps, v_first)
    z_last = np.ascontiguousarray(z.transpose(axes))
    last = if_scan_fast(z_last, static, theta, 1, True, steps, v_last, channels_last=True)
    np.testing.assert_array_equal(last[0], first[0].transpose(0, 1, 3, 4, 2))
    np.testing.assert_array_equal(v_last, v_first.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(last[1], first[1])
    np.testing.assert_array_equal(last[2], first[2])
    assert 0 < first[0].mean() < 1


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("channels", [5, 64, 130])
@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
def test_convolution_fused_with_its_if_layer_equals_the_two_passes(
    reset: str, channels: int, geometry: int
) -> None:
    """PackedConv.fire = the packed convolution, then the IF scan on its channels-last
    currents: the same spikes, membranes and counts, over two windows (membranes carry)."""
    (kh, kw), stride, pad, dil = GEOMETRIES[geometry]
    rng = np.random.default_rng(channels + 7 * geometry)
    steps, n = 5, 3
    s = _spikes(rng, (steps, n, channels, 9, 8), 0.3)
    s[:, 0] = 0  # a silent image
    w = _signs(rng, (6, channels, kh, kw))
    kernel = PackedConv(w, stride, pad, dil)
    z = kernel(s.reshape(steps * n, channels, 9, 8))
    oh, ow = z.shape[1], z.shape[2]
    theta = rng.uniform(0.5, 3.0, 6) if channels != 5 else np.array([1.5])
    v_two, v_fused = np.zeros((n, oh, ow, 6)), np.zeros((n, oh, ow, 6))
    for _ in range(2):  # a second window continues from the first one's membranes
        two = if_scan_fast(
            z.reshape(steps, n, oh, ow, 6), False, theta, 1, reset == "subtract", steps, v_two,
            channels_last=True,
        )  # fmt: skip
        fused = kernel.fire(s, False, theta, reset == "subtract", v_fused)
        for a, b in zip(fused, two, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(v_fused, v_two)
    nhwc = np.ascontiguousarray(s.transpose(0, 1, 3, 4, 2))
    v_nhwc = np.zeros((n, oh, ow, 6))
    kernel.fire(nhwc, True, theta, reset == "subtract", v_nhwc)
    kernel.fire(nhwc, True, theta, reset == "subtract", v_nhwc)
    np.testing.assert_array_equal(v_nhwc, v_two)
    assert 0 < two[0].mean() < 1


@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
def test_reference_convolution_in_blocks_of_output_rows_is_the_same(
    geometry: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conv2d builds a large image's patch matrix a block of output rows at a time: the same
    result as in one piece (bit for bit in the fixed-order product, where the order of the
    sum per output does not depend on how many rows are multiplied at once)."""
    (kh, kw), stride, pad, dil = GEOMETRIES[geometry]
    rng = np.random.default_rng(geometry)
    x = rng.standard_normal((2, 7, 13, 11)).astype(np.float32)
    w = rng.standard_normal((5, 7, kh, kw)).astype(np.float32)
    whole = K.conv2d(x, w, stride, pad, dil, fixed_order=True)
    blas = K.conv2d(x.astype(np.float64), w.astype(np.float64), stride, pad, dil)
    monkeypatch.setattr(K, "IM2COL_ROWS_BYTES", 1)  # one output row per block
    np.testing.assert_array_equal(K.conv2d(x, w, stride, pad, dil, fixed_order=True), whole)
    last = K.conv2d(x, w, stride, pad, dil, fixed_order=True, channels_last=True)
    np.testing.assert_array_equal(last, whole.transpose(0, 2, 3, 1))
    blocked = K.conv2d(x.astype(np.float64), w.astype(np.float64), stride, pad, dil)
    np.testing.assert_allclose(blocked, blas, rtol=1e-12, atol=1e-12)
