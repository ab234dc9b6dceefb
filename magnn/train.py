"""magnn train: train GraphTransformer / GraphiT / SAN on TOX21, ZINC or ogbn-proteins.

Writes DIR/metrics.json (config, per-epoch metrics, best validation epoch,
test metrics of the best checkpoint), DIR/last.pt (every epoch, atomically)
and DIR/best.pt. `--resume` continues from DIR/last.pt and reaches the same
weights as an uninterrupted run with the same seed: shuffling is seeded per
epoch and every RNG state travels in the checkpoint. Under `torchrun`
(WORLD_SIZE > 1) molecule batches shard across ranks with DistributedDataParallel.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

COMMAND = "train"
HELP = "train a model (tqdm progress, metrics.json, atomic checkpoints, --resume)"

log = logging.getLogger("magnn.train")

DATASETS = ("tox21", "zinc", "ogbn-proteins")
MODELS = ("gt", "graphit", "san")


@dataclass
class TrainConfig:
    dataset: str = "tox21"
    model: str = "gt"
    ebt: Optional[str] = None
    epochs: int = 10
    out: str = "runs/train"
    data_root: Optional[str] = None
    device: str = "cpu"
    seed: int = 41
    max_graphs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    preset: Optional[str] = None  # "paper" (SPEC §10) or "quick" (CPU-sized)
    overrides: dict = field(default_factory=dict)  # model keyword overrides (layers, hidden, heads, ...)
    bf16: bool = False
    activation_checkpointing: bool = False
    backend: str = "auto"
    sampled: bool = False  # ogbn-proteins: neighbour-sampled training instead of full batch
    fanouts: tuple = (5, 10, 15)


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", choices=DATASETS, default="tox21")
    parser.add_argument("--model", choices=MODELS, default="gt")
    parser.add_argument("--ebt", choices=("none", "edge", "slot"), default="none")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="runs/train", help="output folder (metrics.json, checkpoints)")
    parser.add_argument("--data-root", default=None, help="folder with the dataset files (default: bundled / cache)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--max-graphs", type=int, default=None, help="use the first N graphs of each split")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--preset", choices=("paper", "quick"), default="quick",
                        help="paper: SPEC §10 sizes; quick: small CPU-sized models (default)")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpu", "triton"))
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--sampled", action="store_true",
                        help="ogbn-proteins: the paper's neighbour-sampled training (evaluation stays full-batch)")
    parser.add_argument("--fanouts", default="5,10,15", help="neighbours drawn per hop with --sampled")


def config_from_args(args) -> TrainConfig:
    overrides = {name: getattr(args, name) for name in ("layers", "hidden", "heads") if getattr(args, name, None) is not None}
    return TrainConfig(
        dataset=args.dataset, model=args.model, ebt=None if args.ebt == "none" else args.ebt,
        epochs=args.epochs, out=args.out, data_root=args.data_root, device=args.device, seed=args.seed,
        max_graphs=args.max_graphs, batch_size=args.batch_size, lr=args.lr, preset=args.preset,
        overrides=overrides, bf16=args.bf16, activation_checkpointing=args.activation_checkpointing,
        backend=args.backend, sampled=args.sampled, fanouts=tuple(int(f) for f in args.fanouts.split(",")),
    )


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = train(config_from_args(args), resume=args.resume)
    test = result["test"]
    print(f"best epoch {result['best_epoch'] + 1}: " + ", ".join(f"test {k} {v:.4f}" for k, v in test.items()))
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0


# -- pieces ---------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomically(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, then rename: a kill mid-write loses nothing."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def loss_function(task: str):
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


OGB_EVALUATORS = {"tox21": "ogbg-moltox21", "ogbn-proteins": "ogbn-proteins"}


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


def _distributed():
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _rank_world():
    import torch.distributed as dist

    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(device: str) -> bool:
    """Join the process group torchrun set up (WORLD_SIZE > 1); gloo on CPU, nccl on CUDA."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


# -- datasets + model -----------------------------------------------------------

# "quick": the paper's row for the pair, shrunk to train in minutes on 2 CPU cores
QUICK_MODEL = {"num_layers": 4, "hidden": 64, "heads": 8}


