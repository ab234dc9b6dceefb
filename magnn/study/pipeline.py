"""magnn study: train without and with EBT, detect MAs, ablate, attack, report.

Writes DIR/report.json (every number), DIR/report.md (tables shaped like the
paper's Table 1 and 2, the paper's values beside ours, and an honest line on
whether each qualitative finding reproduced) and PNG figures:
sorted_max_ratios.png (Fig. 2/4), edge_ratios.png (Fig. 1),
hist_<model>.png (Fig. 3), heatmap_<model>.png and ablation.png.

Library entry point: `run_study(StudyConfig(...))`; `magnn study` (magnn.cli)
only parses its options into a StudyConfig and calls it. report.md's layout
and the JSON writer live in magnn.study.report.
"""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..core.constants import (
    BACKEND_NAMES,
    DATASETS,
    EBT_VARIANTS,
    MA_THRESHOLD,
    MODEL_NAMES,
)
from ..core.errors import (
    UserError,
    check_choice,
    check_environment,
    check_positive,
    check_seed,
    output_folder,
)

log = logging.getLogger("magnn.study.pipeline")

SIGMAS = (0.01, 0.0316, 0.1)  # the attack's noise levels (SPEC §7)
STUDY_EBTS = tuple(variant for variant in EBT_VARIANTS if variant is not None)  # compared with no EBT

# quick: minutes on 2 CPU cores; full: the paper's protocol (SPEC §10)
PROFILES = {
    "quick": dict(epochs=15, preset="quick", detect_graphs=300, attack_graphs=256, attack_steps=25,
                  attack_lr=0.05, ablation_graphs=300),
    "full": dict(epochs=1000, preset="paper", detect_graphs=None, attack_graphs=None, attack_steps=1000,
                 attack_lr=7e-4, ablation_graphs=None),
}


@dataclass
class StudyConfig:
    """Everything `magnn study` takes; `validate()` raises the command line's UserError for a bad
    setting (checkpoints are read, and checked, by run_study)."""

    dataset: str = "tox21"
    model: str = "gt"
    out: str = "runs/study"
    quick: bool = False  # the "quick" profile (minutes on a CPU) instead of the full protocol
    ebt: str = "edge"  # the EBT variant compared with no EBT
    epochs: int | None = None  # default: the profile's
    data_root: str | None = None
    device: str = "cpu"
    seed: int = 41
    max_graphs: int | None = None  # first N graphs of each split
    ckpt_no_ebt: str | None = None  # a trained checkpoint to use instead of training
    ckpt_ebt: str | None = None  # a trained EBT checkpoint to use instead of training
    ablation_fraction: float = 0.1  # meaningless edges added, per real edge
    xavier_base: bool = False  # base model Xavier-initialised (the paper's text)
    threshold: float = MA_THRESHOLD
    attack_steps: int | None = None  # default: the profile's (0: random noise only)
    backend: str = "auto"

    @property
    def profile(self) -> str:
        return "quick" if self.quick else "full"

    def validate(self) -> StudyConfig:
        check_choice(self.dataset, DATASETS, "--dataset")
        check_choice(self.model, MODEL_NAMES, "--model")
        check_choice(self.ebt, STUDY_EBTS, "--ebt")
        check_choice(self.backend, BACKEND_NAMES, "--backend")
        check_positive(self.epochs, "--epochs", integer=True)
        check_positive(self.max_graphs, "--max-graphs", integer=True)
        check_positive(self.ablation_fraction, "--ablation-fraction")
        check_positive(self.threshold, "--threshold")
        check_positive(self.attack_steps, "--attack-steps", integer=True, allow_zero=True)
        check_seed(self.seed)
        check_environment(self.device, self.data_root, self.out)
        return self


# -- the meaningless-edge ablation ------------------------------------------------------

def new_edge_type(info) -> int:
    """Edge type id (and edge_attr value) for meaningless edges: one the data never uses."""
    return {"ogb_bond": 4, "zinc_bond": 0}.get(info.edge_features, 1)  # OGB bond type 4 = "misc"


def add_meaningless_edges(data, fraction: float, edge_type: int, generator):
    """A copy of `data` with round(fraction * E) random directed edges of a new type added."""
    import torch

    data = copy.copy(data)
    count = max(1, round(fraction * data.edge_index.shape[1])) if data.num_nodes > 1 else 0
    if count == 0:
        return data
    src = torch.randint(0, data.num_nodes, (count,), generator=generator)
    dst = torch.randint(0, data.num_nodes, (count,), generator=generator)
    data.edge_index = torch.cat([data.edge_index, torch.stack([src, dst])], 1)
    attr = data.edge_attr
    extra = torch.zeros((count,) + tuple(attr.shape[1:]), dtype=attr.dtype)
    if attr.dim() == 1:
        extra[:] = edge_type
    else:
        extra[:, 0] = edge_type
    data.edge_attr = torch.cat([attr, extra], 0)
    data.edge_type = torch.cat([data.edge_type, torch.full((count,), edge_type, dtype=data.edge_type.dtype)])
    return data


