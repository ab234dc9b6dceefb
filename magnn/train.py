"""magnn train: train GraphTransformer / GraphiT / SAN on TOX21, ZINC or ogbn-proteins.

Writes DIR/metrics.json (config, per-epoch metrics, best validation epoch,
test metrics of the best checkpoint), DIR/last.pt (every epoch, atomically)
and DIR/best.pt. `--resume` continues from DIR/last.pt and reaches the same
weights as an uninterrupted run with the same seed: shuffling is seeded per
epoch and every RNG state travels in the checkpoint. Under `torchrun`
(WORLD_SIZE > 1) molecule batches shard across ranks with DistributedDataParallel.

Library entry point: `train(TrainConfig(...), resume=False)`; `magnn train`
(magnn.cli) only parses its options into a TrainConfig and calls it.
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
from .stats import json_safe

log = logging.getLogger("magnn.train")

PRESET_NAMES = ("paper", "quick")


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

    def validate(self, *, environment: bool = True) -> TrainConfig:
        """UserError naming the option when a setting is out of range (see check_config); returns self."""
        check_config(self, environment=environment)
        return self


# CLI option -> model keyword (the models' own argument names)
MODEL_OPTIONS = {"layers": "num_layers", "hidden": "hidden", "heads": "heads"}
# settings that may differ between a run and its --resume; everything else must match the checkpoint
RESUMABLE_SETTINGS = ("epochs", "out", "data_root", "device", "backend", "activation_checkpointing")


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
                "--bf16": config.bf16, "--sampled": config.sampled}
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
    return {"lr": row.lr if config.lr is None else config.lr, "patience": row.patience, "min_lr": row.min_lr,
            "batch_size": row.batch_size if config.batch_size is None else config.batch_size}


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
        total += _finite_loss(loss, True) * batch.num_seeds
        targets.append(batch.y[: batch.num_seeds].cpu())
        predictions.append(pred.detach().cpu())
    y_true, y_pred = torch.cat(targets), torch.cat(predictions)
    return EpochResult(total / max(seeds.numel(), 1), compute_metric(info.task, info.name, y_true, y_pred))


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
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=0.5, patience=settings["patience"])
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
            with torch.no_grad():
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
            stopped = {"reason": "min_lr", "epoch": epoch}
            break

    if distributed and world > 1:
        torch.distributed.barrier()
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
    write(result)
    return result