def model_overrides(config: TrainConfig) -> dict:
    overrides = dict(QUICK_MODEL) if config.preset == "quick" and config.dataset != "ogbn-proteins" else {}
    overrides.update(config.overrides)
    overrides.setdefault("backend", config.backend)
    if config.activation_checkpointing:
        overrides["checkpoint"] = True
    return overrides


def training_settings(config: TrainConfig) -> dict:
    """lr, patience, batch size: the paper's row (SPEC §10) unless the config overrides them."""
    from .models import get_preset

    row = get_preset(config.model, config.dataset)
    return {"lr": config.lr or row.lr, "patience": row.patience, "min_lr": row.min_lr,
            "batch_size": config.batch_size or row.batch_size}


def prepare(config: TrainConfig):
    """(splits, info, model) for a config; splits hold lists of transformed graphs or one Data."""
    from .data import load_dataset
    from .models import transforms_for

    kwargs = {}
    if config.max_graphs is not None:
        kwargs["max_graphs"] = config.max_graphs
    splits, info = load_dataset(config.dataset, root=config.data_root, **kwargs)
    splits = {("val" if name == "valid" else name): part for name, part in splits.items()}
    overrides = model_overrides(config)
    transform = transforms_for(config.model, info, preset="paper", **overrides)
    if transform is not None:
        splits = {name: _apply(transform, part) for name, part in splits.items()}
    return splits, info, build(config, info)


def build(config: TrainConfig, info):
    """The model a config describes, for a dataset already loaded (`info`)."""
    from .models import build_model

    return build_model(config.model, info, ebt=config.ebt, preset="paper", **model_overrides(config))


def _apply(transform, part):
    from torch_geometric.data import Data

    if isinstance(part, Data):
        return transform(part)
    return [transform(graph) for graph in part]


