"""One epoch: the loss and the metric of a task, and a pass over a split.

A split is a list of graphs (molecules: mini-batches, sharded across ranks under torchrun)
or one Data (ogbn-proteins: one full-batch step, or neighbour-sampled seed batches with
`fanouts`). `run_epoch` trains when given an optimizer, evaluates otherwise, and raises
NonFiniteLoss as soon as a loss stops being finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.progress import progress_enabled
from ..distributed import rank_world

OGB_EVALUATORS = {"tox21": "ogbg-moltox21", "ogbn-proteins": "ogbn-proteins"}


def loss_function(task: str):
    """L1 for regression; BCE with logits over the labelled entries for the multi-label tasks."""
    import torch
    import torch.nn.functional as F

    if task == "graph_regression":
        return lambda pred, y: F.l1_loss(pred.reshape(-1), y.reshape(-1).to(pred.dtype))

    def masked_bce(pred, y):
        y = y.reshape(pred.shape).to(pred.dtype)
        labelled = ~torch.isnan(y)
        if not labelled.any():
            return pred.sum() * 0.0
        return F.binary_cross_entropy_with_logits(pred[labelled], y[labelled])

    return masked_bce


def metric_name(task: str) -> str:
    return "mae" if task == "graph_regression" else "rocauc"


def compute_metric(task: str, info_name: str, y_true, y_pred) -> float:
    """MAE for regression; ROC-AUC through OGB's Evaluator for the multi-label tasks."""
    if task == "graph_regression":
        return float((y_pred.reshape(-1) - y_true.reshape(-1)).abs().mean())
    from ogb.graphproppred import Evaluator as GraphEvaluator
    from ogb.nodeproppred import Evaluator as NodeEvaluator

    name = OGB_EVALUATORS.get(info_name, info_name)
    evaluator = (NodeEvaluator if name.startswith("ogbn") else GraphEvaluator)(name)
    try:
        return float(evaluator.eval({"y_true": y_true.reshape(y_pred.shape).float().cpu(),
                                     "y_pred": y_pred.float().cpu()})["rocauc"])
    except RuntimeError:  # no task with both classes labelled (tiny subsets)
        return float("nan")


class NonFiniteLoss(Exception):
    """Raised inside an epoch when a batch's loss is NaN or infinite (the run diverged)."""

    def __init__(self, loss: float, training: bool):
        super().__init__(f"non-finite loss {loss}")
        self.loss, self.training = loss, training


def _finite_loss(loss, training: bool) -> float:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLoss(value, training)
    return value


@dataclass
class EpochResult:
    loss: float
    metric: float


@dataclass
class _Pass:
    """What every step of one epoch shares."""

    model: object
    info: object
    loss_fn: object
    optimizer: object
    device: object
    autocast: object
    desc: str

    @property
    def training(self) -> bool:
        return self.optimizer is not None

    def step(self, loss) -> None:
        if self.training:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def result(self, loss: float, y_true, y_pred) -> EpochResult:
        return EpochResult(loss, compute_metric(self.info.task, self.info.name, y_true, y_pred))


def run_epoch(model, part, info, loss_fn, *, optimizer=None, batch_size=128, seed=0, device="cpu",
              bf16=False, desc="", node_mask_key=None, fanouts=None) -> EpochResult:
    """One pass over `part` (a list of graphs, or one Data for node tasks); trains if optimizer is given."""
    import torch
    from torch_geometric.data import Data

    model.train(optimizer is not None)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    run = _Pass(model, info, loss_fn, optimizer, device, autocast, desc)
    if isinstance(part, Data) and run.training and fanouts:
        return _sampled_epoch(run, part, batch_size, seed, node_mask_key, fanouts)
    if isinstance(part, Data):
        return _full_batch_epoch(run, part, node_mask_key)
    return _graph_epoch(run, part, batch_size, seed)


def _full_batch_epoch(run: _Pass, part, node_mask_key) -> EpochResult:
    """A node task's full-batch epoch: one step over the whole graph, the loss on the masked nodes."""
    import torch

    data = part.to(run.device)
    mask = getattr(data, node_mask_key)
    with torch.set_grad_enabled(run.training), run.autocast:
        pred = run.model(data).float()
        loss = run.loss_fn(pred[mask], data.y[mask])
    run.step(loss)
    value = _finite_loss(loss, run.training)  # before the metric: sklearn refuses NaN predictions
    return run.result(value, data.y[mask], pred[mask].detach())


