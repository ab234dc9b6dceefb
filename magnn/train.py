"""magnn train: train GraphTransformer / GraphiT / SAN on TOX21, ZINC or ogbn-proteins.

Writes DIR/metrics.json (config, per-epoch metrics, best validation epoch,
test metrics of the best checkpoint, and as "test_final" of the final epoch's
model: the paper's Table 1), DIR/last.pt (every epoch, atomically)
and DIR/best.pt. `--resume` continues from DIR/last.pt and reaches the same
weights as an uninterrupted run with the same seed: shuffling is seeded per
epoch and every RNG state travels in the checkpoint. Under `torchrun`
(WORLD_SIZE > 1) molecule batches shard across ranks with DistributedDataParallel.

Library entry point: `train(TrainConfig(...), resume=False)`; `magnn train`
(magnn.cli) only parses its options into a TrainConfig and calls it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .core.constants import BACKEND_NAMES, DATASETS, EBT_VARIANTS, MODEL_NAMES
from .core.errors import (
    MissingFileError,
    RunFailed,
    UserError,
    check_choice,
    check_environment,
    check_positive,
    check_seed,
    one_line,
    output_folder,
)
from .stats import collect, json_safe
from .telemetry import MACurves, check_tensorboard, log_ma, log_scalars, open_summary_writer

log = logging.getLogger("magnn.train")

PRESET_NAMES = ("paper", "quick")
SCHEDULES = ("plateau", "cosine")  # the lr schedules make_scheduler builds


def ebt_option(ebt) -> str:
    """An EBT variant as --ebt spells it (None is "none")."""
    return "none" if ebt is None else str(ebt)


@dataclass
class TrainConfig:
    """Everything `magnn train` takes, except --resume (an action, `train(config, resume=True)`,
    not a setting: it is not saved in checkpoints). --layers, --hidden and --heads are model
    keywords and travel in `overrides` (num_layers, hidden, heads; any other model keyword too).

    `validate()` raises the command line's UserError for a bad setting; `train()` calls it.
    """

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
    preset: Optional[str] = None  # "paper" (SPEC §10) or "quick" (CPU-sized); None is the paper's sizes
    overrides: dict = field(default_factory=dict)  # model keyword overrides (num_layers, hidden, heads, ...)
    bf16: bool = False
    activation_checkpointing: bool = False
    backend: str = "auto"
    sampled: bool = False  # ogbn-proteins: neighbour-sampled training instead of full batch
    fanouts: tuple = (5, 10, 15)
    schedule: Optional[str] = None  # "plateau" (the paper's) or "cosine" (warmup, then cosine decay); None: the preset's
    warmup_epochs: Optional[int] = None  # linear lr warmup epochs of the cosine schedule; None: the preset's
    max_time: Optional[float] = None  # --max-time: stop after this many MINUTES of training epochs (the paper's max_time)
    tensorboard: Optional[str] = None  # --tensorboard DIR: loss, metrics, lr and per-layer MA figures every epoch
    ma_probe_graphs: int = 32  # "ma_over_epochs": MA figures on the first N validation graphs after every epoch; 0: off

    def validate(self, *, environment: bool = True) -> TrainConfig:
        """UserError naming the option when a setting is out of range (see check_config); returns self."""
        check_config(self, environment=environment)
        return self


# CLI option -> model keyword (the models' own argument names)
MODEL_OPTIONS = {"layers": "num_layers", "hidden": "hidden", "heads": "heads"}
# settings that may differ between a run and its --resume; everything else must match the checkpoint
RESUMABLE_SETTINGS = ("epochs", "out", "data_root", "device", "backend", "activation_checkpointing", "tensorboard")


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


# -- checks ---------------------------------------------------------------------

def check_config(config: TrainConfig, *, environment: bool = True) -> None:
    """UserError naming the option when a setting is out of range (0 is never replaced by a default).

    environment=True also checks what depends on this machine: the device
    exists, --data-root is not a file and --out can be the output folder
    (nothing is created).
    """
    check_choice(config.dataset, DATASETS, "--dataset")
    check_choice(config.model, MODEL_NAMES, "--model")
    check_choice(config.ebt, EBT_VARIANTS, "--ebt", spell=ebt_option)
    if config.preset is not None:
        check_choice(config.preset, PRESET_NAMES, "--preset")
    check_positive(config.epochs, "--epochs", integer=True)
    check_positive(config.batch_size, "--batch-size", integer=True)
    check_positive(config.lr, "--lr")
    check_positive(config.max_graphs, "--max-graphs", integer=True)
    if config.schedule is not None:
        check_choice(config.schedule, SCHEDULES, "schedule")
    check_positive(config.warmup_epochs, "warmup_epochs", integer=True, allow_zero=True)
    check_positive(config.max_time, "--max-time")
    check_positive(config.ma_probe_graphs, "--ma-probe-graphs", integer=True, allow_zero=True)
    check_seed(config.seed)
    check_choice(config.backend, BACKEND_NAMES, "--backend")
    if not isinstance(config.overrides, dict):
        raise UserError(f"model overrides must be a dict of model arguments, got {type(config.overrides).__name__}")
    options = {keyword: f"--{option}" for option, keyword in MODEL_OPTIONS.items()}
    for keyword in ("num_layers", "hidden", "heads", "pe_dim"):
        check_positive(config.overrides.get(keyword), options.get(keyword, keyword), integer=True)
    sizes = _resolved_sizes(config)
    if sizes["hidden"] % sizes["heads"]:
        raise UserError(f"--hidden {sizes['hidden']} must be a multiple of --heads {sizes['heads']} "
                        "(hidden = heads x channels per head)")
    dropout = config.overrides.get("dropout")
    if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                or not 0.0 <= dropout < 1.0):
        raise UserError(f"dropout must be in [0, 1), got {dropout!r}")  # 0 is legitimate: no dropout
    if config.sampled:
        if config.dataset != "ogbn-proteins":
            raise UserError("--sampled applies to ogbn-proteins only (molecule datasets train on batches of graphs)")
        if not config.fanouts or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in config.fanouts):
            raise UserError(f"--fanouts must be integers >= 1, got {config.fanouts!r}")
    if environment:
        check_environment(config.device, config.data_root, config.out)
        if config.tensorboard is not None:
            check_tensorboard(config.tensorboard)


def _resolved_sizes(config: TrainConfig) -> dict:
    """hidden and heads as the model will get them: overrides, else the quick preset, else the paper's row."""
    from .models import get_preset

    row = get_preset(config.model, config.dataset)
    sizes = {"hidden": row.hidden, "heads": row.heads}
    sizes.update({k: v for k, v in model_overrides(config).items() if k in sizes})
    return sizes


