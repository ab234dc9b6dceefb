"""The study's stages and their record: train, detect, ablate, attack (figures and the report:
magnn.study.outputs).

Each stage returns a typed result and is keyed by the settings it reads and the keys of the
stages it reads from (`StudyKeys`, computed from the config before anything runs). OUT/stages.json
records the key each finished stage ran with; a re-run skips a stage whose key is recorded
(and whose files are there) and redoes the rest:

    train <tag>   reuses OUT/<tag>/last.pt (--analyse best: best.pt) and metrics.json
    ablate        reads OUT/stages/ablation.json
    attack        reads OUT/stages/attack.json
    report        the whole study: report.json is read back (magnn.study.grid skips such a pair)

The detection always runs: its per-layer statistics feed the figures, and it costs seconds
next to training and the attack.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.files import write_atomically
from .ablation import new_edge_type, type_summary
from .task import Detection, GraphTask, StudyData

log = logging.getLogger("magnn.study.stages")

SIGMAS = (0.01, 0.0316, 0.1)  # the attack's noise levels (SPEC §7)
# what an attack result holds (node-level: the seeds' loss; every result: measurable / noise_effect / note);
# part of the attack's key, so that a recorded attack.json of another form is redone, not reused
ATTACK_FORM = "seed-loss+measurable"
RECORD = "stages.json"
ANALYSED_FILES = {"final": "last.pt", "best": "best.pt"}  # --analyse: the checkpoint each choice loads


def stage_key(*parts) -> str:
    """A digest of a stage's settings and input keys (JSON of them, sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageRecord:
    """OUT/stages.json: per stage, the key of the settings and inputs it last finished with."""

    def __init__(self, out):
        self.path = Path(out) / RECORD
        try:
            self.keys = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: every stage runs
            self.keys = {}

    def current(self, stage: str, key: str, *files: Path) -> bool:
        """Whether `stage` finished with `key` and its files are still there."""
        return self.keys.get(stage) == key and all(Path(f).is_file() for f in files)

    def mark(self, stage: str, key: str) -> None:
        self.keys[stage] = key
        write_atomically(self.path, json.dumps(self.keys, indent=1, sort_keys=True))


@dataclass
class StudyKeys:
    """Every stage's key, from the config and the training runs' configs alone."""

    train: dict
    ablate: str
    attack: str
    report: str

    @classmethod
    def of(cls, config, profile: dict, run_configs: dict, given: dict) -> StudyKeys:
        train = {tag: stage_key("train", given[tag] or asdict(run_configs[tag])) for tag in run_configs}
        ablate = stage_key("ablate", train["no_ebt"], config.analyse, config.ablation_fraction, config.threshold,
                           profile["ablation_graphs"], config.train.seed)
        attack = stage_key("attack", ATTACK_FORM, train, config.analyse, SIGMAS, profile["attack_steps"],
                           profile["attack_graphs"], config.attack_node_only, config.attack_shared_noise, config.train.seed,
                           config.train.fanouts)
        report = stage_key("report", train, ablate, attack, config.key_settings(), profile)
        return cls(train, ablate, attack, report)


def given_identity(path) -> dict | None:
    """A given checkpoint (--ckpt-*) as a stage input: its path, size and modification time."""
    if not path:
        return None
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# -- train ------------------------------------------------------------------------------

@dataclass
class Trained:
    """The study's trained models, their metrics.json (None if unavailable) and configs, by tag."""

    models: dict
    metrics: dict
    configs: dict
    analysed: dict = None  # per tag: "final" (last.pt), "best" (best.pt) or "given checkpoint <path>"


def train_stage(plans: dict, info, keys: StudyKeys, record: StageRecord, analyse: str = "final",
                splits=None) -> Trained:
    """Train each run (or load its given checkpoint, or reuse a current run) and load the analysed
    model: the final epoch's (last.pt, as the paper's code analyses) or the best-validation one (best.pt).
    splits: the study's loaded splits, which the runs train on instead of loading their own copy."""
    from ..train import load_checkpoint

    models, metrics, analysed = {}, {}, {}
    kept = ANALYSED_FILES[analyse]
    for tag, (train_config, checkpoint) in plans.items():
        folder = Path(train_config.out)
        stage = f"train {tag}"
        given = checkpoint is not None
        if not given and record.current(stage, keys.train[tag], folder / kept, folder / "metrics.json"):
            log.info(f"== training {train_config.model} on {train_config.dataset} ({tag}): current, reused")
            checkpoint = load_checkpoint(folder / kept, option="--out")
        else:
            log.info(f"== training {train_config.model} on {train_config.dataset} ({tag})"
                     + (": settings changed since the run in the folder, retraining" if (folder / kept).exists()
                        and not given else ""))
        models[tag], metrics[tag] = _trained(train_config, checkpoint, info, kept, splits)
        analysed[tag] = f"given checkpoint {checkpoint.path}" if given else analyse
        record.mark(stage, keys.train[tag])
    return Trained(models, metrics, {tag: plan[0] for tag, plan in plans.items()}, analysed)


