"""fold-threshold-normalization: calibrate, then fold α, scales and the normalization factors
into IF thresholds and constant currents, so that crossbar weights stay exactly ±1.

Pre: insert-if-around-pooling ran (spiking form, θ = 1 placeholders). Post: every ``if`` has
its threshold; no ``scale`` feeds an ``if``; a ``bias`` before an ``if`` is its constant
current per step; the final ``readout`` accumulates ``V_t ≈ t · logits``.

The algebra. Calibration (:mod:`bsnnc.compiler.calibrate`) gives λ_l for each IF layer: the
ANN activation that should fire at the maximum rate, so that the rate is ``r_l ≈ a_l / λ_l``.
After fold-scales, layer l computes ``a_l = relu(s ⊙ P(W·a_{l−1}) + b)`` (P: pooling, linear or
max; W: ±1 or full precision; s > 0). Its IF neuron integrates the current ``I = P(W·S_{l−1})``
of the previous layer's spikes (mean ``Ī = P(W·a_{l−1}) / λ_{l−1}``) plus a constant current β
per step, and fires at the rate ``(Ī + β) / θ``. Requiring ``r_l = a_l / λ_l``::

    a_l / λ_l = (s·λ_{l−1} / λ_l) · relu(Ī + b / (s·λ_{l−1}))
    ⇒  θ = λ_l / (s·λ_{l−1}),   β = b / (s·λ_{l−1})

with λ_0 = 1 for the (constant, real-valued) network input. The final layer has no threshold:
``logits = s ⊙ W·a + b = (s·λ_{L−1}) ⊙ W·r + b``, so the readout's scale is multiplied by
λ_{L−1}. Read as an ANN (``if`` = relu(x)/θ, ``readout`` = identity) the folded graph computes
the same logits as the original — the equivalence the tests check.

θ and β are rounded to a dyadic grid q = 2^(⌊log2 min θ⌋ − 20) (20 significant bits), so
thresholds are integers Θ = θ/q in units of q and the membrane arithmetic of binary layers
(integer currents) is exact.

A residual merge ``IF(Σ_k (s_k ⊙ P_k(W_k·a_k) + b_k))`` (after fold-scales each branch k
keeps its own positive affine; an identity shortcut has s = 1, b = 0 and no W) integrates the
branch currents ``I_k`` (mean ``P_k(W_k·a_k) / λ_k``) in the unit of branch 0,
``D = s_0·λ_0``::

    θ = λ_out / D,   β = Σ_k b_k / D,   f_k = s_k·λ_k / D   (f_0 = 1)

so ``Σ_k f_k·I_k + β`` fires at the rate ``a_out / λ_out``. Branch 0 keeps its integer ±1
currents; every other branch's current is scaled by ``f_k`` (a per-channel ``scale`` before
the ``add``), rounded to the threshold grid q (at most 24 significant bits), so that the
membrane in units of q stays an integer sum: on a crossbar f_k is a digital shift-and-add of
the branch's spikes or partial sums into the merge's membrane, not a crossbar column.

An IF layer that stands for a quantized activation (``levels`` L, ``step`` Δ, from a QONNX
``Quant`` or a QCDQ chain) is not calibrated: λ = L·Δ, the quantizer's largest output. With
the half-threshold start and a constant current z the neuron then emits ⌊z·L/λ + ½⌋ spikes
in L steps (clipped to [0, L]): the quantizer's level count, up to its ties-to-even rounding
(QCFS, Bu et al. 2022). Calibration images are needed only when some IF layer has no
quantizer. The folded ``if`` keeps ``levels`` (its ANN reading then quantizes with step θ/L)
and drops ``step``.

With ``channel`` granularity λ_l is per output channel; the next layer still sees one input
scale (the maximum of λ_{l−1} over channels), which only approximates equivalence — the ±1
weights cannot absorb per-input-channel factors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from bsnnc.compiler.calibrate import Calibrator, batches
from bsnnc.compiler.passes.affine import emit_scale_bias
from bsnnc.compiler.passes.base import (
    CalibratedLayer,
    Calibration,
    Pass,
    PassOptions,
    PassResult,
)
from bsnnc.ir.builder import Rewriter
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Graph, Node, channel_param
from bsnnc.ir.ops import Trait, has_trait, if_init, if_levels, if_step, threshold_unit
from bsnnc.ir.types import Kind
from bsnnc.ir.verifier import verify_spiking
from bsnnc.runtime.ann import kernels_for
from bsnnc.runtime.staged import plan_stages, run_staged

#: float64 values in flight during calibration stay near this many bytes (per stage)
CALIB_BYTES = 128 << 20
#: ops that carry an IF layer's spikes (and so its λ) to the next IF or readout
_THROUGH = (Trait.AFFINE, Trait.POOL, Trait.SHAPE, Trait.WEIGHTED)


def dyadic_step(theta: np.ndarray) -> float:
    """q = 2^(⌊log2 min θ⌋ − 20): every θ keeps at least 20 significant bits."""
    return float(2.0 ** threshold_unit(theta))


def _affine_chain(g: Graph, n: Node) -> tuple[list[Node], str]:
    """The single-use scale/bias nodes right before ``n`` (in forward order) and their input."""
    return _chain_to(g, n.value_operands()[0])


def _chain_to(g: Graph, value: str) -> tuple[list[Node], str]:
    """The single-use scale/bias nodes ending at ``value`` (in forward order) and their input."""
    nodes, users = g.node_map(), g.users()
    chain: list[Node] = []
    cur = value
    while nodes[cur].op in ("scale", "bias") and len(users[cur]) == 1:
        chain.append(nodes[cur])
        cur = nodes[cur].value_operands()[0]
    return list(reversed(chain)), cur


def _merge_tree(g: Graph, value: str) -> tuple[list[Node], list[str]]:
    """The ``add`` nodes of the merge ending at ``value`` and its branches (values, in order)."""
    n = g.node_map()[value]
    if n.op != "add":
        return [], [value]
    adds, branches = [n], []
    for v in n.value_operands():
        more, vs = _merge_tree(g, v)
        adds += more
        branches += vs
    return adds, branches


def _absorbed(g: Graph, n: Node) -> list[Node]:
    """The nodes an ``if``/``readout`` folds into itself: its affine chain and, after a merge,
    the ``add`` nodes and every branch's affine chain."""
    chain, src = _affine_chain(g, n)
    if n.op != "if" or chain or g.node_map()[src].op != "add":
        return chain
    adds, branches = _merge_tree(g, src)
    return adds + [c for b in branches for c in _chain_to(g, b)[0]]


