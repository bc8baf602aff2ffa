"""Run a NIR file in the SNN simulators that import NIR (the ``interop`` extra).

Each runner loads the file with the simulator's own NIR importer, feeds the same constant input
for ``steps`` steps and returns the argmax of the summed outputs after every step ([steps, N])
and the spikes each IF layer emitted over the run (in the graph's order).

What the runners change before import, and why (found with the pinned versions; each is the
importer's limitation, not the file's):

* the readout: no importer maps NIR's integrator ``I`` and Norse and sinabs map no ``Scale``;
  both are dropped and the last layer's per-step output is summed here (the readout's sum; a
  positive per-tensor scale changes no argmax);
* Norse 1.1.0 and snnTorch 1.0.0 pass ``Flatten.start_dim`` to ``torch.nn.Flatten`` as it is,
  counting the batch dimension (NIR's types have none: bsnnc writes 0, as sinabs's and
  snnTorch's own exporters do); they get ``start_dim`` 1;
* snnTorch 1.0.0 builds its ``IF`` as a ``Leaky`` with ``init_hidden=False``, which returns a
  ``(spikes, membrane)`` tuple that its graph feeds into the next layer (a TypeError); the
  runner switches the neuron to keep its own state (``init_hidden``), its β = 0.9 stays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: the importers, in the README table's order
PEERS = ("spikingjelly", "norse", "sinabs", "snntorch")


def _graph(path: Path, flatten_start: int | None) -> Any:
    """The NIR graph without its readout (``I``, ``Scale``); the last layer feeds ``output``."""
    import nir

    g = nir.read(path)
    drop = {k for k, v in g.nodes.items() if isinstance(v, nir.I | nir.Scale)}
    last = next(a for a, b in g.edges if b in drop and a not in drop)
    edges = [e for e in g.edges if drop.isdisjoint(e)] + [(last, "output")]
    nodes = {k: v for k, v in g.nodes.items() if k not in drop}
    if flatten_start is not None:
        nodes = {
            k: dataclasses.replace(v, start_dim=flatten_start) if isinstance(v, nir.Flatten) else v
            for k, v in nodes.items()
        }
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


class _Spikes:
    """Forward hooks that count each IF layer's spikes."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def hook(self, name: str) -> Callable[[Any, Any, Any], None]:
        def record(module: Any, inputs: Any, output: Any) -> None:
            spikes = output[0] if isinstance(output, tuple) else output
            self.counts[name] = self.counts.get(name, 0) + int(spikes.sum().item())

        return record

    def attach(self, model: Any, kinds: tuple[str, ...]) -> None:
        for name, module in model.named_modules():
            if type(module).__name__ in kinds:
                module.register_forward_hook(self.hook(name))

    def per_layer(self, order: list[str]) -> list[int]:
        """Counts in the graph's IF order (modules are named by their NIR node)."""
        by_node = {k.rsplit(".", 1)[-1]: v for k, v in self.counts.items()}
        return [by_node[k] for k in order]


def _run(step: Callable[[Any], Any], x: np.ndarray, steps: int) -> np.ndarray:
    import torch

    total, preds = None, []
    with torch.no_grad():
        inp = torch.from_numpy(x)
        for _ in range(steps):
            out = step(inp).double()
            total = out if total is None else total + out
            preds.append(total.argmax(1).numpy())
    return np.array(preds)


def _ifs(g: Any) -> list[str]:
    """The IF nodes of ``g``, read before an importer may change the graph."""
    import nir

    names = [k for k, v in g.nodes.items() if isinstance(v, nir.IF)]
    return sorted(names, key=lambda k: int(k.rsplit("_", 1)[-1]))  # bsnnc's IR order


def _simulate(
    model: Any, kinds: tuple[str, ...], ifs: list[str], x: np.ndarray, steps: int, state: bool
) -> tuple[np.ndarray, list[int]]:
    """Run ``model`` (``model(x, state) → (out, state)`` if ``state``, else ``model(x)`` with
    its state inside, its output possibly a tuple) and count the spikes of its ``kinds``."""
    spikes = _Spikes()
    spikes.attach(model, kinds)
    carried: list[Any] = [None]

    def step(inp: Any) -> Any:
        if state:
            out, carried[0] = model(inp, carried[0])
            return out
        out = model(inp)
        return out[0] if isinstance(out, tuple) else out

    return _run(step, x, steps), spikes.per_layer(ifs)


def run_spikingjelly(path: Path, x: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    """SpikingJelly 2.0's ``import_from_nir(dt=1)``: ``IFNode`` (fires at v ≥ θ, resets to
    ``v_reset``, starts at ``v_reset``)."""
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    g = _graph(path, None)
    ifs = _ifs(g)
    model = import_from_nir(g, dt=1.0)
    return _simulate(model, ("_NIRStatefulModule",), ifs, x, steps, state=True)


def run_norse(path: Path, x: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    """Norse 1.1's ``from_nir(dt=1)``: ``IAFCell`` (v += I, fires at v > θ, resets to 0)."""
    from norse.torch.utils.import_nir import from_nir

    g = _graph(path, 1)
    ifs = _ifs(g)
    model = from_nir(g, dt=1.0)
    return _simulate(model, ("IAFCell",), ifs, x, steps, state=True)


def run_sinabs(path: Path, x: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    """sinabs 2.0's ``from_nir``: ``IAFSqueeze`` (multi-spike, subtractive reset, membrane
    clipped at −θ)."""
    import sinabs

    g = _graph(path, None)
    ifs = _ifs(g)
    model = sinabs.from_nir(g, batch_size=x.shape[0])
    return _simulate(model, ("IAFSqueeze",), ifs, x, steps, state=False)


def run_snntorch(path: Path, x: np.ndarray, steps: int) -> tuple[np.ndarray, list[int]]:
    """snnTorch 1.0's ``import_from_nir``: ``IF`` as ``Leaky`` with β = 0.9 (its issue #416),
    subtractive reset, fires at v > θ."""
    import snntorch
    from snntorch import utils
    from snntorch.import_nir import import_from_nir

    g = _graph(path, 1)
    ifs = _ifs(g)
    model = import_from_nir(g)
    for module in model.modules():
        if isinstance(module, snntorch.SpikingNeuron):
            module.init_hidden = True
    utils.reset(model)
    return _simulate(model, ("Leaky",), ifs, x, steps, state=False)


RUNNERS: dict[str, Callable[[Path, np.ndarray, int], tuple[np.ndarray, list[int]]]] = {
    "spikingjelly": run_spikingjelly,
    "norse": run_norse,
    "sinabs": run_sinabs,
    "snntorch": run_snntorch,
}