def type_summary(report, names) -> dict:
    """Per edge type over all layers: MA edge frequency (MA edges / edges) and the largest r_e."""
    edges, massive, largest = {}, {}, {}
    for layer in report.to_dict()["layers"]:
        for t, counts in layer["edge_types"].items():
            edges[t] = edges.get(t, 0) + counts["edges"]
            massive[t] = massive.get(t, 0) + counts["ma_edges"]
            if counts.get("max_ratio") == counts.get("max_ratio"):  # skip NaN
                largest[t] = max(largest.get(t, 0.0), counts["max_ratio"])
    label = lambda t: names[int(t)] if 0 <= int(t) < len(names) and names[int(t)] else f"type {t}"
    return {label(t): {"ma_frequency": massive[t] / edges[t], "max_ratio": largest.get(t, float("nan"))}
            for t in sorted(edges, key=int) if edges[t]}


# -- the study ---------------------------------------------------------------------------

def _subset(part, count: int | None):
    if count is None or isinstance(part, list) and len(part) <= count:
        return part
    return part[:count]


def _plan(config: StudyConfig, profile, ebt, tag):
    """(TrainConfig, checkpoint or None) for one EBT setting: the given checkpoint's, or one to train."""
    from ..train import TrainConfig, load_checkpoint

    option = "--ckpt-ebt" if ebt else "--ckpt-no-ebt"
    given = config.ckpt_ebt if ebt else config.ckpt_no_ebt
    if given:
        checkpoint = load_checkpoint(given, option=option)
        trained = checkpoint.config
        found = {"--dataset": trained.dataset, "--model": trained.model}
        wanted = {"--dataset": config.dataset, "--model": config.model}
        differing = [f"{name} {found[name]} (the checkpoint) vs {wanted[name]} (this command)"
                     for name in found if found[name] != wanted[name]]
        if differing:
            raise UserError(f"{option} {checkpoint.path} does not match this study: {'; '.join(differing)}; "
                            f"pass {' '.join(f'{n} {found[n]}' for n in found)} or another checkpoint")
        if trained.ebt != ebt:
            how = f"--ebt {trained.ebt}" if trained.ebt else "no EBT"
            raise UserError(f"{option} {checkpoint.path} was trained with {how}, but {option} needs "
                            f"{'--ebt ' + ebt if ebt else 'a model without EBT'}"
                            + (f" (pass --ebt {trained.ebt} to study that variant)" if ebt and trained.ebt else ""))
        if config.data_root is not None:
            trained.data_root = config.data_root
        return trained, checkpoint
    train_config = TrainConfig(
        dataset=config.dataset, model=config.model, ebt=ebt,
        epochs=profile["epochs"] if config.epochs is None else config.epochs,
        out=str(Path(config.out) / tag), data_root=config.data_root, device=config.device, seed=config.seed,
        max_graphs=config.max_graphs, preset=profile["preset"], backend=config.backend,
    )
    return train_config, None


def _trained(config, checkpoint, info):
    """(model, metrics): loaded from the given checkpoint, or trained here and its best epoch loaded."""
    from ..train import build, load_checkpoint, train

    if checkpoint is not None:
        path = checkpoint.path.parent / "metrics.json"
        try:
            metrics = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):  # unreadable metrics beside a good checkpoint: report without them
            log.warning(f"cannot read {path}; the report leaves this model's training metrics out")
            metrics = None
    else:
        metrics = train(config)
        checkpoint = load_checkpoint(Path(config.out) / "best.pt", option="--out")
    model = build(config, info)
    checkpoint.restore_model(model)
    return model, metrics


def _base(config, info, xavier: bool):
    """Same architecture and seed, untrained (default init; Xavier with --xavier-base)."""
    from ..analysis.detect import xavier_reset
    from ..train import build, seed_everything

    seed_everything(config.seed)
    model = build(config, info)
    return xavier_reset(model) if xavier else model


