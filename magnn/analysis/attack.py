"""Explicit Bias Attack (SPEC §7, §10): optimised vs random input noise of the same std.

The protocol of the paper's code (SPEC §10), which `explicit_bias_attack` follows:

- noise n is added to the node embedding (after the input embedding layer) and
  to the edge embedding, each rescaled to standard deviation sigma on every
  forward: `h + n / std(n) * sigma` (options: node-only noise, `edge_noise=False`;
  one noise vector per embedding shared by every node / edge and every batch,
  `shared_noise=True`; otherwise one noise tensor per validation batch);
- the model is frozen in eval mode (no parameter changes, BatchNorm running
  statistics untouched);
- Adam on the noise (lr 7e-4), one step per validation batch (batch 128),
  maximising the task loss; ReduceLROnPlateau(factor 0.5, patience 15) on each
  epoch's mean loss; stop when the lr falls below 1e-6 or at the epoch cap
  (1000; a quick run lowers the cap, never the protocol);
- random baseline: one Gaussian draw, rescaled the same way; the optimisation
  starts from that draw;
- `gain = loss_optimised / loss_random - 1`, loss_optimised being the mean loss
  over the split with the final noise.

The loss is the task loss over the predictions the split labels: every graph of a
batch of graphs; on one large graph (batches of neighbour-sampled subgraphs,
`num_seeds` set: magnn.data.sampling), the seed nodes only, weighted by seeds.
The other nodes of a sampled subgraph are neighbours whose own neighbourhoods were
cut off (the last hop's have no incoming edge), not nodes of the split.

A model whose output does not depend on its input embeddings at this sigma (e.g. a
briefly trained one: in eval mode its BatchNorm layers still hold their initial
running statistics, and without residual connections each layer shrinks what
varies between nodes) leaves the loss unchanged under the random noise; the
gain is then rounding, not a measurement. The result says so: `measurable` is
False when the random noise moves the mean loss by at most `MEASURABLE_EFFECT`
(relative), and `note` says why.

magnn's models take the noise through `forward(data, node_noise=, edge_noise=)`
(GraphiT and SAN add the same edge noise to every layer's edge embedding);
any other model gets it through forward hooks on its node / edge embedding
modules (`embedding=`, `edge_embedding=`; found by name when not given).
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["AttackProtocol", "AttackResult", "explicit_bias_attack", "scaled_noise", "find_embedding",
           "MEASURABLE_EFFECT"]

log = logging.getLogger("magnn.analysis.attack")

# the least relative change of the mean loss under the random noise that makes a gain a measurement:
# ~10 float32 roundings of the loss (2**-23 ~ 1.2e-7 each); below it the clean, random and optimised
# losses agree to the last few bits and the gain is rounding
MEASURABLE_EFFECT = 1e-6


@dataclass
class AttackProtocol:
    """The attack's settings (SPEC §10 defaults); `to_dict()` goes into report.json."""

    lr: float = 7e-4
    max_epochs: int = 1000
    batch_size: int = 128
    factor: float = 0.5  # ReduceLROnPlateau
    patience: int = 15
    min_lr: float = 1e-6  # stop when the lr falls below
    edge_noise: bool = True  # False: node-only noise
    shared_noise: bool = False  # one noise vector per embedding, broadcast to every node / edge and batch

    def validate(self) -> "AttackProtocol":
        if not self.lr > 0 or not 0 < self.factor < 1 or not self.min_lr >= 0:
            raise ValueError(f"attack: need lr > 0, 0 < factor < 1, min_lr >= 0, got {self}")
        if self.max_epochs < 0 or self.batch_size < 1 or self.patience < 0:
            raise ValueError(f"attack: need max_epochs >= 0, batch_size >= 1, patience >= 0, got {self}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AttackResult:
    sigma: float
    loss_clean: float
    loss_random: float
    loss_optimised: float
    epochs: int  # epochs run (each: one Adam step per validation batch)
    stop_reason: str = "max_epochs"  # "min_lr" or "max_epochs"
    final_lr: float = float("nan")
    lr_reductions: int = 0
    epoch_losses: list = field(default_factory=list)  # mean loss of each epoch (noise before each step)
    protocol: Optional[dict] = None

    @property
    def gain(self) -> float:
        return self.loss_optimised / self.loss_random - 1.0

    @property
    def noise_effect(self) -> float:
        """|loss_random - loss_clean| / |loss_clean|: how far the random noise moved the loss."""
        return abs(self.loss_random - self.loss_clean) / max(abs(self.loss_clean), 1e-30)

    @property
    def measurable(self) -> bool:
        """Whether the random noise moved the loss by more than MEASURABLE_EFFECT (else the gain is rounding)."""
        return self.noise_effect > MEASURABLE_EFFECT

    @property
    def note(self) -> Optional[str]:
        """Why the gain is not a measurement, or None when it is."""
        if self.measurable:
            return None
        return (f"not measurable: the random noise of std {self.sigma:g} moved the loss by {self.noise_effect:.1e} "
                f"(relative, at most {MEASURABLE_EFFECT:g}), so the model's output does not depend on its input "
                "embeddings at this sigma and the gain is rounding (a briefly trained model in eval mode, whose "
                "BatchNorm still holds its initial running statistics, is such a model: train longer)")

    def to_dict(self) -> dict:
        return {"sigma": self.sigma, "loss_clean": self.loss_clean, "loss_random": self.loss_random,
                "loss_optimised": self.loss_optimised, "gain": self.gain, "gain_percent": 100 * self.gain,
                "epochs": self.epochs, "steps": self.epochs, "stop_reason": self.stop_reason,
                "final_lr": self.final_lr, "lr_reductions": self.lr_reductions, "protocol": self.protocol,
                "noise_effect": self.noise_effect, "measurable": self.measurable, "note": self.note}


def scaled_noise(raw: torch.Tensor, sigma: float) -> torch.Tensor:
    """raw rescaled to standard deviation exactly sigma (population std over all its entries)."""
    if raw.numel() == 0:
        return raw
    return raw / raw.std(unbiased=False).clamp_min(1e-12) * sigma


class _NoiseHook:
    """Forward hook adding the current batch's scaled noise to a module's output."""

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.raw: Optional[torch.Tensor] = None

    def __call__(self, module, inputs, output):
        if self.raw is None:
            return output
        noise = scaled_noise(self.raw, self.sigma).to(output.dtype)
        return output + noise.expand_as(output)


def find_embedding(model: nn.Module, names=("node_encoder", "atom_encoder", "encoder")) -> nn.Module:
    for name in names:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"cannot find the input node embedding of {type(model).__name__}; pass embedding=")


