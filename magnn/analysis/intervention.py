"""Massive activations as biases: Sun et al.'s intervention on a graph model's attention layers.

For each attention layer, the massive activations are the entries (edge e, channel c) of the
layer's tapped edge activation A = edge_out (in "gt" mode the pre-softmax score vector
w_ij = q_i * k_j * e_ij / sqrt(D), SPEC §3) whose per-edge ratio |A_ec| / med_e exceeds the
threshold: exactly the entries the detector counts as massive (SPEC §4). Two edits, one layer at a
time (and all layers together):

- zero: every massive entry set to 0;
- mean: every massive entry set to its channel's mean over the split's massive entries of that
  channel (signed, measured on the unedited model in a first pass).

If MAs act as fixed biases, the mean edit leaves the task loss almost unchanged while the zero
edit hurts: the asymmetry Sun et al. report for LLMs. The edit reaches everything the entry
feeds, as if w_ij itself had been changed before the logit: the layer runs a second time with
the logit shift sum_d delta_ij[h, d] added to its structural bias (the kernels add the bias
before the clamp, so the logit is exactly the edited score's), and its edge_out is returned with
the entries replaced (the edge stream of GraphTransformer reads it). `edited_<mode>` counts the
entries each edit changed, summed over the split's batches (all layers at once: a layer's massive
entries are found on its input as edited upstream). Statistics collected during an edited forward
are those of the unedited call, counted once. Only magnn's
`FusedEdgeAttention` layers in "gt" mode can be edited this way; SAN's fake edges (its second
call) take no structural bias, so their massive entries are counted as `unreached` and left.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..core.constants import MA_THRESHOLD
from ..core.errors import UserError

__all__ = ["MODES", "massive_mask", "attention_layers", "run", "InterventionResult", "batches_of", "mean_loss",
           "task_loss"]

MODES = ("zero", "mean")
TINY = torch.finfo(torch.float32).tiny  # a zero median's stand-in (SPEC §4)


def _ratios(edge_out: torch.Tensor) -> torch.Tensor:
    """float [R, C]: |a_ec| / med_e, med_e the lower median of |a_e| over the C channels (torch.median's
    convention; a zero median replaced by the smallest normal float32, SPEC §4)."""
    magnitude = edge_out.detach().abs().float()
    if magnitude.shape[0] == 0:
        return magnitude
    return magnitude / magnitude.median(dim=1, keepdim=True).values.clamp_min(TINY)


def massive_mask(edge_out: torch.Tensor, threshold: float) -> torch.Tensor:
    """bool [R, C]: the entries whose per-edge ratio |a_ec| / med_e exceeds `threshold` (SPEC §4)."""
    return _ratios(edge_out) > threshold


def attention_layers(model: torch.nn.Module) -> dict:
    """{module path: layer} of the layers the intervention can edit: magnn's FusedEdgeAttention in
    "gt" mode. Raises UserError when the model has none or an additive one (a post-softmax tap)."""
    from ..layers import FusedEdgeAttention

    layers = {name: m for name, m in model.named_modules() if isinstance(m, FusedEdgeAttention)}
    additive = [name for name, m in layers.items() if m.mode != "gt"]
    if additive:
        raise UserError(f"the MA intervention edits pre-softmax scores; layers {additive} run mode='additive', whose "
                        "edge_out is the post-softmax message: analyse a model whose layers use mode='gt'")
    if not layers:
        raise UserError(f"{type(model).__name__} has no magnn FusedEdgeAttention layer to edit; the intervention "
                        "works on magnn's models (GraphTransformer, GraphiT, SAN) and models built on the layer")
    return layers


def _edge_rows(args: tuple, kwargs: dict) -> int:
    """The real edges of a call (edge_attr's rows): the rows of edge_out the structural bias reaches."""
    edge_attr = args[2] if len(args) > 2 else kwargs["edge_attr"]
    return int(edge_attr.shape[0])


class _Measure:
    """Forward hook: per channel, the sum and count of the massive entries of each call (real edges)."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.total: Optional[torch.Tensor] = None
        self.count: Optional[torch.Tensor] = None
        self.edges = self.ma_edges = self.unreached = 0
        self.max_ratio = 0.0  # the largest |a_ec| / med_e of the real edges: how far from the threshold

    def __call__(self, module, args, kwargs, output):
        edge_out = output[1]
        rows = _edge_rows(args, kwargs)
        mask = massive_mask(edge_out, self.threshold)
        if rows:
            self.max_ratio = max(self.max_ratio, float(_ratios(edge_out[:rows]).max()))
        real, values = mask[:rows], edge_out[:rows].detach().double()
        if self.total is None:
            self.total = torch.zeros(edge_out.shape[1], dtype=torch.float64)
            self.count = torch.zeros(edge_out.shape[1], dtype=torch.long)
        self.total += torch.where(real, values, 0.0).sum(0).cpu()
        self.count += real.sum(0).cpu()
        self.edges += rows
        self.ma_edges += int(real.any(1).sum())
        self.unreached += int(mask[rows:].sum())

    def means(self) -> Optional[torch.Tensor]:
        """float [C]: each channel's mean massive value (NaN where the channel had none)."""
        if self.total is None:
            return None
        return torch.where(self.count > 0, self.total / self.count.clamp_min(1), float("nan"))


class _Edit:
    """Forward hook: replaces the layer's output by a second call in which its massive entries were
    set to `targets` (None: zero; else float [C], NaN: leave that channel's entries) (module docstring)."""

    def __init__(self, threshold: float, targets: Optional[torch.Tensor]):
        self.threshold, self.targets = threshold, targets
        self.edited = 0

    def __call__(self, module, args, kwargs, output):
        node_out, edge_out = output
        rows = _edge_rows(args, kwargs)
        real = edge_out[:rows]
        mask = massive_mask(real, self.threshold)
        target = torch.zeros_like(real) if self.targets is None else \
            self.targets.to(real.device, real.dtype).expand_as(real)
        mask &= ~torch.isnan(target)
        if not bool(mask.any()):
            return output
        delta = torch.where(mask, target - real, torch.zeros_like(real))
        shift = delta.view(rows, module.heads, module.head_dim).sum(-1)
        bias = kwargs.get("bias")
        if bias is not None:
            shift = shift + (bias.view(rows, 1) if bias.dim() == 1 else bias)
        with module.paused_collection():  # statistics are the first (unedited) call's, counted once
            node_out, edited = module.forward(*args, **{**kwargs, "bias": shift.to(real.dtype), "stats": None})
        edited = edited.clone()
        edited[:rows] = real + delta
        self.edited += int(mask.sum())
        return node_out, edited


@contextlib.contextmanager
def _hooks(layers: dict, make: Callable):
    """Registers make(name) (with kwargs) on each layer; yields {name: hook}; removes them after."""
    hooks, handles = {}, []
    try:
        for name, layer in layers.items():
            hooks[name] = make(name)
            handles.append(layer.register_forward_hook(hooks[name], with_kwargs=True))
        yield hooks
    finally:
        for handle in handles:
            handle.remove()


def batches_of(graphs, batch_size: int, device) -> list:
    """The split as a list of batches on `device`: a DataLoader's batches, or `graphs` (PyG Data) batched."""
    from torch_geometric.loader import DataLoader

    loader = graphs if isinstance(graphs, DataLoader) else DataLoader(list(graphs), batch_size=batch_size)
    return [batch.to(device) for batch in loader]


def task_loss(model: torch.nn.Module, loss_fn: Optional[Callable]) -> Callable:
    """`loss_fn`, or for a magnn model (which knows its dataset: `model.info`) its training loss."""
    if loss_fn is not None:
        return loss_fn
    info = getattr(model, "info", None)
    if info is None:
        raise UserError(f"{type(model).__name__} does not say its task (no .info): pass loss_fn=, "
                        "e.g. magnn.train.loss_function('graph_regression')")
    from ..train import loss_function

    return loss_function(info.task)


@torch.no_grad()
def mean_loss(model, batches: list, loss_fn: Callable) -> float:
    """The task loss over every batch, weighted by graphs (the attack's convention)."""
    total, graphs = 0.0, 0
    for batch in batches:
        total += float(loss_fn(model(batch), batch.y)) * batch.num_graphs
        graphs += batch.num_graphs
    return total / max(graphs, 1)


@dataclass
class InterventionResult:
    """The intervention's table: per layer the massive entries and the loss under each edit."""

    threshold: float
    graphs: int
    loss_clean: float
    layers: list = field(default_factory=list)  # one dict per layer (to_dict's "layers")
    all_layers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"definition": "entries with |a_ec| / median_c |a_ec| > threshold; mean: per channel over the split",
                "threshold": self.threshold, "graphs": self.graphs, "loss_clean": self.loss_clean,
                "layers": self.layers, "all_layers": self.all_layers}