def _loader(part, batch_size, shuffle, seed_for_epoch):
    import torch
    from torch_geometric.loader import DataLoader

    rank, world = _rank_world()
    if world > 1 and shuffle:  # only training shards; every rank evaluates everything, so all agree
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(part, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed_for_epoch, drop_last=False)
        return DataLoader(part, batch_size=batch_size, sampler=sampler)
    generator = torch.Generator().manual_seed(seed_for_epoch)
    return DataLoader(part, batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass
class EpochResult:
    loss: float
    metric: float


def run_epoch(model, part, info, loss_fn, *, optimizer=None, batch_size=128, seed=0, device="cpu",
              bf16=False, desc="", node_mask_key=None, fanouts=None) -> EpochResult:
    """One pass over `part` (a list of graphs, or one Data for node tasks); trains if optimizer is given."""
    import torch
    from torch_geometric.data import Data
    from tqdm import tqdm

    training = optimizer is not None
    model.train(training)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    rank, _ = _rank_world()
    if isinstance(part, Data) and training and fanouts:  # neighbour-sampled node task
        return _sampled_epoch(model, part, info, loss_fn, optimizer, batch_size, seed, device, autocast,
                              node_mask_key, fanouts, desc)
    if isinstance(part, Data):  # full-batch node task: one step over the whole graph
        data = part.to(device)
        mask = getattr(data, node_mask_key)
        with torch.set_grad_enabled(training), autocast:
            pred = model(data).float()
            loss = loss_fn(pred[mask], data.y[mask])
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        metric = compute_metric(info.task, info.name, data.y[mask], pred[mask].detach())
        return EpochResult(float(loss.detach()), metric)

    total_loss, total_graphs = 0.0, 0
    targets, predictions = [], []
    loader = _loader(part, batch_size, shuffle=training, seed_for_epoch=seed)
    for batch in tqdm(loader, desc=desc, leave=False, disable=rank != 0 or not desc, unit="batch"):
        batch = batch.to(device)
        with torch.set_grad_enabled(training), autocast:
            pred = model(batch).float()
            loss = loss_fn(pred, batch.y)
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        total_loss += float(loss.detach()) * batch.num_graphs
        total_graphs += batch.num_graphs
        targets.append(batch.y.reshape(pred.shape).detach().cpu())
        predictions.append(pred.detach().cpu())
    y_true, y_pred = torch.cat(targets), torch.cat(predictions)
    return EpochResult(total_loss / max(total_graphs, 1), compute_metric(info.task, info.name, y_true, y_pred))


def _sampled_epoch(model, data, info, loss_fn, optimizer, batch_size, seed, device, autocast, mask_key, fanouts, desc):
    import torch
    from tqdm import tqdm

    from .data.sampling import neighbor_batches

    seeds = torch.nonzero(getattr(data, mask_key)).reshape(-1)
    batches = neighbor_batches(data, seeds, fanouts=fanouts, batch_size=batch_size, seed=seed)
    total, targets, predictions = 0.0, [], []
    for batch in tqdm(batches, total=-(-seeds.numel() // batch_size), desc=desc, leave=False, disable=not desc):
        batch = batch.to(device)
        with autocast:
            pred = model(batch)[: batch.num_seeds].float()
            loss = loss_fn(pred, batch.y[: batch.num_seeds])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * batch.num_seeds
        targets.append(batch.y[: batch.num_seeds].cpu())
        predictions.append(pred.detach().cpu())
    y_true, y_pred = torch.cat(targets), torch.cat(predictions)
    return EpochResult(total / max(seeds.numel(), 1), compute_metric(info.task, info.name, y_true, y_pred))


# -- the loop -------------------------------------------------------------------

def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train per `config`; returns (and writes) the metrics dictionary."""
    import torch

    out = Path(config.out)
    distributed = init_distributed_from_env(config.device)
    rank, world = _rank_world()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    splits, info, model = prepare(config)
    device = torch.device(config.device)
    model = model.to(device)
    core = model
    if distributed and world > 1:
        # the last layer's edge stream feeds no loss: let DDP skip those parameters
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    settings = training_settings(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.5, patience=settings["patience"])
    loss_fn = loss_function(info.task)
    batch_size = settings["batch_size"]
    history, best = [], {"epoch": -1, "val_loss": math.inf}
    start_epoch = 0
    last_path = out / "last.pt"
    if resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}; run without --resume first")
        state = torch.load(last_path, map_location=device, weights_only=False)
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        log.info(f"resuming at epoch {start_epoch} from {last_path}")

    name = metric_name(info.task)
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        common = dict(batch_size=batch_size, device=config.device, bf16=config.bf16)
        train_result = run_epoch(model, splits["train"], info, loss_fn, optimizer=optimizer,
                                 seed=config.seed * 1000 + epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                                 node_mask_key="train_mask", fanouts=config.fanouts if config.sampled else None,
                                 **common)
        with torch.no_grad():
            val_result = run_epoch(model, splits["val"], info, loss_fn, node_mask_key="val_mask", **common)
        scheduler.step(val_result.loss)
        row = {
            "epoch": epoch, "train_loss": train_result.loss, f"train_{name}": train_result.metric,
            "val_loss": val_result.loss, f"val_{name}": val_result.metric,
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began,
        }
        history.append(row)
        if rank == 0:
            log.info(f"epoch {epoch + 1}: train loss {train_result.loss:.4f} | val loss {val_result.loss:.4f} "
                     f"val {name} {val_result.metric:.4f}")
        if val_result.loss < best["val_loss"]:
            best = {"epoch": epoch, "val_loss": val_result.loss, f"val_{name}": val_result.metric}
            if rank == 0:
                save_atomically({"model": core.state_dict(), "config": asdict(config), "epoch": epoch}, out / "best.pt")
        if rank == 0:
            save_atomically({
                "model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "epoch": epoch, "history": history, "best": best, "config": asdict(config),
            }, last_path)
        if optimizer.param_groups[0]["lr"] < settings["min_lr"]:  # the paper's stopping rule
            log.info(f"stopping: lr fell below min_lr={settings['min_lr']:g}")
            break

    if distributed and world > 1:
        torch.distributed.barrier()
    best_state = torch.load(out / "best.pt", map_location=device, weights_only=False)
    core.load_state_dict(best_state["model"])
    with torch.no_grad():
        test_result = run_epoch(core, splits["test"], info, loss_fn, batch_size=batch_size, device=config.device,
                                bf16=config.bf16, node_mask_key="test_mask")
    result = {
        "config": asdict(config),
        "dataset_info": asdict(info),
        "history": history,
        "best_epoch": best["epoch"],
        "best": best,
        "test": {"loss": test_result.loss, name: test_result.metric},
        "world_size": world,
    }
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result