def _compose(g: Graph, chain: list[Node], channels: int) -> tuple[np.ndarray, np.ndarray]:
    s, b = np.ones(channels), np.zeros(channels)
    for n in chain:
        if n.op == "scale":
            f = channel_param(g, n, "factor")
            s, b = s * f, b * f
        else:
            b = b + channel_param(g, n, "value")
    return s, b


def _lambda_in(g: Graph, value: str, lam: dict[str, np.ndarray]) -> float:
    """λ of the IF layer whose spikes feed ``value`` through linear ops (1 for the input); a
    concatenation's IF layers share one λ (:func:`_tie_concatenated`)."""
    nodes = g.node_map()
    cur = nodes[value]
    while has_trait(cur.op, *_THROUGH) or cur.op == "concat":
        cur = nodes[cur.value_operands()[0]]
    if cur.op == "if":
        return float(np.max(lam[cur.result]))
    if cur.op == "input":
        return 1.0
    if cur.op == "add":
        raise BsnncError(
            f"fold-threshold-normalization: {cur.where()}: a residual merge must feed a ReLU "
            "(its IF layer) before anything else reads it"
        )
    raise BsnncError(f"fold-threshold-normalization: {cur.where()}: unexpected op on the path")


def _concat_sources(g: Graph, value: str) -> list[Node]:
    """The IF layers whose spikes a concatenation gathers (through pools and shape ops)."""
    cur = g.node_map()[value]
    if cur.op == "concat":
        return [s for v in cur.value_operands() for s in _concat_sources(g, v)]
    while has_trait(cur.op, Trait.POOL, Trait.SHAPE):
        cur = g.node_map()[cur.value_operands()[0]]
    if cur.op != "if":
        raise BsnncError(
            f"fold-threshold-normalization: {cur.where()}: a concatenation is supported of "
            "spikes only (concatenate after the ReLU)"
        )
    return [cur]


