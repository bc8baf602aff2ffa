"""The tile simulator: executes an artifact's tile program on the RRAM accelerator model,
counting events for the cost model (:mod:`bsnnc.backends.rram.cost`).

Functional (ideal mode): every ``mvm`` is computed array block by array block — the input
spikes of each output position against the bit-packed ±1 weights of ``program.npz`` (not the
IR's constants), one exact AND-popcount sum per row block
(:class:`bsnnc.runtime.bitkernels.PackedBlockedConv`; perturbed conductances: a float64
product per block of im2col rows) — and the partial sums are added by the digital adder
(``add``); ``fire`` integrates with the program's integer
thresholds Θ·2^unit; ``digital`` instructions (full-precision first/last layers kept
digital, pooling, flatten, scale, bias) run the reference kernels of the digital periphery. A
bit-sliced full-precision layer's ``mvm`` counts the events of its slices (see
``input_planes``) and takes its values from the reference kernel. Spikes, membranes and
predictions therefore equal the numpy SNN reference bit for bit, which the tests check.

Like the reference, each instruction is executed for all T timesteps of a chunk of images at
once (or for a window of steps, when one image over T steps does not fit the memory budget):
within a timestep the program order is a topological order and only neuron membranes (and the
readout) carry state across steps, so this equals looping ``loop timestep`` T times.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import as_strided

from bsnnc.backends.rram.cost import COUNT_NAMES, Counters, Events, check_hw
from bsnnc.backends.rram.emit import load_program
from bsnnc.backends.rram.hw import HwConfig, load_hw
from bsnnc.backends.rram.mapping import FP_BITS, input_bits
from bsnnc.backends.rram.program import (
    BlockDecl,
    Instruction,
    NeuronDecl,
    Program,
    SendStmt,
    Stmt,
)
from bsnnc.backends.rram.validate import validate_artifact_program
from bsnnc.ir.graph import Graph, Node, attr_ints
from bsnnc.runtime.ann import last_uses
from bsnnc.runtime.artifact import Artifact
from bsnnc.runtime.simulate import exit_steps
from bsnnc.runtime.snn import (
    SnnTrace,
    Value,
    WindowState,
    concat,
    digital,
    fire,
    merge,
    nchw,
    readout,
    run_in_windows,
)

if TYPE_CHECKING:  # numba and onnx are imported when a kernel is built, not with the CLI
    from bsnnc.runtime.bitkernels import PackedBlockedConv
    from bsnnc.runtime.intkernels import BlockedSpikeMatMul


def _is_packed(kernel: object) -> bool:
    from bsnnc.runtime.bitkernels import PackedBlockedConv

    return isinstance(kernel, PackedBlockedConv)


def _im2col(s: np.ndarray, n: Node, kh: int, kw: int) -> tuple[np.ndarray, int, int]:
    """Spikes [B, C, H, W] → rows [B·oh·ow, kh·kw·C] in (ky, kx, c) order (uint8)."""
    st, pad, dil = (
        attr_ints(n.attrs, "stride"),
        attr_ints(n.attrs, "pad"),
        attr_ints(n.attrs, "dilation"),
    )
    b, c = s.shape[0], s.shape[1]
    oh, ow = int(n.type.shape[2] or 0), int(n.type.shape[3] or 0)
    hp = max(s.shape[2] + pad[0] + pad[2], (oh - 1) * st[0] + (kh - 1) * dil[0] + 1)
    wp = max(s.shape[3] + pad[1] + pad[3], (ow - 1) * st[1] + (kw - 1) * dil[1] + 1)
    xp = np.zeros((b, hp, wp, c), np.uint8)
    xp[:, pad[0] : pad[0] + s.shape[2], pad[1] : pad[1] + s.shape[3], :] = s.transpose(0, 2, 3, 1)
    word = 8 if c % 8 == 0 else 4 if c % 4 == 0 else 2 if c % 2 == 0 else 1
    v = xp.view({8: np.uint64, 4: np.uint32, 2: np.uint16, 1: np.uint8}[word])
    sb, sh, sw, sc = v.strides
    view = as_strided(
        v,
        (b, oh, ow, kh, kw, c // word),
        (sb, sh * st[0], sw * st[1], sh * dil[0], sw * dil[1], sc),
    )
    cols = np.ascontiguousarray(view).view(np.uint8).reshape(b * oh * ow, kh * kw * c)
    return cols, oh, ow


#: perturbed conductances are programmed to multiples of 2^-16 of the ±1 level
CONDUCTANCE_BITS = 16


@dataclass(frozen=True)
class NonIdeal:
    """Device and circuit non-idealities, off by default, seeded.

    * ``adc_bits``: each array's column sums (per row block) are clipped to
      ±(2^(adc_bits−1) − 1) before the digital adder;
    * ``variation``: every cell's conductance deviates by a factor 1 + σ·N(0, 1) (drawn once
      per cell: programming variation), programmed to a grid of 2^-:data:`CONDUCTANCE_BITS`
      of the ±1 level — so column sums are exact in float64, the same for every batch size,
      chunking and CPU;
    * ``stuck_at``: this fraction of cells is stuck at a random state (+1 or −1).
    """

    adc_bits: int | None = None
    variation: float = 0.0
    stuck_at: float = 0.0
    seed: int = 0

    @property
    def ideal(self) -> bool:
        """True when nothing is perturbed (the simulator is then bit-exact)."""
        return self.adc_bits is None and self.variation == 0.0 and self.stuck_at == 0.0

    def weights(self, w: np.ndarray, layer_index: int) -> np.ndarray:
        """The weights the cells actually hold: int8 ±1, or with variation float64 multiples
        of 2^-CONDUCTANCE_BITS. Every draw comes from the stream seeded by (seed, layer), one
        value per cell in a fixed order: independent of images and batching."""
        rng = np.random.default_rng([self.seed, layer_index])
        out = w.copy()
        if self.stuck_at > 0:
            stuck = rng.random(w.shape) < self.stuck_at
            out[stuck] = rng.choice(np.array([-1, 1], np.int8), size=int(stuck.sum()))
        if self.variation > 0:
            g = out * (1.0 + self.variation * rng.standard_normal(w.shape))
            return np.asarray(np.round(g * 2.0**CONDUCTANCE_BITS) / 2.0**CONDUCTANCE_BITS)
        return out

    @property
    def clip(self) -> int | None:
        """The ADC's largest magnitude, or None (ideal)."""
        return None if self.adc_bits is None else 2 ** (self.adc_bits - 1) - 1