def _trained(config, checkpoint, info, kept: str = "last.pt", splits=None):
    """(model, metrics): loaded from the checkpoint, or trained here and `kept` (last.pt / best.pt) loaded."""
    from ..train import build, load_checkpoint, train

    if checkpoint is not None:
        path = checkpoint.path.parent / "metrics.json"
        try:
            metrics = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):  # unreadable metrics beside a good checkpoint: report without them
            log.warning(f"cannot read {path}; the report leaves this model's training metrics out")
            metrics = None
    else:
        data = None if splits is None else (splits, info)
        metrics = train(config, overwrite=True, data=data)  # the stage key changed: the study replaces its own stale run
        checkpoint = load_checkpoint(Path(config.out) / kept, option="--out")
    model = build(config, info)
    checkpoint.restore_model(model)
    return model, metrics


# -- detect -----------------------------------------------------------------------------

def detect_stage(data: StudyData, task: GraphTask, trained: Trained, out: Path) -> dict:
    """Per label ("base <tag>", "trained <tag>"), the detection; writes OUT/curves.json (the grid's
    Fig. 2/4 panels: per-batch max edge ratios in batch order, per label and layer)."""
    from .report import report_json

    detections = {}
    for tag, train_config in trained.configs.items():
        base = _base(train_config, data.info, data.config.xavier_base)
        for kind, model in (("base", base), ("trained", trained.models[tag])):
            label = f"{kind} {tag}"
            log.info(f"== detecting MAs: {label}")
            detections[label] = task.detect(data, model, label)
    write_atomically(out / "curves.json", report_json({label: {layer.name: layer.batch_max_ratio_edge
                                                          for layer in d.report.layers}
                                                  for label, d in detections.items()}))
    return detections


def _base(config, info, xavier: bool):
    """Same architecture and seed, untrained (default init; Xavier with --xavier-base)."""
    from ..analysis.detect import xavier_reset
    from ..train import build, seed_everything

    seed_everything(config.seed)
    model = build(config, info)
    return xavier_reset(model) if xavier else model


# -- ablate -----------------------------------------------------------------------------

def edge_type_names(info) -> tuple[int, list]:
    """(the meaningless edges' type id, the edge type names with it named "meaningless")."""
    fake_type, names = new_edge_type(info), list(info.edge_type_names)
    names += [""] * max(0, fake_type + 1 - len(names))
    names[fake_type] = "meaningless"
    return fake_type, names


def ablate_stage(data: StudyData, task: GraphTask, trained: Trained, detections: dict[str, Detection],
                 key: str, record: StageRecord, out: Path) -> dict:
    """The meaningless-edge ablation on the trained model without EBT: per edge type, without and with."""
    import torch

    from ..analysis.detect import DetectionReport

    path = out / "stages" / "ablation.json"
    if record.current("ablate", key, path):
        log.info(f"== ablation: current, reused ({path})")
        return json.loads(path.read_text())
    config = data.config
    generator = torch.Generator().manual_seed(config.train.seed)
    fake_type, names = edge_type_names(data.info)
    log.info("== ablation: meaningless edges")
    report = task.ablate(data, trained.models["no_ebt"], fake_type, generator)
    ablation = {
        "fraction": config.ablation_fraction,
        "edge_type": fake_type,
        "without": type_summary(task.ablation_baseline(detections), names),
        "with": type_summary(report, names),
        "per_layer": {layer.name: type_summary(DetectionReport([layer]), names) for layer in report.layers},
    }
    _keep(path, ablation)
    record.mark("ablate", key)
    return ablation


# -- attack -----------------------------------------------------------------------------

def attack_stage(data: StudyData, task: GraphTask, trained: Trained, key: str, record: StageRecord,
                 out: Path) -> dict:
    """The explicit bias attack on validation inputs, per trained model and noise level:
    {"protocol": report.json's attack_protocol, "attack": per tag, a result per sigma}."""
    from ..analysis.attack import AttackProtocol, explicit_bias_attack
    from ..train import loss_function

    path = out / "stages" / "attack.json"
    if record.current("attack", key, path):
        log.info(f"== attack: current, reused ({path})")
        return json.loads(path.read_text())
    config = data.config
    loss_fn = loss_function(data.info.task)
    inputs = task.attack_inputs(data)
    protocol = AttackProtocol(max_epochs=data.profile["attack_steps"], edge_noise=not config.attack_node_only,
                              shared_noise=config.attack_shared_noise)
    attack = {}
    if len(inputs):
        for tag, model in trained.models.items():
            attack[tag] = [explicit_bias_attack(model, inputs, loss_fn, sigma=sigma, protocol=protocol,
                                                device=config.train.device, seed=config.train.seed).to_dict()
                           for sigma in SIGMAS]
    result = {"protocol": dict(protocol.to_dict(), sigmas=list(SIGMAS), split="validation", graphs=len(inputs)),
              "attack": attack}
    _keep(path, result)
    record.mark("attack", key)
    return result


def _keep(path: Path, value) -> None:
    """A stage's JSON result, written through a temporary file (NaN kept: the report reads it back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(value, default=str), folder=path.parent.parent)


def study_variants(config) -> dict:
    """The study's training runs by tag: without EBT, and with the compared variant."""
    return {"no_ebt": None, f"ebt_{config.ebt}": config.ebt}