def _tie_concatenated(
    g: Graph, lam: dict[str, np.ndarray], notes: list[str]
) -> dict[str, np.ndarray]:
    """IF layers concatenated into one tensor share λ = the largest of theirs: the layer that
    reads the concatenation sees one rate scale λ_in (its ±1 weights cannot absorb one per
    input channel), and every part still fires at ``a / λ`` — exact, at slightly lower rates
    for the parts whose own λ was smaller."""
    out = dict(lam)
    users = g.users()
    groups = [
        _concat_sources(g, n.result)
        for n in g.nodes
        if n.op == "concat" and not any(u.op == "concat" for u in users[n.result])
    ]
    changed = True
    while changed:  # groups sharing a layer end up with one λ (the largest of them all)
        changed = False
        for parts in groups:
            top = max(float(np.max(out[p.result])) for p in parts)
            for p in parts:
                if np.any(out[p.result] != top):
                    out[p.result] = np.full_like(np.asarray(out[p.result], np.float64), top)
                    changed = True
    for parts in groups:
        names = ", ".join(p.loc or p.result for p in parts)
        top = float(np.max(out[parts[0].result]))
        notes.append(
            f"fold-threshold-normalization: λ of the concatenated IF layers ({names}) tied to "
            f"{top:.4g}"
        )
    return out


def quantizer_lambda(n: Node) -> float | None:
    """λ = L·Δ of an ``if`` that stands for a quantized activation (None for the others): the
    activation L·Δ is the quantizer's largest, so it fires at the maximum rate, and with the
    half-threshold start the rate after T = L steps is the quantizer's level count / L."""
    step = if_step(n.attrs)
    return if_levels(n.attrs) * step if step > 0 else None


def _from_quantizers(g: Graph) -> Calibration:
    """Every IF layer's λ from its quantizer: no images needed."""
    ifs = [n for n in g.nodes if n.op == "if"]
    layers = []
    for i, n in enumerate(ifs):
        lam = quantizer_lambda(n)
        assert lam is not None
        layers.append(CalibratedLayer(n.loc or "", i, (lam,), (lam,), quantizer=True))
    return Calibration(0, "quantizers", "quantizer", 100.0, "layer", tuple(layers))


def _with_quantizers(g: Graph, cal: Calibration) -> Calibration:
    """``cal`` with the λ of quantized layers replaced by their quantizer's L·Δ."""
    ifs = [n for n in g.nodes if n.op == "if"]
    layers = []
    for n, layer in zip(ifs, cal.layers, strict=True):
        lam = quantizer_lambda(n)
        if lam is not None:
            layer = CalibratedLayer(layer.loc, layer.index, (lam,), layer.maximum, quantizer=True)
        layers.append(layer)
    return replace(cal, layers=tuple(layers))


def _calibrate(g: Graph, opts: PassOptions) -> Calibration:
    ifs = [n for n in g.nodes if n.op == "if"]
    if ifs and all(quantizer_lambda(n) is not None for n in ifs):
        return _from_quantizers(g)
    if opts.calib is None:
        raise BsnncError(
            "fold-threshold-normalization needs calibration images: pass --calib NAME|PATH"
        )
    return _with_quantizers(g, _calibrate_images(g, opts))