def _takes_noise(model: nn.Module) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "node_noise" in parameters and "edge_noise" in parameters


class _Injector:
    """Adds the current noise to the node (and edge) embedding, by forward kwargs or by hooks."""

    def __init__(self, model, sigma, edge_noise, embedding, edge_embedding):
        self.model, self.sigma = model, sigma
        self.kwargs = _takes_noise(model) and embedding is None and edge_embedding is None
        self.hooks, self.handles = [], []
        if not self.kwargs:
            node_module = find_embedding(model) if embedding is None else embedding
            modules = [node_module]
            if edge_noise:
                edge_module = edge_embedding if edge_embedding is not None else getattr(model, "edge_encoder", None)
                if not isinstance(edge_module, nn.Module):
                    raise ValueError(f"cannot find the edge embedding of {type(model).__name__}; pass "
                                     "edge_embedding= or use node-only noise (edge_noise=False)")
                modules.append(edge_module)
            self.hooks = [_NoiseHook(sigma) for _ in modules]
            self.handles = [m.register_forward_hook(h) for m, h in zip(modules, self.hooks)]

    def shapes(self, batch, width_of, edge_noise, shared):
        """The raw noise shapes of one batch: node [N, W] (and edge [E, W]); [W] when shared."""
        node_width, edge_width = width_of(batch)
        shapes = [(node_width,) if shared else (batch.num_nodes, node_width)]
        if edge_noise:
            shapes.append((edge_width,) if shared else (batch.edge_index.shape[1], edge_width))
        return shapes

    def __call__(self, batch, noise):
        if self.kwargs:
            kwargs = {}
            if noise is not None:
                names = ("node_noise", "edge_noise")
                sizes = (batch.num_nodes, batch.edge_index.shape[1])
                for name, size, raw in zip(names, sizes, noise):
                    scaled = scaled_noise(raw, self.sigma)
                    kwargs[name] = scaled.expand(size, scaled.shape[-1]) if scaled.dim() == 1 else scaled
            return self.model(batch, **kwargs)
        for index, hook in enumerate(self.hooks):
            hook.raw = None if noise is None else noise[index]
        return self.model(batch)

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _widths(model, injector, embedding, edge_embedding):
    """A function batch -> (node width, edge width) of the embeddings the noise is added to."""
    if injector.kwargs:
        width = int(model.hidden)
        return lambda batch: (width, width)
    captured = {}
    modules = [find_embedding(model) if embedding is None else embedding,
               edge_embedding if edge_embedding is not None else getattr(model, "edge_encoder", None)]

    def measure(batch):
        if "widths" not in captured:
            seen = {}
            handles = [m.register_forward_hook(lambda _m, _i, out, slot=slot: seen.setdefault(slot, out.shape[-1]) and None)
                       for slot, m in enumerate(modules) if isinstance(m, nn.Module)]
            try:
                with torch.no_grad():
                    for hook in injector.hooks:
                        hook.raw = None
                    model(batch)
            finally:
                for handle in handles:
                    handle.remove()
            captured["widths"] = (seen[0], seen.get(1, seen[0]))  # (node embedding, edge embedding)
        return captured["widths"]

    return measure