class TileSimulator:
    """Runs an artifact's tile program (see the module docstring)."""

    def __init__(
        self,
        art: Artifact,
        path: str,
        hw: HwConfig | None = None,
        nonideal: NonIdeal | None = None,
        hw_spec: str | None = None,
    ) -> None:
        self.nonideal = nonideal or NonIdeal()
        self.g: Graph = art.graph
        self.program: Program = load_program(path, art.extra)
        self.arrays, self.mapping = validate_artifact_program(
            self.program, self.g, art.extra, hw, path
        )
        if hw is not None:
            check_hw(hw, self.mapping, path, hw_spec or hw.name)
        compiled = self.mapping.hw if self.mapping is not None else None
        self.hw = hw or compiled or load_hw(self.program.hw)
        self.nodes = self.g.node_map()
        self.blocks: dict[str, list[tuple[int, int, int, int, int]]] = {}
        self.copies: dict[str, int] = {}
        self.thresholds: dict[str, tuple[np.ndarray, str, np.ndarray]] = {}
        #: bit-sliced layers: input planes per read (1 for spikes, 2·b for real inputs)
        self.planes: dict[str, int] = {}
        for s in self.program.decls:
            self._declare(s)
        #: per layer and row block: (r0, r1, arrays of one copy, columns of one copy)
        self.row_blocks = {layer: self._row_block_geometry(layer) for layer in self.blocks}
        self.weights = {k[1:-2]: self._unpack(k) for k in self.arrays if k.endswith(".w")}
        self.kernels = {layer: self._row_block_kernels(layer) for layer in self.weights}
        #: the layers whose kernel is the bit-packed one (±1 cells; the rest: perturbed)
        self.packed = {k for k, v in self.kernels.items() if _is_packed(v)}
        #: per node index, the values it uses last (freed after it), and each result's index
        self._last = last_uses(self.g)
        self._order = {n.result: i for i, n in enumerate(self.g.nodes)}

    def _declare(self, s: Stmt) -> None:
        if s.op == "block":
            b = BlockDecl.of(s)
            self.blocks.setdefault(b.layer, []).append((b.array, *b.rows, *b.cols))
            self.copies[b.layer] = max(self.copies.get(b.layer, 1), b.copy + 1)
        elif s.op == "neuron":
            d = NeuronDecl.of(s)
            theta = self._per_channel(d.theta, d.theta_array) * 2.0**d.unit
            v0 = self._per_channel(d.init, d.init_array) * 2.0**d.unit
            self.thresholds[d.layer] = (theta, d.reset, v0)

    def _per_channel(self, number: float | None, array: str | None) -> np.ndarray:
        """A neuron's number (one value) or its per-channel array of program.npz, as float64."""
        if array is not None:
            return self.arrays[array].astype(np.float64).reshape(-1)
        return np.array([float(number or 0.0)])

    def _unpack(self, key: str) -> np.ndarray:
        layer = key[1:-2]
        w = self.g.constants[self.nodes[layer].const_operands()[0]].type.shape
        k, n = int(np.prod([int(d or 1) for d in w[1:]])), int(w[0] or 0)
        bits = np.unpackbits(self.arrays[key])[: k * n].reshape(k, n)
        return np.where(bits == 1, 1, -1).astype(np.int8)

    def _row_block_geometry(self, layer: str) -> list[tuple[int, int, int, int]]:
        """Each row block's rows, and the arrays (one per column block) and columns one copy
        of the layer reads for it."""
        copies = self.copies.get(layer, 1)
        out = []
        for r0, r1 in sorted({(r0, r1) for _, r0, r1, _, _ in self.blocks[layer]}):
            mine = [
                (c0, c1) for _, br0, br1, c0, c1 in self.blocks[layer] if (br0, br1) == (r0, r1)
            ]
            out.append((r0, r1, len(mine) // copies, sum(c1 - c0 for c0, c1 in mine) // copies))
        return out

    def _row_bounds(self, layer: str) -> list[tuple[int, int]]:
        return [(r0, r1) for r0, r1, _, _ in self.row_blocks[layer]]

    def _row_block_kernels(self, layer: str) -> PackedBlockedConv | BlockedSpikeMatMul:
        """The layer's row blocks (their column blocks side by side) as one kernel: bit-packed
        AND-popcount for ±1 cells, onnxruntime in float64 for perturbed conductances."""
        from bsnnc.runtime.bitkernels import PackedBlockedConv

        index = sorted(self.weights, key=lambda k: int(k) if k.isdigit() else 0).index(layer)
        w = self.nonideal.weights(self.weights[layer], index)
        bounds, clip = self._row_bounds(layer), self.nonideal.clip
        if w.dtype != np.int8:  # onnx(runtime) loads only for perturbed conductances
            from bsnnc.runtime.intkernels import BlockedSpikeMatMul

            return BlockedSpikeMatMul(w, bounds, clip)
        n = self.nodes[layer]
        shape = self.g.constants[n.const_operands()[0]].type.shape
        if n.op == "dense":
            return PackedBlockedConv(w, bounds, w.shape[0], (1, 1), clip=clip, dense=True)
        st, pad, dil = (attr_ints(n.attrs, k) for k in ("stride", "pad", "dilation"))
        return PackedBlockedConv(
            w, bounds, int(shape[1] or 0), (int(shape[2] or 1), int(shape[3] or 1)),
            (st[0], st[1]), (pad[0], pad[1], pad[2], pad[3]), (dil[0], dil[1]), clip,
        )  # fmt: skip

    def run(
        self,
        x: np.ndarray,
        T: int,
        counters: Counters,
        early_exit: float | None = None,
        window: int | None = None,
    ) -> SnnTrace:
        """Simulate T timesteps on images ``x``, ``window`` steps at a time (all at once when
        None; membranes, the readout and the ``once`` block's values carry over, so windows
        change no bit); adds the events to ``counters`` — with ``early_exit``, each image's
        only up to its exit step (as the hardware would stop)."""
        #: per image, the 1-based step it exited at in an earlier window (0: still running)
        exited = np.zeros(x.shape[0], np.int64)

        def run_window(t0: int, steps: int, state: WindowState) -> SnnTrace:
            trace, ev = self._window(x, t0, steps, state)
            counters.absorb(ev, self._exits(trace.final, early_exit, t0, T, exited), t0)
            return trace

        return run_in_windows(T, window, run_window)

    @staticmethod
    def _exits(
        final: np.ndarray, early_exit: float | None, t0: int, T: int, exited: np.ndarray
    ) -> np.ndarray:
        """Each image's 1-based exit step as far as steps ≤ t0 + len(final) tell (T when it
        has not crossed yet: exiting depends only on the steps up to the crossing); records
        new exits in ``exited``."""
        if early_exit is None:
            return np.full(final.shape[1], T, np.int64)
        crossed = (final.max(axis=2) > early_exit).any(axis=0)
        now = np.where(crossed, t0 + exit_steps(final, early_exit), T)
        steps = np.where(exited > 0, exited, now)
        exited[:] = np.where(steps < T, steps, exited)
        return np.asarray(steps, np.int64)

    def bytes_per_step(self) -> int:
        """Bytes one image adds per timestep besides the reference's values (what sizes the
        chunks and time windows): its event counts (int64 per count, layer and (layer, row
        block, copy)), and per crossbar layer with P output positions, B row blocks and
        N·P outputs the kernel's driven-row counts (P·B, int32 then int64) and partial sums
        (N·P, int32 and float32); a layer of perturbed conductances (onnxruntime in float64)
        also its im2col rows, P·K values as uint8 and float64."""
        busy = sum(len(rb) * self.copies.get(k, 1) for k, rb in self.row_blocks.items())
        sends = sum(1 for s in self.program.body if s.op == "send")
        events = 8 * (len(COUNT_NAMES) + len(self.row_blocks) + busy + sends)
        kernels = 0
        for layer, blocks in self.row_blocks.items():
            t = self.nodes[layer].type
            positions = int(t.shape[2] or 1) * int(t.shape[3] or 1) if t.rank == 4 else 1
            kernels += 12 * positions * len(blocks) + 8 * t.numel_per_sample()
            if layer in self.kernels and layer not in self.packed:
                kernels += 9 * positions * int(self.weights[layer].shape[0])
        return events + kernels

    def _window(
        self, x: np.ndarray, t0: int, T: int, state: WindowState
    ) -> tuple[SnnTrace, Events]:
        """Steps t0+1 .. t0+T: the ``once`` block runs in the first window only (its values
        are kept in ``state``), the body in every window."""
        trace = SnnTrace(final=np.zeros(0))
        ev = Events(T, x.shape[0])
        env: dict[str, Value] = dict(state.static)
        if t0 == 0:
            env[self.g.inputs()[0].result] = Value(np.ascontiguousarray(x, np.float32), True)
        for once, block in ((True, self.program.once), (False, self.program.body)):
            if once and t0 > 0:
                continue
            ev.once = once  # the once block's events happen at the first step only
            for s in block:
                if s.op == "barrier":
                    continue
                if s.op == "add":
                    self._count_add(s, ev)
                    continue
                if s.op == "send":
                    self._count_send(s, env, ev)
                    continue
                result = Instruction.of(s).result
                start = time.perf_counter()
                env[result] = self._execute(s, result, env, T, trace, ev, state, t0)
                trace.seconds[result] = time.perf_counter() - start
                for v in self._last.get(self._order[result], []):
                    if v != result:
                        env.pop(v, None)
            if once:
                state.static = dict(env)
        trace.final = env[self.g.outputs[0]].data
        state.readout = trace.final[-1]
        return trace, ev

    def _execute(
        self,
        s: Stmt,
        result: str,
        env: dict[str, Value],
        T: int,
        trace: SnnTrace,
        ev: Events,
        state: WindowState,
        t0: int,
    ) -> Value:
        n = self.nodes[result]
        src = env[n.value_operands()[0]]
        if s.op == "fire":
            th, reset, v0 = self.thresholds[result]  # one θ, or one per channel (axis 1)
            ev.add("neuron_updates", n.type.numel_per_sample())
            return fire(result, src, th, 1, reset, T, trace, state, v0)
        if s.op == "readout":
            return readout(nchw(src), T, t0, state.readout)
        if s.op == "merge":  # the digital adder: one add per output neuron and step
            ev.add("psum_adds", n.type.numel_per_sample())
            return merge(src, env[n.value_operands()[1]], T)
        if s.op == "mvm" and result in self.kernels:
            return self._mvm(n, src, T, trace, ev)
        if s.op == "mvm":
            self._count_bitsliced(n, nchw(src), T, ev)
        if n.op == "concat":  # routing: the spike packets of both go to the consumer
            return concat(src, env[n.value_operands()[1]])
        return self._digital(n, src, T)

    def _digital(self, n: Node, x: Value, T: int) -> Value:
        return digital(n, x, [self.g.constants[k].array() for k in n.const_operands()], T)

    def _cols(self, n: Node, s: np.ndarray) -> tuple[np.ndarray, int]:
        """0/1 inputs [N, ...] → the rows each output position drives, [N·positions, K]."""
        if n.op == "conv2d":
            w = self.g.constants[n.const_operands()[0]].type.shape
            cols, oh, ow = _im2col(s, n, int(w[2] or 1), int(w[3] or 1))
            return cols, oh * ow
        return s.reshape(s.shape[0], -1), 1

    def _mvm(self, n: Node, s: Value, T: int, trace: SnnTrace, ev: Events) -> Value:
        from bsnnc.runtime.bitkernels import step_counts

        packed_conv = n.result in self.packed and n.op == "conv2d"
        s = s if packed_conv else nchw(s)  # the packed convolution reads either layout
        b = s.data.shape[1]
        flat = s.data.reshape(T * b, *s.data.shape[2:])
        trace.layer_input[n.result] = step_counts(s.data)
        y, driven = self._product(n, flat, s.nhwc)
        self._count_mvm(n.result, driven, T, driven.shape[0] // flat.shape[0], ev)
        return Value(y.reshape(T, b, *y.shape[1:]), False, packed_conv)

    def _product(self, n: Node, s: np.ndarray, nhwc: bool) -> tuple[np.ndarray, np.ndarray]:
        """The layer's outputs for spikes ``s`` [M, ...] (float32: [M, OH, OW, N] from the
        packed kernel, [M, N, OH, OW] from the float64 one, or [M, N]) and the driven rows per
        output position and row block, [M·OH·OW, blocks]."""
        from bsnnc.runtime.bitkernels import PackedBlockedConv

        kernel = self.kernels[n.result]
        if isinstance(kernel, PackedBlockedConv):  # channels last out
            return kernel(s, nhwc)
        cols, _ = self._cols(n, s)
        total, driven = kernel(cols)
        oh, ow = (
            (int(n.type.shape[2] or 0), int(n.type.shape[3] or 0)) if n.op == "conv2d" else (1, 1)
        )
        y4 = total.astype(np.float32).reshape(s.shape[0], oh, ow, -1)
        y = y4.transpose(0, 3, 1, 2) if n.op == "conv2d" else y4.reshape(s.shape[0], -1)
        return np.ascontiguousarray(y), driven

    def _count_bitsliced(self, n: Node, s: Value, T: int, ev: Events) -> None:
        """Events of a bit-sliced full-precision layer: its inputs are applied bit-serially
        (``input_planes``), each plane one read of the layer's arrays, whose b-bit weight
        slices sit side by side (b·N columns). The values themselves come from the digital
        reference kernel, so the outputs stay bit-exact."""
        steps = 1 if s.static else T
        flat = s.data if s.static else s.data.reshape(T * s.data.shape[1], *s.data.shape[2:])
        planes = input_planes(flat, input_bits(self.nodes, n) == 1)
        self.planes[n.result] = len(planes)  # each plane's row-block sums are added (``add``)
        for plane in planes:
            cols, positions = self._cols(n, plane)
            driven = np.stack(
                [
                    cols[:, r0:r1].sum(axis=1, dtype=np.int64)
                    for r0, r1 in self._row_bounds(n.result)
                ],
                axis=1,
            )
            self._count_mvm(n.result, driven, steps, positions, ev)

    def _count_mvm(
        self, layer: str, driven_rows: np.ndarray, steps: int, positions: int, ev: Events
    ) -> None:
        """Count the events of a layer's row blocks, per timestep and image (``steps`` is T,
        or 1 for an input that is the same at every step); ``driven_rows`` [steps·b·positions,
        blocks]. Positions are shared round-robin by the layer's copies, which run in
        parallel."""
        geometry = np.array(
            [(r1 - r0, arrays, width) for r0, r1, arrays, width in self.row_blocks[layer]]
        )
        height, arrays, width = geometry[:, 0], geometry[:, 1], geometry[:, 2]
        driven = driven_rows.reshape(steps, ev.b, positions, -1)
        reads = driven > 0
        issued = reads.sum(axis=2)  # [steps, b, blocks]
        rows = driven.sum(axis=2, dtype=np.int64)
        # a spike drives its row in each of the row block's arrays (one per column block)
        ev.add("row_activations", rows @ arrays)
        ev.add_rows(layer, rows @ arrays)
        ev.add("reads_issued", issued @ arrays)
        ev.add("reads_skipped", (positions - issued) @ arrays)
        ev.add("conversions", issued @ width)
        ev.add("cell_reads", rows @ width)  # every cell on a driven row, in its block
        copies = self.copies.get(layer, 1)
        # a read drives at most max_rows_driven rows at once: taller blocks take several phases
        per_read = -(-height // self.hw.max_rows_driven) * (self.hw.columns_per_adc + 1)
        for k in range(copies):
            mine = reads[:, :, k::copies].sum(axis=2) * per_read  # [steps, b, blocks]
            for block in range(len(height)):
                ev.add_busy((layer, block, k), mine[:, :, block])

    def _count_add(self, s: Stmt, ev: Events) -> None:
        """Partial sums of the row blocks, added per output neuron (and timestep)."""
        layer = Instruction.of(s).result
        blocks = len(self.row_blocks[layer]) if layer in self.row_blocks else 1
        per_read = (blocks - 1) * self.nodes[layer].type.numel_per_sample()
        ev.add("psum_adds", per_read * self.planes.get(layer, 1))

    def _count_send(self, s: Stmt, env: dict[str, Value], ev: Events) -> None:
        send = SendStmt.of(s)
        layer, hops = send.layer, send.hops
        spikes = env[layer].data
        per_step = spikes.reshape(spikes.shape[0], spikes.shape[1], -1).sum(axis=2, dtype=np.int64)
        ev.add("spike_packets", per_step)
        ev.add("packet_hops", per_step * hops)
        if hops:  # a pipeline stage of its own: the packets' latency across the mesh
            ev.add_busy((f"{layer}.send", 0, 0), (per_step > 0) * hops * self.hw.noc_hop_cycles)


def input_planes(x: np.ndarray, spikes: bool, bits: int = FP_BITS) -> list[np.ndarray]:
    """The bit planes a layer's input is applied as, each 0/1 uint8 shaped like ``x``.

    Spike inputs (the IR type says so) are one plane. Other inputs are applied
    bit-serially: per image, q = round(|x| / max|x| · (2^b − 1)) with b = ``bits``, one
    plane per bit of q and per sign (positive inputs, then negative inputs in a second
    phase): 2b planes, a position whose window has no set bit in a plane skips that read.
    """
    if spikes:
        return [np.ascontiguousarray(x, np.uint8)]
    n = x.shape[0]
    mag = np.abs(x.reshape(n, -1)).astype(np.float64)
    top = mag.max(axis=1, keepdims=True)
    q = np.rint(np.divide(mag, top, out=np.zeros_like(mag), where=top > 0) * (2**bits - 1))
    q = q.astype(np.uint32).reshape(x.shape)
    planes = []
    for sign in (x > 0, x < 0):
        for j in range(bits):
            planes.append((((q >> j) & 1).astype(bool) & sign).astype(np.uint8))
    return planes
