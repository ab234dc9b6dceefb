"""Explicit Bias Attack (SPEC §7): optimised vs random input noise of the same std.

Noise n is added to the output of the model's input node embedding (and,
optionally, its edge embedding) as `h + n / std(n) * sigma`, so whatever the
optimiser does, the injected noise has standard deviation exactly sigma. The
model is frozen in eval mode; Adam maximises the task loss over the noise.
`gain = loss_optimised / loss_random - 1`, the random baseline being one
Gaussian draw rescaled the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn


@dataclass
class AttackResult:
    sigma: float
    loss_clean: float
    loss_random: float
    loss_optimised: float
    steps: int

    @property
    def gain(self) -> float:
        return self.loss_optimised / self.loss_random - 1.0

    def to_dict(self) -> dict:
        return {"sigma": self.sigma, "loss_clean": self.loss_clean, "loss_random": self.loss_random,
                "loss_optimised": self.loss_optimised, "gain": self.gain, "gain_percent": 100 * self.gain,
                "steps": self.steps}


def scaled_noise(raw: torch.Tensor, sigma: float) -> torch.Tensor:
    """raw rescaled to standard deviation exactly sigma (population std)."""
    return raw / raw.std(unbiased=False).clamp_min(1e-12) * sigma


class _NoiseHook:
    """Forward hook adding the current batch's scaled noise to a module's output."""

    def __init__(self, sigma: float):
        self.sigma = sigma
        self.raw: Optional[torch.Tensor] = None

    def __call__(self, module, inputs, output):
        if self.raw is None:
            return output
        return output + scaled_noise(self.raw, self.sigma).to(output.dtype)


def find_embedding(model: nn.Module, names=("node_encoder", "atom_encoder", "encoder")) -> nn.Module:
    for name in names:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"cannot find the input node embedding of {type(model).__name__}; pass embedding=")


def _embedding_shape(model, embedding, batch):
    captured = {}

    def remember(module, inputs, output):  # returns None: the output stays as it is
        captured["shape"] = output.shape

    handle = embedding.register_forward_hook(remember)
    with torch.no_grad():
        model(batch)
    handle.remove()
    return captured["shape"]


def explicit_bias_attack(
    model: nn.Module,
    graphs,
    loss_fn: Callable,
    *,
    sigma: float,
    steps: int = 1000,
    lr: float = 7e-4,
    batch_size: int = 128,
    embedding: Optional[nn.Module] = None,
    edge_embedding: Optional[nn.Module] = None,
    device="cpu",
    seed: int = 0,
    progress: bool = True,
) -> AttackResult:
    """Attack `model` on `graphs` with noise of std `sigma`; returns losses and the gain."""
    from torch_geometric.loader import DataLoader
    from tqdm import tqdm

    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")
    model = model.eval().to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    embedding = find_embedding(model) if embedding is None else embedding  # an empty Sequential is falsy
    batches = [b.to(device) for b in DataLoader(graphs, batch_size=batch_size, shuffle=False)]
    hooks = [(embedding, _NoiseHook(sigma))] + ([(edge_embedding, _NoiseHook(sigma))] if edge_embedding is not None else [])
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    generator = torch.Generator().manual_seed(seed)
    try:
        shapes = [[_embedding_shape(model, module, b) for module, _ in hooks] for b in batches]

        def mean_loss(noises) -> float:
            total, graphs_seen = 0.0, 0
            with torch.no_grad():
                for batch, noise in zip(batches, noises):
                    for (_, hook), raw in zip(hooks, noise):
                        hook.raw = raw
                    total += float(loss_fn(model(batch), batch.y)) * batch.num_graphs
                    graphs_seen += batch.num_graphs
            return total / max(graphs_seen, 1)

        clean = mean_loss([[None] * len(hooks) for _ in batches])
        random_noise = [[torch.randn(shape, generator=generator).to(device) for shape in s] for s in shapes]
        loss_random = mean_loss(random_noise)
        # start the optimiser from the random draw, so step 0 is the baseline
        optimised = [[raw.clone().requires_grad_() for raw in noise] for noise in random_noise]
        optimiser = torch.optim.Adam([raw for noise in optimised for raw in noise], lr=lr)
        for _ in tqdm(range(steps), desc=f"attack sigma={sigma:g}", disable=not progress, leave=False):
            optimiser.zero_grad(set_to_none=True)
            for batch, noise in zip(batches, optimised):
                for (_, hook), raw in zip(hooks, noise):
                    hook.raw = raw
                (-loss_fn(model(batch), batch.y) * batch.num_graphs).backward()  # ascend the loss
            optimiser.step()
        loss_optimised = mean_loss([[raw.detach() for raw in noise] for noise in optimised])
    finally:
        for handle in handles:
            handle.remove()
        for parameter in trainable:
            parameter.requires_grad_(True)
    return AttackResult(sigma, clean, loss_random, loss_optimised, steps)