def explicit_bias_attack(
    model: nn.Module,
    graphs,
    loss_fn: Callable,
    *,
    sigma: float,
    protocol: Optional[AttackProtocol] = None,
    embedding: Optional[nn.Module] = None,
    edge_embedding: Optional[nn.Module] = None,
    device="cpu",
    seed: int = 0,
    progress: bool = True,
) -> AttackResult:
    """Attack `model` on `graphs` (the validation split) with noise of std `sigma` (module docstring).

    The model is frozen in eval mode for the attack; its parameters' requires_grad flags and its
    train/eval mode are restored afterwards. Returns the clean, random-noise and optimised losses.
    Edge noise goes into the [E, hidden] edge embedding, which a model with fused_edge_projection
    never builds: such a model is attacked through its `unfused()` copy (same function).
    """
    from torch_geometric.loader import DataLoader

    protocol = (protocol or AttackProtocol()).validate()
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if protocol.edge_noise and embedding is None and edge_embedding is None and hasattr(model, "unfused"):
        model = model.unfused()
    was_training = model.training
    model = model.eval().to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    batches = [b.to(device) for b in DataLoader(graphs, batch_size=protocol.batch_size, shuffle=False)]
    injector = _Injector(model, sigma, protocol.edge_noise, embedding, edge_embedding)
    try:
        width_of = _widths(model, injector, embedding, edge_embedding)
        random_noise = _random_noise(injector, batches, width_of, protocol, torch.Generator().manual_seed(seed), device)
        clean = _mean_loss(injector, loss_fn, batches, [None] * len(batches))
        loss_random = _mean_loss(injector, loss_fn, batches, random_noise)
        optimised, run = _optimise(injector, loss_fn, batches, random_noise, protocol,
                                   desc=f"attack sigma={sigma:g}", progress=progress)
        loss_optimised = _mean_loss(injector, loss_fn, batches, [[raw.detach() for raw in noise] for noise in optimised])
    finally:
        injector.remove()
        for parameter in trainable:
            parameter.requires_grad_(True)
        model.train(was_training)
    result = AttackResult(sigma, clean, loss_random, loss_optimised, len(run["epoch_losses"]), run["stop_reason"],
                          run["final_lr"], run["reductions"], run["epoch_losses"], protocol.to_dict())
    if not result.measurable:
        log.warning(f"explicit bias attack of {type(model).__name__}, sigma {sigma:g}: {result.note}")
    return result