def _calibrate_images(g: Graph, opts: PassOptions) -> Calibration:
    assert opts.calib is not None
    images = opts.calib()
    p = 100.0 if opts.percentile >= 100 else opts.percentile
    cal = Calibrator(g, len(images), p, opts.statistic, opts.granularity == "channel")
    stages = plan_stages(g, len(images), opts.calib_batch, CALIB_BYTES)  # memory-sized
    what = f"calibrating on {len(images)} images"

    def fed() -> Iterator[np.ndarray]:
        """The images in the first stage's batches; progress counts the images it has taken
        (all of them only once every stage is done)."""
        done = 0
        opts.progress(what, 0, len(images))
        for x in batches(images, stages[0].batch):
            yield x
            done += x.shape[0]
            if done < len(images):
                opts.progress(what, done, len(images))

    run_staged(g, fed(), stages, cal.observe, kernels=kernels_for(len(images), g))
    opts.progress(what, len(images), len(images))
    layers = tuple(
        CalibratedLayer(s.loc, i, tuple(s.lam.tolist()), tuple(s.maximum.tolist()))
        for i, s in enumerate(cal.result())
    )
    return Calibration(len(images), images.name, opts.statistic, p, opts.granularity, layers)


#: a merge factor keeps at most this many significant bits (its per-channel constant is float32)
FACTOR_BITS = 24


def _merge_factors(f: np.ndarray, q: float) -> np.ndarray:
    """Branch factors on the threshold grid q (so that f/q is an integer: the membrane stays
    exact), coarsened to 24 significant bits when a factor is much larger than θ."""
    top = float(np.max(np.abs(f)))
    step = max(q, 2.0 ** (np.floor(np.log2(top)) - (FACTOR_BITS - 1))) if top > 0 else q
    return np.asarray(np.round(f / step) * step)


def _emit_merge_if(
    rw: Rewriter, g: Graph, n: Node, add: str, lam: dict[str, np.ndarray], notes: list[str]
) -> None:
    """The IF after a residual merge (see the module docstring): branch 0 sets the unit."""
    channels = int(n.type.shape[1] or 1)
    parts = []
    for b in _merge_tree(g, add)[1]:
        chain, src = _chain_to(g, b)
        s, bias = _compose(g, chain, channels)
        parts.append((src, s, bias, _lambda_in(g, src, lam)))
    d = parts[0][1] * parts[0][3]
    theta = lam[n.result] * np.ones(channels) / d
    beta = sum(p[2] for p in parts) / d
    q = dyadic_step(theta)
    theta, beta = np.round(theta / q) * q, np.round(beta / q) * q
    name = (n.loc or n.result).strip("/").replace("/", ".")
    loc = g.node_map()[add].loc
    x = rw.env[parts[0][0]]
    factors = []
    for i, (src, s, _, lam_in) in enumerate(parts[1:], start=1):
        f = _merge_factors(s * lam_in / d, q)
        factors.append(f)
        y = emit_scale_bias(rw, rw.env[src], f, np.zeros(channels), f"{name}.branch{i}", loc)
        x = rw.add("add", [x, y], loc=loc)
    x = emit_scale_bias(rw, x, np.ones(channels), beta, name, n.loc)
    _add_if(rw, n, x, theta, name)
    notes.append(
        f"fold-threshold-normalization: {n.loc or n.result}: θ = {_summary(theta)} after a "
        f"merge of {len(parts)} branches (λ = {_summary(lam[n.result])}; branch factors "
        + ", ".join(_summary(f) for f in factors)
        + ")"
    )


