"""int8 sensitivity of the attention inputs: what massive activations cost at 8 bits.

Each attention layer's inputs q, k, v and e (and SAN's fake-edge q2, k2, e2) are fake-quantised
to symmetric int8 with one scale per tensor and call, s = max|x| / 127,
x_q = clamp(round(x / s), -127, 127) * s, by forward hooks on the layer's projection modules
(lin_q, lin_k, lin_v, lin_e, ...): the kernels then run on the quantised inputs. One large entry
sets s for the whole tensor, so the outliers that feed massive scores (w_ij = q_i k_j e_ij / sqrt(D))
coarsen every other entry's grid: the per-tensor scheme is the one MAs hurt most.

Per layer, quantised alone (the layers before it in float): each input's relative error
||x_q - x|| / ||x||, crest factor max|x| / rms(x) and the int8 step in units of the median |x|
(step_over_median, the mean over calls of s / median|x|: above 1 a typical entry keeps at most one
or two levels), the relative error of the layer's node_out,
and the task loss; then every layer quantised at once. The EBT parameters k', e', v' stay in float
(they are parameters, not activations).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

from .intervention import attention_layers, batches_of, task_loss

__all__ = ["INPUTS", "fake_quantise", "run"]

INPUTS = {"lin_q": "q", "lin_k": "k", "lin_v": "v", "lin_e": "e", "lin_q2": "q2", "lin_k2": "k2", "lin_e2": "e2"}
LEVELS = 127  # symmetric int8: -127..127


def fake_quantise(x: torch.Tensor) -> torch.Tensor:
    """x rounded to symmetric int8 with one per-tensor absmax scale (x itself when all zero or empty)."""
    if x.numel() == 0:
        return x
    scale = x.detach().abs().max() / LEVELS
    if not bool(scale > 0) or not bool(torch.isfinite(scale)):
        return x
    return torch.clamp(torch.round(x / scale), -LEVELS, LEVELS) * scale


class _Sums:
    """Running sums of one tensor's squared error, squared values, count and max |x|."""

    def __init__(self):
        self.error = self.energy = 0.0
        self.count, self.peak = 0, 0.0
        self.coarseness, self.calls = 0.0, 0

    def add(self, x: torch.Tensor, x_q: torch.Tensor) -> None:
        x, x_q = x.detach().double(), x_q.detach().double()
        self.error += float(((x_q - x) ** 2).sum())
        self.energy += float((x ** 2).sum())
        self.count += x.numel()
        if x.numel():
            self.peak = max(self.peak, float(x.abs().max()))
            median = float(x.abs().median())
            self.coarseness += float(x.abs().max()) / LEVELS / median if median > 0 else float("inf")
            self.calls += 1

    def to_dict(self) -> dict:
        rms = (self.energy / self.count) ** 0.5 if self.count else float("nan")
        return {"rel_error": (self.error / self.energy) ** 0.5 if self.energy else float("nan"),
                "crest": self.peak / rms if rms and rms == rms else float("nan"),
                "step_over_median": self.coarseness / self.calls if self.calls else float("nan")}


def _projections(layer) -> dict:
    return {attr: getattr(layer, attr) for attr in INPUTS if isinstance(getattr(layer, attr, None), torch.nn.Module)}


@contextlib.contextmanager
def _quantised(layers: dict, sums: dict):
    """Fake-quantises the inputs of `layers` while inside; errors go into sums[(layer, input)]."""
    handles = []

    def hook(key):
        def quantise_output(module, inputs, output):
            quantised = fake_quantise(output)
            sums.setdefault(key, _Sums()).add(output, quantised)
            return quantised
        return quantise_output

    try:
        for name, layer in layers.items():
            for attr, module in _projections(layer).items():
                handles.append(module.register_forward_hook(hook((name, INPUTS[attr]))))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def _node_outputs(layers: dict, into: dict):
    handles = [layer.register_forward_hook(lambda m, i, out, name=name: into.__setitem__(name, out[0].detach()))
               for name, layer in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _loss(model, batch, loss_fn) -> float:
    return float(loss_fn(model(batch), batch.y)) * batch.num_graphs


@torch.no_grad()
def run(model: torch.nn.Module, graphs, loss_fn: Optional[Callable] = None, *, batch_size: int = 64, device="cpu",
        progress: bool = True) -> dict:
    """int8 sensitivity of `model` over `graphs` (PyG Data or a DataLoader): per attention layer
    quantised alone, and all at once (module docstring); loss_fn as `intervention.run`'s. Returns
    report.json's "quantisation" entry."""
    from tqdm import tqdm

    from ..core.progress import progress_enabled

    layers, loss_fn = attention_layers(model), task_loss(model, loss_fn)
    was_training = model.training
    model.eval().to(device)
    batches = batches_of(graphs, batch_size, device)
    sums, out_error, losses = {}, {name: _Sums() for name in layers}, {}
    graphs_seen = sum(b.num_graphs for b in batches)
    try:
        for batch in tqdm(batches, desc="int8 sensitivity", disable=not progress_enabled(progress), leave=False):
            clean_out, quantised_out = {}, {}
            with _node_outputs(layers, clean_out):
                losses["clean"] = losses.get("clean", 0.0) + _loss(model, batch, loss_fn)
            for name, layer in [*layers.items(), (None, None)]:
                chosen = layers if name is None else {name: layer}
                with _quantised(chosen, sums if name is not None else {}), _node_outputs(chosen, quantised_out):
                    losses[name] = losses.get(name, 0.0) + _loss(model, batch, loss_fn)
                if name is not None:
                    out_error[name].add(clean_out[name], quantised_out[name])
    finally:
        model.train(was_training)
    clean = losses["clean"] / max(graphs_seen, 1)
    rows = []
    for name in layers:
        loss = losses[name] / max(graphs_seen, 1)
        inputs = {label: sums[key].to_dict() for key in sums if key[0] == name for label in [key[1]]}
        rows.append({"name": name, "inputs": inputs, "output_rel_error": out_error[name].to_dict()["rel_error"],
                     "loss": loss, "delta_loss": loss - clean})
    every = losses[None] / max(graphs_seen, 1)
    return {"scheme": "int8, symmetric, per-tensor absmax (one scale per tensor and call)", "graphs": graphs_seen,
            "loss_clean": clean, "layers": rows, "all_layers": {"loss": every, "delta_loss": every - clean}}