def _random_noise(injector, batches, width_of, protocol: AttackProtocol, generator, device) -> list:
    """Per batch, the raw noise tensors of the random draw (one draw shared by every batch with shared_noise)."""
    if protocol.shared_noise:
        shared = [torch.randn(s, generator=generator).to(device)
                  for s in injector.shapes(batches[0], width_of, protocol.edge_noise, True)] if batches else []
        return [shared for _ in batches]
    return [[torch.randn(s, generator=generator).to(device)
             for s in injector.shapes(b, width_of, protocol.edge_noise, False)] for b in batches]


def _scored_loss(loss_fn, prediction, batch):
    """(the batch's loss, its weight): over every graph of a batch of graphs; over the seed rows only
    of a batch of sampled subgraphs (`num_seeds`), weighted by seeds (module docstring)."""
    from ..data.sampling import seed_rows

    rows = seed_rows(batch)
    if rows is None:
        return loss_fn(prediction, batch.y), batch.num_graphs
    rows = rows.to(prediction.device)
    return loss_fn(prediction[rows], batch.y[rows]), rows.numel()


def _mean_loss(injector, loss_fn, batches, noises) -> float:
    """The loss over every batch with its noise (None: clean), weighted by graphs (seeds), without gradients."""
    total, seen = 0.0, 0
    with torch.no_grad():
        for batch, noise in zip(batches, noises):
            loss, weight = _scored_loss(loss_fn, injector(batch, noise), batch)
            total += float(loss) * weight
            seen += weight
    return total / max(seen, 1)


def _optimise(injector, loss_fn, batches, random_noise, protocol: AttackProtocol, *, desc: str, progress: bool):
    """Ascend the loss from the random draw: one Adam step per batch per epoch, the lr halved on a
    plateau, stopping below min_lr or after max_epochs. Returns (the noise per batch, the run's record)."""
    from tqdm import tqdm

    from ..core.progress import progress_enabled

    if protocol.shared_noise:
        leaves = [raw.clone().requires_grad_() for raw in (random_noise[0] if batches else [])]
        optimised = [leaves for _ in batches]
    else:
        leaves = [raw.clone().requires_grad_() for noise in random_noise for raw in noise]
        per_batch = len(leaves) // max(len(batches), 1)
        optimised = [leaves[i * per_batch:(i + 1) * per_batch] for i in range(len(batches))]
    optimiser = torch.optim.Adam(leaves, lr=protocol.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimiser, mode="max", factor=protocol.factor, patience=protocol.patience)
    run = {"epoch_losses": [], "stop_reason": "max_epochs", "reductions": 0}
    for _ in tqdm(range(protocol.max_epochs), desc=desc, disable=not progress_enabled(progress), leave=False):
        run["epoch_losses"].append(_ascend_epoch(injector, loss_fn, batches, optimised, optimiser))
        before = optimiser.param_groups[0]["lr"]
        scheduler.step(run["epoch_losses"][-1])
        if optimiser.param_groups[0]["lr"] < before:
            run["reductions"] += 1
        if optimiser.param_groups[0]["lr"] < protocol.min_lr:
            run["stop_reason"] = "min_lr"
            break
    run["final_lr"] = optimiser.param_groups[0]["lr"]
    return optimised, run


def _ascend_epoch(injector, loss_fn, batches, optimised, optimiser) -> float:
    """One epoch of the attack: an Adam step per validation batch up the loss; the epoch's mean loss."""
    total, seen = 0.0, 0
    for batch, noise in zip(batches, optimised):
        optimiser.zero_grad(set_to_none=True)
        loss, weight = _scored_loss(loss_fn, injector(batch, noise), batch)
        (-loss).backward()  # ascend the loss
        optimiser.step()
        total += float(loss.detach()) * weight
        seen += weight
    return total / max(seen, 1)