# -- checkpoints ----------------------------------------------------------------

BEST_KEYS = ("model", "config", "epoch")
RESUME_KEYS = ("model", "optimizer", "scheduler", "rng", "epoch", "history", "best", "config")


@dataclass
class Checkpoint:
    """A validated checkpoint written by `magnn train` (see load_checkpoint)."""

    path: Path
    state: dict
    config: TrainConfig
    option: str = "--ckpt"

    def restore_model(self, model) -> None:
        """Load the weights into `model`; UserError naming the file when they do not fit it."""
        weights = self.state["model"]
        expected = model.state_dict()
        missing = [k for k in expected if k not in weights]
        unexpected = [k for k in weights if k not in expected]
        reshaped = [k for k in expected if k in weights and tuple(weights[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or reshaped:
            parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in
                     (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)) if keys]
            raise UserError(f"{self.option} {self.path}: its weights do not fit the {self.config.model} model its "
                            f"config describes ({', '.join(parts)}); the file was altered or written by another "
                            "magnn version: retrain it")
        model.load_state_dict(weights)

    def restore_training(self, optimizer, scheduler) -> None:
        """Optimizer, scheduler and RNG states for --resume; UserError naming the file when they do not fit."""
        try:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            set_rng_state(self.state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            raise UserError(f"{self.option} {self.path}: its optimizer, scheduler or RNG state cannot be restored "
                            f"({type(error).__name__}: {one_line(error)[:200]}); start a new run without --resume") from None


def _looks_like_state_dict(obj) -> bool:
    import torch

    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_checkpoint(path, *, option: str = "--ckpt", resume: bool = False, hint: str = "") -> Checkpoint:
    """Read and validate a checkpoint `magnn train` wrote (DIR/best.pt, or DIR/last.pt with resume=True).

    Every problem (absent, a folder, empty, truncated or not a torch file, a
    foreign object or dict, a config with unknown or invalid settings) raises
    one UserError that names the file (as `option PATH`) and says what to do.
    The file is unpickled (weights_only=False, as it holds RNG states): load
    only checkpoints you trust.
    """
    import torch

    path = Path(path).expanduser()
    where = f"{option} {path}"
    hint = hint or "train one with `magnn train --out DIR` and pass DIR/best.pt"
    if not path.exists():
        raise MissingFileError(f"{option}: no checkpoint at {path}; {hint}")
    if path.is_dir():
        raise UserError(f"{where} is a folder; pass the checkpoint file in it "
                        f"({'last.pt' if resume else 'best.pt or last.pt'})")
    if path.stat().st_size == 0:
        raise UserError(f"{where} is empty (0 bytes), not a checkpoint; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated zip, text, another pickle: every failure has the same remedy
        raise UserError(f"{where} cannot be read as a checkpoint ({type(error).__name__}: {one_line(error)[:160]}): "
                        f"the file is truncated, damaged or not written by magnn train; {hint}") from None
    if not isinstance(state, dict):
        raise UserError(f"{where} holds a {type(state).__name__}, not a magnn checkpoint "
                        f"(a dict with {', '.join(BEST_KEYS)}, as magnn train writes); {hint}")
    needed = RESUME_KEYS if resume else BEST_KEYS
    missing = [key for key in needed if key not in state]
    if missing:
        if _looks_like_state_dict(state):
            what = "a bare state_dict (weights without the config magnn needs to rebuild the model)"
        elif resume and all(key in state for key in BEST_KEYS):
            what = f"a weights-only checkpoint (best.pt?) without {', '.join(missing)}; --resume needs DIR/last.pt"
        else:
            what = f"not a magnn checkpoint: it lacks {', '.join(repr(k) for k in missing)}"
        raise UserError(f"{where} is {what}; {hint}")
    raw = state["config"]
    if not isinstance(raw, dict):
        raise UserError(f"{where}: its 'config' is a {type(raw).__name__}, not a dict of settings; {hint}")
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        raise UserError(f"{where}: its config has settings this magnn does not know ({', '.join(unknown)}); "
                        "it was written by another magnn version or edited; retrain with this version")
    config = TrainConfig(**raw)
    if isinstance(config.fanouts, list):
        config.fanouts = tuple(config.fanouts)
    try:
        check_config(config, environment=False)
    except UserError as error:
        raise UserError(f"{where}: its config is invalid ({error})") from None
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise UserError(f"{where}: its 'model' entry is not a state_dict of tensors; {hint}")
    if isinstance(state["epoch"], bool) or not isinstance(state["epoch"], int) or state["epoch"] < 0:
        raise UserError(f"{where}: its 'epoch' entry is {state['epoch']!r}, not an epoch number; {hint}")
    if resume and (not isinstance(state["history"], list) or not isinstance(state["best"], dict)
                   or "val_loss" not in state["best"] or len(state["history"]) != state["epoch"] + 1):
        raise UserError(f"{where}: its history or best-epoch record is inconsistent; {hint}")
    return Checkpoint(path, state, config, option)


def run_settings(config: TrainConfig, info) -> dict:
    """Every setting that shapes a run's trajectory, resolved (preset values filled in), by CLI name."""
    from .models import model_config

    model = model_config(config.model, info, preset="paper", ebt=config.ebt, **model_overrides(config))
    model.pop("backend", None)
    model.pop("checkpoint", None)
    settings = training_settings(config)
    resolved = {"--dataset": config.dataset, "--model": config.model, "--seed": config.seed,
                "--max-graphs": config.max_graphs, "--lr": settings["lr"], "--batch-size": settings["batch_size"],
                "--bf16": config.bf16, "--sampled": config.sampled, "schedule": settings["schedule"]}
    if settings["schedule"] != "plateau":
        resolved["warmup_epochs"] = settings["warmup_epochs"]
    if config.sampled:
        resolved["--fanouts"] = ",".join(str(f) for f in config.fanouts)
    options = {keyword: f"--{option}" for option, keyword in MODEL_OPTIONS.items()}
    options["ebt"] = "--ebt"
    for keyword, value in model.items():
        resolved[options.get(keyword, keyword)] = value
    return resolved


def check_resume_settings(checkpoint: Checkpoint, config: TrainConfig, info) -> None:
    """Refuse to --resume with settings other than the checkpoint's (except RESUMABLE_SETTINGS),
    so that the weights, the optimizer and metrics.json never disagree."""
    before, now = run_settings(checkpoint.config, info), run_settings(config, info)
    differing = [f"{name} {before.get(name)!r} in the checkpoint vs {now.get(name)!r} now"
                 for name in sorted(set(before) | set(now)) if before.get(name) != now.get(name)]
    if differing:
        allowed = ", ".join(f"--{name.replace('_', '-')}" for name in RESUMABLE_SETTINGS if name != "out")
        raise UserError(f"--resume: {checkpoint.path} was trained with other settings: {'; '.join(differing)}. "
                        f"Resume with the checkpoint's settings (only {allowed} may change), "
                        "or start a new run in another --out folder")


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


# -- datasets + model -----------------------------------------------------------

# "quick": the paper's row for the pair, shrunk to train in minutes on 2 CPU cores
QUICK_MODEL = {"num_layers": 4, "hidden": 64, "heads": 8}
# "quick" per dataset, on top of QUICK_MODEL and the paper's training row: TOX21 trains with
# dropout 0.2, batches of 32 graphs and lr 1e-3, 3 warmup epochs then cosine decay (the search:
# docs/EXPERIMENTS.md)
QUICK_DATASET_MODEL = {"tox21": {"dropout": 0.2}}
QUICK_TRAINING = {"tox21": {"lr": 1e-3, "schedule": "cosine", "warmup_epochs": 3, "batch_size": 32}}


def model_overrides(config: TrainConfig) -> dict:
    quick = config.preset == "quick" and config.dataset != "ogbn-proteins"
    overrides = dict(QUICK_MODEL, **QUICK_DATASET_MODEL.get(config.dataset, {})) if quick else {}
    overrides.update(config.overrides)
    overrides.setdefault("backend", config.backend)
    if config.activation_checkpointing:
        overrides["checkpoint"] = True
    return overrides


def training_settings(config: TrainConfig) -> dict:
    """lr, patience, min_lr, batch size, lr schedule: the paper's row (SPEC §10; plateau schedule),
    then the quick preset's per-dataset settings (QUICK_TRAINING), then what the config sets."""
    from .models import get_preset

    row = get_preset(config.model, config.dataset)
    settings = {"lr": row.lr, "patience": row.patience, "min_lr": row.min_lr, "batch_size": row.batch_size,
                "schedule": "plateau", "warmup_epochs": 0}
    if config.preset == "quick":
        settings.update(QUICK_TRAINING.get(config.dataset, {}))
    given = {"lr": config.lr, "batch_size": config.batch_size, "schedule": config.schedule,
             "warmup_epochs": config.warmup_epochs}
    settings.update({key: value for key, value in given.items() if value is not None})
    return settings


def make_scheduler(optimizer, settings: dict, epochs: int):
    """The per-epoch lr schedule `training_settings` names: "plateau" is ReduceLROnPlateau(min,
    factor 0.5) on the validation loss (the paper's; step it with that loss), "cosine" a linear
    warmup over warmup_epochs, then a cosine decay reaching 1% of lr at the last epoch (step()
    after every epoch)."""
    import torch

    if settings["schedule"] == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.5, patience=settings["patience"])
    warmup = min(settings["warmup_epochs"], max(epochs - 1, 0))

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        progress = min((epoch - warmup) / max(epochs - 1 - warmup, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def prepare(config: TrainConfig):
    """(splits, info, model) for a config; splits hold lists of transformed graphs or one Data."""
    from .data import load_dataset
    from .models import transforms_for

    kwargs = {}
    if config.max_graphs is not None:
        kwargs["max_graphs"] = config.max_graphs
    if _distributed():
        import torch.distributed as dist

        # rank 0 loads first: a raw dataset folder is processed (and cached) once, not by
        # every rank at the same time (ogb's processing of one folder is not concurrency-safe)
        if dist.get_rank() != 0:
            dist.barrier()
        splits, info = load_dataset(config.dataset, root=config.data_root, **kwargs)
        if dist.get_rank() == 0:
            dist.barrier()
    else:
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
        value = _finite_loss(loss, training)  # before the metric: sklearn refuses NaN predictions
        metric = compute_metric(info.task, info.name, data.y[mask], pred[mask].detach())
        return EpochResult(value, metric)

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
        total_loss += _finite_loss(loss, training) * batch.num_graphs  # after the step: no extra sync
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
    rank, world = _rank_world()
    shuffle = True
    if world > 1:
        # shard the seeds as DistributedSampler shards graphs: one shuffle shared by every rank,
        # padded (wrapping around) to a multiple of the world size, every world-th seed per rank,
        # so every rank runs the same number of DDP steps; each rank samples with its own stream
        order = seeds[torch.randperm(seeds.numel(), generator=torch.Generator().manual_seed(seed))]
        order = torch.cat([order, order[: (-order.numel()) % world]])
        seeds, shuffle = order[rank::world], False
    batches = neighbor_batches(data, seeds, fanouts=fanouts, batch_size=batch_size, seed=seed * world + rank,
                               shuffle=shuffle)
    total, targets, predictions = 0.0, [], []
    for batch in tqdm(batches, total=-(-seeds.numel() // batch_size), desc=desc, leave=False,
                      disable=not desc or rank != 0):
        batch = batch.to(device)
        with autocast:
            pred = model(batch)[: batch.num_seeds].float()
            loss = loss_fn(pred, batch.y[: batch.num_seeds])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += _finite_loss(loss, True) * batch.num_seeds
        targets.append(batch.y[: batch.num_seeds].cpu())
        predictions.append(pred.detach().cpu())
    y_true, y_pred = torch.cat(targets), torch.cat(predictions)
    count = seeds.numel()
    if world > 1:  # the epoch's loss and metric over every rank's seeds
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, (total, count, y_true, y_pred))
        total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        y_true, y_pred = torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])
    return EpochResult(total / max(count, 1), compute_metric(info.task, info.name, y_true, y_pred))


# -- MA curves over epochs (SPEC §4 statistics on a fixed probe) ----------------

def ma_probe(config: TrainConfig, splits) -> tuple[Optional[str], object]:
    """(description, probe) of the fixed probe "ma_over_epochs" measures after every epoch:
    one batch of the first `ma_probe_graphs` validation graphs (molecules), or the validation
    forward itself on a single graph (node tasks: statistics of the pass the epoch runs anyway).
    (None, None) when off (ma_probe_graphs 0) or the validation split is empty."""
    from torch_geometric.data import Batch, Data

    part = splits.get("val")
    if not config.ma_probe_graphs or part is None:
        return None, None
    if isinstance(part, Data):
        return "the validation forward of the full graph (val_mask nodes' loss; every edge's statistics)", "val"
    graphs = list(part[: config.ma_probe_graphs])
    if not graphs:
        return None, None
    return f"the first {len(graphs)} validation graphs, one batch, eval mode", Batch.from_data_list(graphs)


def probe_stats(model, probe, *, device="cpu", bf16=False) -> dict:
    """Per-layer EdgeStats of one eval-mode forward of `model` on the probe batch (no gradients)."""
    import torch

    was_training = model.training
    model.eval()
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    try:
        with torch.no_grad(), autocast, collect(model) as stats:
            model(probe.to(device))
    finally:
        model.train(was_training)
    return stats


# -- the loop -------------------------------------------------------------------

def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train per `config` (`magnn train`); returns (and writes) the metrics dictionary.

    resume=True (--resume) continues from config.out/last.pt.

    Raises UserError for bad settings, bad checkpoints and a --resume whose
    settings differ from its checkpoint's; RunFailed (after writing
    metrics.json with the history so far) when the loss stops being finite.
    """
    import torch

    config.validate()
    out = Path(config.out)
    output_folder(out, "--out")
    last_path = out / "last.pt"
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(last_path, option="--resume", resume=True,
                                     hint=f"run without --resume first (it writes {last_path})")
        if checkpoint.state["epoch"] + 1 >= config.epochs:
            raise UserError(f"--resume: {last_path} has already trained {checkpoint.state['epoch'] + 1} epoch(s) and "
                            f"--epochs is {config.epochs}; pass a larger --epochs to train further")
    distributed = init_distributed_from_env(config.device)
    rank, world = _rank_world()
    seed_everything(config.seed)
    splits, info, model = prepare(config)
    if checkpoint is not None:
        check_resume_settings(checkpoint, config, info)
    device = torch.device(config.device)
    model = model.to(device)
    core = model
    if distributed and world > 1:
        # the last layer's edge stream feeds no loss: let DDP skip those parameters
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    settings = training_settings(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    scheduler = make_scheduler(optimizer, settings, config.epochs)
    plateau = settings["schedule"] == "plateau"
    loss_fn = loss_function(info.task)
    batch_size = settings["batch_size"]
    history, best = [], {"epoch": -1, "val_loss": math.inf}
    start_epoch = 0
    if checkpoint is not None:
        checkpoint.restore_model(core)
        checkpoint.restore_training(optimizer, scheduler)
        state = checkpoint.state
        history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        log.info(f"resuming at epoch {start_epoch} from {last_path}")

    name = metric_name(info.task)
    # MA curves on a fixed probe, and --tensorboard: rank 0 only (the other ranks' models are the same)
    probe_description, probe = ma_probe(config, splits) if rank == 0 else (None, None)
    curves = None
    if probe_description is not None:
        carried = checkpoint.state.get("ma_over_epochs") if checkpoint is not None else None
        curves = MACurves.from_dict(carried, probe_description).truncate(start_epoch)
    writer = open_summary_writer(config.tensorboard) if config.tensorboard and rank == 0 else None

    def metrics(test, stopped) -> dict:
        trained = best["epoch"] >= 0
        return {
            "config": asdict(config),
            "dataset_info": asdict(info),
            "history": history,
            "best_epoch": best["epoch"] if trained else None,
            "best": best if trained else None,
            "test": test,
            "stopped": stopped,
            "resumed_at_epoch": start_epoch if checkpoint is not None else None,
            "world_size": world,
            "ma_over_epochs": curves.to_dict() if curves is not None else None,
        }

    def write(result) -> None:
        if rank == 0:
            (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2, default=str, allow_nan=False))

    stopped = {"reason": "epochs", "epoch": config.epochs - 1}
    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        common = dict(batch_size=batch_size, device=config.device, bf16=config.bf16)
        diverged = None
        try:
            train_result = run_epoch(model, splits["train"], info, loss_fn, optimizer=optimizer,
                                     seed=config.seed * 1000 + epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                                     node_mask_key="train_mask", fanouts=config.fanouts if config.sampled else None,
                                     **common)
            with torch.no_grad(), (collect(core) if probe == "val" else contextlib.nullcontext()) as val_stats:
                val_result = run_epoch(model, splits["val"], info, loss_fn, node_mask_key="val_mask", **common)
        except NonFiniteLoss as error:
            diverged = ("training" if error.training else "validation", error.loss)
        if diverged is not None:  # outside the except: the epoch's frames (and progress bar) are gone first
            kind, loss = diverged
            write(metrics(None, {"reason": "diverged", "epoch": epoch, "detail": f"{kind} loss {loss}"}))
            lr = optimizer.param_groups[0]["lr"]
            raise RunFailed(f"training diverged at epoch {epoch + 1}: the {kind} loss became {loss}; lower the "
                            f"learning rate (--lr is {lr:g}; try {lr / 10:g} or less) and train again without --resume; "
                            f"the history so far is in {out / 'metrics.json'}")
        if plateau:
            scheduler.step(val_result.loss)
        else:
            scheduler.step()
        row = {
            "epoch": epoch, "train_loss": train_result.loss, f"train_{name}": train_result.metric,
            "val_loss": val_result.loss, f"val_{name}": val_result.metric,
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - began,
        }
        history.append(row)
        ma_stats = None
        if curves is not None:
            ma_stats = val_stats if probe == "val" else probe_stats(core, probe, device=config.device, bf16=config.bf16)
            curves.add(epoch + 1, ma_stats)
        if writer is not None:
            log_scalars(writer, {"loss/train": train_result.loss, "loss/val": val_result.loss,
                                 f"{name}/train": train_result.metric, f"{name}/val": val_result.metric,
                                 "lr": row["lr"]}, epoch + 1)
            if ma_stats is not None:
                log_ma(writer, ma_stats, epoch + 1)
            writer.flush()
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
                "ma_over_epochs": curves.to_dict() if curves is not None else None,
            }, last_path)
        if plateau and optimizer.param_groups[0]["lr"] < settings["min_lr"]:  # the paper's stopping rule
            log.info(f"stopping: lr fell below min_lr={settings['min_lr']:g}")
            stopped = {"reason": "min_lr", "epoch": epoch}
            break
        if config.max_time is not None and sum(r["seconds"] for r in history) >= 60 * config.max_time:
            log.info(f"stopping: training time reached --max-time {config.max_time:g} minutes")  # checked per epoch, as the paper's code
            stopped = {"reason": "max_time", "epoch": epoch}
            break

    if distributed and world > 1:
        torch.distributed.barrier()
    final_test = None  # Table 1 (the paper's): the final epoch's model on the test split
    if history:
        try:
            with torch.no_grad():
                final_result = run_epoch(core, splits["test"], info, loss_fn, batch_size=batch_size, device=config.device,
                                         bf16=config.bf16, node_mask_key="test_mask")
            final_test = {"loss": final_result.loss, name: final_result.metric, "epoch": history[-1]["epoch"]}
        except NonFiniteLoss as error:
            final_test = {"loss": error.loss, name: None, "epoch": history[-1]["epoch"]}
    load_checkpoint(out / "best.pt", option="--out").restore_model(core)
    try:
        with torch.no_grad():
            test_result = run_epoch(core, splits["test"], info, loss_fn, batch_size=batch_size, device=config.device,
                                    bf16=config.bf16, node_mask_key="test_mask")
    except NonFiniteLoss as error:
        write(metrics(None, {"reason": "non-finite test loss", "epoch": best["epoch"], "detail": f"test loss {error.loss}"}))
        raise RunFailed(f"the best epoch's model ({out / 'best.pt'}) gives a non-finite test loss ({error.loss}); "
                        "lower the learning rate (--lr) and train again") from None
    result = metrics({"loss": test_result.loss, name: test_result.metric}, stopped)
    result["test_final"] = final_test  # "test" is the best-validation checkpoint's
    write(result)
    if writer is not None:
        writer.close()
    return result