def _graph_epoch(run: _Pass, part, batch_size: int, seed: int) -> EpochResult:
    """Mini-batches of graphs, shuffled per epoch (seeded) when training."""
    import torch
    from tqdm import tqdm

    rank, _ = rank_world()
    total_loss, total_graphs = 0.0, 0
    targets, predictions = [], []
    loader = _loader(part, batch_size, shuffle=run.training, seed_for_epoch=seed)
    for batch in tqdm(loader, desc=run.desc, leave=False, disable=rank != 0 or not run.desc or not progress_enabled(), unit="batch"):
        batch = batch.to(run.device)
        with torch.set_grad_enabled(run.training), run.autocast:
            pred = run.model(batch).float()
            loss = run.loss_fn(pred, batch.y)
        run.step(loss)
        total_loss += _finite_loss(loss, run.training) * batch.num_graphs  # after the step: no extra sync
        total_graphs += batch.num_graphs
        targets.append(batch.y.reshape(pred.shape).detach().cpu())
        predictions.append(pred.detach().cpu())
    return run.result(total_loss / max(total_graphs, 1), torch.cat(targets), torch.cat(predictions))


def _loader(part, batch_size, shuffle, seed_for_epoch):
    import torch
    from torch_geometric.loader import DataLoader

    rank, world = rank_world()
    if world > 1 and shuffle:  # only training shards; every rank evaluates everything, so all agree
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(part, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed_for_epoch, drop_last=False)
        return DataLoader(part, batch_size=batch_size, sampler=sampler)
    generator = torch.Generator().manual_seed(seed_for_epoch)
    return DataLoader(part, batch_size=batch_size, shuffle=shuffle, generator=generator)


def _sampled_epoch(run: _Pass, data, batch_size, seed, mask_key, fanouts) -> EpochResult:
    """ogbn-proteins the paper's way: neighbour-sampled batches of training seed nodes."""
    import torch
    from tqdm import tqdm

    from ..data.sampling import neighbor_batches

    rank, world = rank_world()
    seeds, shuffle = _rank_seeds(torch.nonzero(getattr(data, mask_key)).reshape(-1), seed, rank, world)
    batches = neighbor_batches(data, seeds, fanouts=fanouts, batch_size=batch_size, seed=seed * world + rank,
                               shuffle=shuffle)
    total, targets, predictions = 0.0, [], []
    for batch in tqdm(batches, total=-(-seeds.numel() // batch_size), desc=run.desc, leave=False,
                      disable=not run.desc or rank != 0 or not progress_enabled()):
        batch = batch.to(run.device)
        with run.autocast:
            pred = run.model(batch)[: batch.num_seeds].float()
            loss = run.loss_fn(pred, batch.y[: batch.num_seeds])
        run.step(loss)
        total += _finite_loss(loss, True) * batch.num_seeds
        targets.append(batch.y[: batch.num_seeds].cpu())
        predictions.append(pred.detach().cpu())
    total, count, y_true, y_pred = _gather(world, total, seeds.numel(), torch.cat(targets), torch.cat(predictions))
    return run.result(total / max(count, 1), y_true, y_pred)


def _rank_seeds(seeds, seed: int, rank: int, world: int):
    """(this rank's seeds, whether the sampler shuffles them). Under torchrun the seeds shard as
    DistributedSampler shards graphs: one shuffle shared by every rank, padded (wrapping around)
    to a multiple of the world size, every world-th seed per rank, so every rank runs the same
    number of DDP steps; each rank samples with its own stream."""
    import torch

    if world == 1:
        return seeds, True
    order = seeds[torch.randperm(seeds.numel(), generator=torch.Generator().manual_seed(seed))]
    order = torch.cat([order, order[: (-order.numel()) % world]])
    return order[rank::world], False


def _gather(world: int, total: float, count: int, y_true, y_pred):
    """The epoch's loss sum, seed count, targets and predictions over every rank's seeds."""
    if world == 1:
        return total, count, y_true, y_pred
    import torch
    import torch.distributed as dist

    parts: list = [None] * world
    dist.all_gather_object(parts, (total, count, y_true, y_pred))
    return (sum(p[0] for p in parts), sum(p[1] for p in parts),
            torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]))