def run_study(config: StudyConfig) -> dict:
    """The whole study (`magnn study`): writes report.json, report.md and the figures into config.out
    and returns the report (the dictionary report.json holds)."""
    import torch

    from ..analysis.attack import explicit_bias_attack
    from ..analysis.detect import detect
    from ..analysis.figures import (
        plot_ablation,
        plot_edge_ratios,
        plot_layer_histograms,
        plot_sorted_ratios,
        plot_type_heatmap,
    )
    from ..train import loss_function, prepare
    from .report import findings, markdown, report_json

    config.validate()
    profile = dict(PROFILES[config.profile])
    if config.attack_steps is not None:
        profile["attack_steps"] = config.attack_steps
    variants = {"no_ebt": None, f"ebt_{config.ebt}": config.ebt}
    plans = {tag: _plan(config, profile, ebt, tag) for tag, ebt in variants.items()}  # reads given checkpoints
    out = output_folder(config.out, "--out")  # after every check: a refused run writes nothing
    configs = {tag: train_config for tag, (train_config, _) in plans.items()}
    splits, info, _ = prepare(configs["no_ebt"])  # the data once, for every model below
    trained, metrics = {}, {}
    for tag, (train_config, state) in plans.items():
        log.info(f"== training {config.model} on {config.dataset} ({tag})")
        trained[tag], metrics[tag] = _trained(train_config, state, info)
    test_graphs = _subset(splits["test"], profile["detect_graphs"])
    names = info.edge_type_names

    detections, edge_ratios = {}, {}
    for tag in variants:
        for kind, model in (("base", _base(configs[tag], info, config.xavier_base)), ("trained", trained[tag])):
            label = f"{kind} {tag}"
            log.info(f"== detecting MAs: {label}")
            detections[label] = detect(model, test_graphs, device=config.device, threshold=config.threshold, desc=label)
            edge_ratios[label] = _last_layer_edge_ratios(model, test_graphs, config.device)

    # meaningless-edge ablation on the trained model without EBT
    generator = torch.Generator().manual_seed(config.seed)
    fake_type = new_edge_type(info)
    fake_name = "meaningless"
    type_names = list(names) + [""] * max(0, fake_type + 1 - len(names))
    type_names[fake_type] = fake_name
    ablated = [add_meaningless_edges(g, config.ablation_fraction, fake_type, generator)
               for g in _subset(splits["test"], profile["ablation_graphs"])]
    log.info("== ablation: meaningless edges")
    ablation_report = detect(trained["no_ebt"], ablated, device=config.device, threshold=config.threshold, desc="ablation")
    ablation = {
        "fraction": config.ablation_fraction,
        "edge_type": fake_type,
        "without": type_summary(detections["trained no_ebt"], type_names),
        "with": type_summary(ablation_report, type_names),
    }

    # explicit bias attack on the validation split
    attack = {}
    loss_fn = loss_function(info.task)
    val_graphs = _subset(splits["val"], profile["attack_graphs"])
    if info.task != "node_multilabel":
        for tag in variants:
            attack[tag] = [
                explicit_bias_attack(trained[tag], val_graphs, loss_fn, sigma=sigma, steps=profile["attack_steps"],
                                     lr=profile["attack_lr"], device=config.device, seed=config.seed).to_dict()
                for sigma in SIGMAS
            ]

    # figures
    title = f"{config.model.upper()} on {config.dataset}"
    figures = {
        "sorted_max_ratios": plot_sorted_ratios(detections, out / "sorted_max_ratios.png", title=title, threshold=config.threshold),
        "edge_ratios": plot_edge_ratios(edge_ratios, out / "edge_ratios.png", title=f"{title}: per-edge ratios, last layer", threshold=config.threshold),
        "ablation": plot_ablation({"test graphs": ablation["without"], f"+{config.ablation_fraction:.0%} meaningless edges": ablation["with"]},
                                  out / "ablation.png", title=f"{title}: where the MAs go", threshold=config.threshold),
    }
    for label, detection in detections.items():
        slug = label.replace(" ", "_")
        figures[f"hist_{slug}"] = plot_layer_histograms(detection, out / f"hist_{slug}.png", title=f"{title}, {label}")
        if label.startswith("trained"):
            figures[f"heatmap_{slug}"] = plot_type_heatmap(detection, out / f"heatmap_{slug}.png", type_names=type_names,
                                                           title=f"{title}, {label}: MAs by edge type", threshold=config.threshold)

    report = {
        "dataset": config.dataset, "model": config.model, "ebt": config.ebt, "profile": config.profile,
        "threshold": config.threshold,
        "training": {tag: (m or {}).get("test") for tag, m in metrics.items()},
        "detection": {label: d.to_dict() for label, d in detections.items()},
        "ablation": ablation,
        "attack": attack,
        "figures": {name: str(path.name) for name, path in figures.items()},
    }
    report["findings"] = findings(report, variants)
    (out / "report.json").write_text(report_json(report))
    (out / "report.md").write_text(markdown(report, variants))
    return report


def _last_layer_edge_ratios(model, graphs, device):
    """Per-edge ratios r_e of the last attention layer over all graphs (for Fig. 1)."""
    import torch
    from torch_geometric.loader import DataLoader

    from ..stats import collect

    model.eval().to(device)
    parts = []
    with torch.no_grad():
        for batch in DataLoader(graphs, batch_size=64):
            with collect(model, keep_edge_ratio=True) as stats:
                model(batch.to(device))
            parts.append(list(stats.values())[-1].edge_ratio)
    return torch.cat(parts).numpy()