def run(model: torch.nn.Module, graphs, loss_fn: Optional[Callable] = None, *, threshold: float = MA_THRESHOLD, batch_size: int = 64,
        device="cpu", progress: bool = True) -> InterventionResult:
    """Sun et al.'s intervention on `model` over `graphs` (PyG Data or a DataLoader; a test split):
    the clean loss, then per attention layer (and all at once) the loss with its massive entries
    set to zero and to their channel mean (module docstring). loss_fn(output, y) -> scalar (default: a
    magnn model's training loss, `task_loss`). The model runs in eval mode and is restored after."""
    from tqdm import tqdm

    from ..core.progress import progress_enabled

    layers, loss_fn = attention_layers(model), task_loss(model, loss_fn)
    was_training = model.training
    model.eval().to(device)
    batches = batches_of(graphs, batch_size, device)
    try:
        with _hooks(layers, lambda name: _Measure(threshold)) as measured:
            clean = mean_loss(model, batches, loss_fn)
        runs = [(name, mode) for name in [*layers, None] for mode in MODES]
        losses, edited = {}, {}
        for name, mode in tqdm(runs, desc="MA intervention", disable=not progress_enabled(progress), leave=False):
            chosen = layers if name is None else {name: layers[name]}
            targets = (lambda n: None) if mode == "zero" else (lambda n: measured[n].means())
            with _hooks(chosen, lambda n: _Edit(threshold, targets(n))) as edits:
                losses[name, mode] = mean_loss(model, batches, loss_fn)
            edited[name, mode] = sum(edit.edited for edit in edits.values())
    finally:
        model.train(was_training)
    result = InterventionResult(float(threshold), sum(b.num_graphs for b in batches), clean)
    for name, measure in measured.items():
        count = measure.count if measure.count is not None else torch.zeros(0, dtype=torch.long)
        row = {"name": name, "edges": measure.edges, "ma_edges": measure.ma_edges, "ma_entries": int(count.sum()),
               "unreached_entries": measure.unreached, "max_ratio": measure.max_ratio,
               "channels": {int(c): int(count[c]) for c in torch.nonzero(count).reshape(-1).tolist()}}
        for mode in MODES:
            row[f"loss_{mode}"] = losses[name, mode]
            row[f"delta_{mode}"] = losses[name, mode] - clean
            row[f"edited_{mode}"] = edited[name, mode]
        result.layers.append(row)
    for mode in MODES:
        result.all_layers[f"loss_{mode}"] = losses[None, mode]
        result.all_layers[f"delta_{mode}"] = losses[None, mode] - clean
        result.all_layers[f"edited_{mode}"] = edited[None, mode]
    return result
