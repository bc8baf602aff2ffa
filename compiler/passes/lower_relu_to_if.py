"""lower-relu-to-if: every ReLU becomes an integrate-and-fire neuron; outputs accumulate.

Pre: fold-scales ran (ANN form). Post: no ``relu`` remains; each is ``if {theta=1.0,
reset=<option>, init=<option>}`` (thresholds are set by fold-threshold-normalization; the
membrane starts at init·θ), and every graph output
``y`` is replaced by ``readout(y)``, the final layer's membrane accumulated over time, with no
threshold. Read as an ANN (rates), ``if`` with θ = 1 is ``relu`` and ``readout`` is the identity,
so the graph still computes the same function.

A quantized activation ``quant {step Δ, levels L}`` (a QONNX ``Quant`` or a QCDQ chain after a
ReLU) becomes one ``if {theta=1, levels=L, step=Δ, ...}`` on the quantizer's pre-activation
(the ReLU in front of it is dropped when the quantizer is its only reader: ``quant`` clips at
0 itself). Read as an ANN that ``if`` is the quantizer, exactly; fold-threshold-normalization
takes its λ = L·Δ from it instead of calibrating.
"""

from __future__ import annotations

from bsnnc.compiler.passes.base import Pass, PassOptions, PassResult
from bsnnc.ir.builder import Rewriter
from bsnnc.ir.errors import BsnncError
from bsnnc.ir.graph import Attrs, Graph


def lower_relu_to_if(g: Graph, options: PassOptions) -> PassResult:
    """See the module docstring."""
    if any(n.op == "readout" for n in g.nodes):
        raise BsnncError("lower-relu-to-if: the graph is already lowered (it has a readout)")
    rw = Rewriter(g)
    attrs: Attrs = {"theta": 1.0, "reset": options.reset, "init": options.v_init}
    nodes, users = g.node_map(), g.users()
    # ReLUs read only by quantizers: the quantizer's IF replaces both
    absorbed = {
        n.result
        for n in g.nodes
        if n.op == "relu" and users[n.result] and all(u.op == "quant" for u in users[n.result])
    }
    for n in g.nodes:
        if n.result in absorbed:
            continue
        if n.op == "relu":
            x = rw.operand(n.operands[0])
            rw.env[n.result] = rw.add("if", [x], attrs, loc=n.loc)
        elif n.op == "quant":
            src = nodes[n.value_operands()[0]]
            x = rw.operand(src.operands[0] if src.result in absorbed else n.operands[0])
            q = {**attrs, "levels": n.attrs["levels"], "step": n.attrs["step"]}
            rw.env[n.result] = rw.add("if", [x], q, loc=n.loc)
        else:
            rw.copy(n)
    for o in g.outputs:
        rw.env[o] = rw.add("readout", [rw.env[o]], loc=g.node_map()[o].loc)
    return PassResult.of(g, rw.finish_from_source())


PASS = Pass("lower-relu-to-if", "ReLU → IF neuron; outputs → readout", lower_relu_to_if)
