"""fold-scales (alias fold-batchnorm): one positive per-channel affine right before each ReLU.

Pre: ANN form (no ``if``/``readout``). Post: every chain ``weighted op → pools → ReLU`` reads
``W → pools → scale(s > 0) → bias(b) → relu`` (or ``→ quant``, a quantized activation) with
at most one ``scale`` and one ``bias``
(also right before each graph output, where s may be negative); no ``scale``/``bias`` remains
anywhere else. The ±1 weights never absorb a magnitude: α, BatchNorm's γ/√(σ²+ε), biases and
constant Mul/Add all end up in that affine, which fold-threshold-normalization then turns into
thresholds and constant currents.

The algebra (per channel c, ``x = W·a``):

* scale/bias compose: ``f·(s·x + b) + v = (f·s)·x + (f·b + v)``.
* average pooling is linear, and keeps a bias when no padding is counted in its divisor:
  ``avg(s·x + b) = s·avg(x) + b`` (global average pooling too).
* max pooling commutes with a positive scale and any bias: ``max(s·x + b) = s·max(x) + b``.
* a negative ``s_c`` is made positive by negating output channel c of the weights (as FINN
  does — flip the sign pattern, not the comparison): ``s·(W·a) = (−s)·((−W)·a)``; this is valid
  through average pools, and through a max pool only if the scale came before the pool.
* a residual merge ``add(x, y)`` (and a channel concatenation) keeps each branch's affine on
  that branch, right before the merge (``(s·x + b) + (t·y + c)`` has no single scale), with
  negative scales made positive as above; fold-threshold-normalization then folds them into
  the merge's IF.
* an affine on a weighted op's *input* moves to its output when the scale is one number:
  ``W·(s·a + b) = s·(W·a) + W·b``; ``W·b`` is per output channel for dense layers, and for
  convolutions without padding ``Σ_{c,u,v} W[o,c,u,v]·b_c``.
"""

from __future__ import annotations

import numpy as np

from bsnnc.compiler.passes.affine import Affine, emit_scale_bias
from bsnnc.compiler.passes.base import Pass, PassOptions, PassResult
from bsnnc.ir.builder import Rewriter
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Constant, Graph, Node, attr_ints, channel_param
from bsnnc.ir.ops import Trait, has_trait
from bsnnc.ir.types import Kind

#: float64 weights converted at a time by :meth:`_Folder.input_bias`
_INPUT_BIAS_BLOCK_BYTES = 32 << 20