def _add_if(rw: Rewriter, n: Node, x: str, theta: np.ndarray, name: str) -> None:
    """The folded ``if`` of ``n`` on ``x`` with thresholds ``theta`` (one or per channel)."""
    attrs = {"reset": n.attrs["reset"], "axis": 1, "init": if_init(n.attrs)}
    attrs["levels"] = if_levels(n.attrs)  # the quantizer's step is now θ / L
    if np.all(theta == theta[0]):
        rw.env[n.result] = rw.add("if", [x], {**attrs, "theta": float(theta[0])}, loc=n.loc)
    else:
        c = rw.const(f"{name}.theta", Kind.F32, theta.astype(np.float32))
        rw.env[n.result] = rw.add("if", [x, c], {**attrs, "theta": 1.0}, loc=n.loc)


def _emit_if(rw: Rewriter, g: Graph, n: Node, lam: dict[str, np.ndarray], notes: list[str]) -> None:
    chain, src = _affine_chain(g, n)
    if not chain and g.node_map()[src].op == "add":
        _emit_merge_if(rw, g, n, src, lam, notes)
        return
    channels = int(n.type.shape[1] or 1)
    s, b = _compose(g, chain, channels)
    lam_in = _lambda_in(g, src, lam)
    theta = lam[n.result] * np.ones(channels) / (s * lam_in)
    beta = b / (s * lam_in)
    q = dyadic_step(theta)
    theta, beta = np.round(theta / q) * q, np.round(beta / q) * q
    name = (n.loc or n.result).strip("/").replace("/", ".")
    x = emit_scale_bias(rw, rw.env[src], np.ones(channels), beta, name, n.loc)
    _add_if(rw, n, x, theta, name)
    folded = ", ".join(c.loc or c.op for c in chain) or "nothing"
    notes.append(
        f"fold-threshold-normalization: {n.loc or n.result}: θ = {_summary(theta)} "
        f"(λ = {_summary(lam[n.result])}, λ_in = {lam_in:.4g}; folded: {folded})"
    )


def _summary(v: np.ndarray) -> str:
    v = np.atleast_1d(v)
    return f"{v[0]:.4g}" if np.all(v == v[0]) else f"{v.min():.4g}..{v.max():.4g}"


def _emit_readout(rw: Rewriter, g: Graph, n: Node, lam: dict[str, np.ndarray]) -> None:
    chain, src = _affine_chain(g, n)
    if g.node_map()[src].op == "add":
        raise BsnncError(
            f"fold-threshold-normalization: {n.where()}: a residual merge right before the "
            "output is not supported (end the network with a weighted layer)"
        )
    channels = int(n.type.shape[1] or 1)
    s, b = _compose(g, chain, channels)
    lam_in = _lambda_in(g, src, lam)
    name = (n.loc or n.result).strip("/").replace("/", ".")
    x = emit_scale_bias(rw, rw.env[src], s * lam_in, b, name, n.loc)
    rw.env[n.result] = rw.add("readout", [x], loc=n.loc)


def fold_threshold_normalization(g: Graph, options: PassOptions) -> PassResult:
    """See the module docstring."""
    verify_spiking(g)
    calibration = _calibrate(g, options)
    ifs = [n for n in g.nodes if n.op == "if"]
    lam = {n.result: np.asarray(c.lam) for n, c in zip(ifs, calibration.layers, strict=True)}
    notes: list[str] = []
    lam = _tie_concatenated(g, lam, notes)
    skip = {c.result for n in g.nodes if n.op in ("if", "readout") for c in _absorbed(g, n)}
    rw = Rewriter(g)
    for n in g.nodes:
        if n.result in skip:
            continue
        if n.op == "if":
            _emit_if(rw, g, n, lam, notes)
        elif n.op == "readout":
            _emit_readout(rw, g, n, lam)
        else:
            rw.copy(n)
    return PassResult.of(g, rw.finish_from_source(), notes, calibration)


PASS = Pass(
    "fold-threshold-normalization",
    "calibrate percentile thresholds; fold α, scales and λ into thresholds",
    fold_threshold_normalization,
)