class _Folder:
    def __init__(self, g: Graph) -> None:
        self.g = g
        self.notes: list[str] = []
        self.rw = Rewriter(g)
        self.aff: dict[str, Affine] = {}
        self.flips: dict[str, set[int]] = {}  # new weighted result → output channels to negate
        self.users = g.users()

    def fail(self, n: Node, msg: str) -> BsnncError:
        return BsnncError(f"fold-scales: {n.where()}: {msg}")

    def channels(self, operand: str) -> int:
        return int(self.rw.type_of(operand).shape[1] or 0)

    def run(self) -> Graph:
        for n in self.g.nodes:
            self.visit(n)
        for o in self.g.outputs:
            self.rw.env[o] = self.materialize(self.g.node_map()[o], o, allow_negative=True)
        self.apply_flips()
        return self.rw.finish_from_source()

    def visit(self, n: Node) -> None:
        if n.op in ("if", "readout"):
            raise self.fail(n, "fold-scales runs on the ANN form, before lower-relu-to-if")
        if n.op == "input":
            new = self.rw.copy(n)
            self.aff[n.result] = Affine.identity(self.channels(new))
        elif n.op in ("scale", "bias"):
            self.absorb(n)
        elif has_trait(n.op, Trait.POOL):
            self.pool(n)
        elif has_trait(n.op, Trait.SHAPE):
            self.flatten(n)
        elif n.op in ("relu", "quant"):  # quant(s·x) ≠ s·quant(x): the affine stays before it
            x = self.materialize(n, n.value_operands()[0], allow_negative=False)
            new = self.rw.copy(n, [x])
            self.aff[n.result] = Affine.identity(self.channels(new))
        elif has_trait(n.op, Trait.WEIGHTED):
            self.weighted(n)
        elif n.op in ("add", "concat"):  # each operand's affine stays before the merge
            xs = [self.materialize(n, v, allow_negative=False) for v in n.value_operands()]
            new = self.rw.copy(n, xs)
            self.aff[n.result] = Affine.identity(self.channels(new))
        else:
            raise self.fail(n, f"unexpected op {n.op}")

    def absorb(self, n: Node) -> None:
        (x,) = n.value_operands()
        a = self.aff[x].copy()
        if n.op == "scale":
            f = channel_param(self.g, n, "factor")
            a.s, a.b = a.s * f, a.b * f
        else:
            a.b = a.b + channel_param(self.g, n, "value")
        a.folded.append(n.loc or f"%{n.result}")
        self.rw.env[n.result] = self.rw.env[x]
        self.aff[n.result] = a

    def pool(self, n: Node) -> None:
        (x,) = n.value_operands()
        a = self.aff[x].copy()
        counts_pad = n.op == "avgpool" and n.attrs["count_include_pad"]
        if counts_pad and any(attr_ints(n.attrs, "pad")) and np.any(a.b != 0):
            raise self.fail(n, "a bias before average pooling that counts padding cannot move")
        if n.op == "maxpool":
            self.make_positive(n, a)
            a.locked[:] = True
        self.rw.copy(n)
        self.aff[n.result] = a

    def flatten(self, n: Node) -> None:
        (x,) = n.value_operands()
        a = self.aff[x].copy()
        new = self.rw.copy(n)
        if n.op == "reshape" and not a.is_identity():
            raise self.fail(n, "a scale or bias cannot be carried through a general reshape")
        t = self.g.value_type("%" + x)
        per = t.numel_per_sample() // max(int(t.shape[1] or 1), 1) if t.rank > 2 else 1
        if n.op == "flatten" and t.rank > 2:
            a.s, a.b = np.repeat(a.s, per), np.repeat(a.b, per)
            a.channel_of, a.locked = np.repeat(a.channel_of, per), np.repeat(a.locked, per)
        self.aff[n.result] = a
        assert self.channels(new) == a.s.shape[0]

    def weighted(self, n: Node) -> None:
        (x,) = n.value_operands()
        a = self.aff[x]
        if not np.all(a.s == a.s[0]):
            raise self.fail(
                n, "a per-channel scale on the input of a weighted layer would change its weights"
            )
        new = self.rw.copy(n)
        out = Affine.identity(self.channels(new), origin=new[1:])
        out.s = out.s * a.s[0]
        out.b = self.input_bias(n, a.b)
        out.folded = list(a.folded)
        self.aff[n.result] = out

    def input_bias(self, n: Node, b: np.ndarray) -> np.ndarray:
        """``W·b`` for a bias on the input of a weighted op (see the module docstring), in
        float64, a block of output rows at a time (a large layer's weights are never copied
        whole: VGG-15's first dense layer would take 822 MB as float64)."""
        w = self.g.constants[n.const_operands()[0]].array()
        if not np.any(b != 0):
            return np.zeros(w.shape[0])
        if n.op != "dense" and any(attr_ints(n.attrs, "pad")):
            raise self.fail(n, "a bias on the input of a padded convolution cannot be folded")
        out = np.empty(w.shape[0])
        step = max(1, _INPUT_BIAS_BLOCK_BYTES // max(8 * w[0].size, 1))
        for r in range(0, w.shape[0], step):
            rows = w[r : r + step].astype(np.float64)
            if n.op == "dense":
                out[r : r + step] = rows @ b
            else:
                out[r : r + step] = np.einsum("ocuv,c->o", rows, b)
        return out

    def make_positive(self, n: Node, a: Affine) -> None:
        """Negate origin weight channels so that every ``s_c`` ≥ 0."""
        neg = np.flatnonzero(a.s < 0)
        if neg.size == 0:
            return
        if a.origin is None or np.any(a.locked[neg]) or np.any(a.channel_of[neg] < 0):
            raise self.fail(
                n,
                "a negative scale cannot be folded here (it is not directly after a weighted "
                "layer, or it comes after a max pool)",
            )
        chans = {int(c) for c in a.channel_of[neg]}
        members = np.isin(a.channel_of, list(chans))
        if np.any(a.s[members] > 0):
            raise self.fail(n, "the scales of one channel's features differ in sign")
        self.flips.setdefault(a.origin, set()).update(chans)
        a.s = np.where(members, -a.s, a.s)

    def materialize(self, n: Node, x: str, allow_negative: bool) -> str:
        a = self.aff[x].copy()
        if not allow_negative:
            self.make_positive(n, a)
            if np.any(a.s == 0):
                raise self.fail(n, "a channel has scale 0 (its activation is constant)")
        if a.folded:
            what = ", ".join(dict.fromkeys(a.folded))
            self.notes.append(f"fold-scales: {what} → one affine before {n.loc or n.op}")
        loc = a.folded[0] if a.folded else n.loc
        name = (loc or n.result).strip("/").replace("/", ".")
        return emit_scale_bias(self.rw, self.rw.env[x], a.s, a.b, name, loc)

    def apply_flips(self) -> None:
        nodes = {n.result: n for n in self.rw.graph.nodes}
        for result, chans in sorted(self.flips.items()):
            node = nodes[result]
            wname = node.const_operands()[0]
            c = self.rw.graph.constants[wname]
            data = c.array().copy()
            idx = sorted(chans)
            data[idx] = -data[idx]
            new = f"{wname}.flipped"
            self.rw.graph.constants[new] = Constant.from_array(new, c.type.kind, data)
            node.operands = (node.operands[0], "@" + new, *node.operands[2:])
            kind = "±1 sign pattern" if c.type.kind == Kind.BIPOLAR else "weights"
            self.notes.append(
                f"fold-scales: negated the {kind} of {len(idx)} output channel(s) of "
                f"{node.loc or node.result} (negative scale)"
            )


def fold_scales(g: Graph, options: PassOptions) -> PassResult:
    """See the module docstring."""
    folder = _Folder(g)
    return PassResult.of(g, folder.run(), folder.notes)


PASS = Pass(
    "fold-scales", "move α, BatchNorm, biases into one positive affine per ReLU", fold_scales
)
ALIAS = Pass(
    "fold-batchnorm", "alias of fold-scales (BatchNorm is imported as scale + bias)", fold_scales
)
