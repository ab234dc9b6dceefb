"""The MA paper's experimental settings (SPEC §10), one per (model, dataset).

`build_model(..., preset=...)` applies the model columns; the training
columns (lr, scheduler patience, min_lr, batch size) and the shared protocol
are here for the trainer. Shared model settings of the protocol: BatchNorm,
sparse graphs (real edges only: SAN without fake edges, GraphiT without the
kernel weighting), no positional encoding, EBT parameters drawn from a
standard normal (the paper code's initialisation).

ogbn-proteins has two named architectures (`PROTEINS_ARCHITECTURES`):
"paper" (the `paper` preset's: node input = species embedding only; the raw
8-dim edge features re-embedded for every layer by ONE shared Linear(8,
hidden), GT, GraphiT and SAN alike, GT without an edge stream; that Linear is folded into
each layer's edge projection, `fused_edge_projection=True`, so that the edge projection runs
inside the kernels and no [E, hidden] tensor exists: at ogbn-proteins' 79M edges one such
tensor is 20 GB in fp32, more than the whole training step needs) and "magnn"
(richer inputs: mean incoming edge features added to the node input, GT
carrying its edge stream across layers, GraphiT and SAN with one edge Linear
per layer). `proteins_architecture(model, name)` gives the model keywords of
either; `variant_overrides` turns the named variants (--architecture,
--ebt-compat) into model keywords for the command line and the study alike.

The quick profiles (`--preset quick` of magnn train, `--quick` of magnn study)
are a section of their own below: pure data on top of the paper's rows.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["Preset", "PRESETS", "PROTOCOL", "DATASETS", "dataset_key", "get_preset", "PROTEINS_ARCHITECTURES",
           "proteins_architecture", "architecture_name", "QUICK_MODEL", "QUICK_DATASET_MODEL", "QUICK_TRAINING",
           "STUDY_PROFILES", "NODE_STUDY_PROFILES", "QUICK_PAIRS", "study_profile", "EBT_COMPAT_MODES",
           "EBT_COMPAT_MODELS", "PRESET_NAMES", "variant_overrides", "mitigation_ebt"]

from ..core.constants import DATASETS  # re-exported: the datasets presets exist for

# shared by every row of the table
PROTOCOL = {
    "seed": 41,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "lr_factor": 0.5,  # ReduceLROnPlateau(mode="min") on the validation loss
    "max_epochs": 1000,
}

# the model settings every preset shares, per model
_SHARED_MODEL = {
    "gt": {"norm": "batch", "pe": None, "ebt_init": "standard_normal"},
    "graphit": {"norm": "batch", "pe": None, "ebt_init": "standard_normal"},
    "san": {"norm": "batch", "pe": None, "ebt_init": "standard_normal", "full_graph": False},
}

# ogbn-proteins model variants, by name, per model (see the module docstring)
PROTEINS_ARCHITECTURES = {
    "paper": {
        "gt": {"node_input": "species", "edge_stream": False, "fused_edge_projection": True},
        "graphit": {"node_input": "species", "layer_edge_encoders": False, "fused_edge_projection": True},
        "san": {"node_input": "species", "layer_edge_encoders": False, "fused_edge_projection": True},
    },
    "magnn": {
        "gt": {"node_input": "species+edge_mean", "edge_stream": True, "fused_edge_projection": False},
        "graphit": {"node_input": "species+edge_mean", "layer_edge_encoders": True, "fused_edge_projection": False},
        "san": {"node_input": "species+edge_mean", "layer_edge_encoders": True, "fused_edge_projection": False},
    },
}


def proteins_architecture(model: str, name: str = "paper") -> dict:
    """Model keywords of the named ogbn-proteins architecture ("paper" or "magnn")."""
    if name not in PROTEINS_ARCHITECTURES:
        raise ValueError(f"unknown ogbn-proteins architecture {name!r}; choose one of {tuple(PROTEINS_ARCHITECTURES)}")
    return dict(PROTEINS_ARCHITECTURES[name][model])


def architecture_name(model: str, config: dict) -> str:
    """"paper", "magnn" or "custom": which named ogbn-proteins architecture a model config is
    (fused_edge_projection is how the memory is spent, not which function: it is not compared)."""
    for name, rows in PROTEINS_ARCHITECTURES.items():
        if all(config.get(key) == value for key, value in rows[model].items() if key != "fused_edge_projection"):
            return name
    return "custom"


@dataclass(frozen=True)
class Preset:
    model: str
    dataset: str
    num_layers: int
    hidden: int
    heads: int
    readout: Optional[str]
    residual: bool
    dropout: float
    lr: float
    patience: int
    min_lr: float
    batch_size: int

    def model_kwargs(self) -> dict:
        kwargs = {key: getattr(self, key) for key in ("num_layers", "hidden", "heads", "readout", "residual", "dropout")}
        kwargs.update(_SHARED_MODEL[self.model])
        if self.dataset == "ogbn-proteins":
            kwargs.update(proteins_architecture(self.model, "paper"))
        return kwargs

    def train_kwargs(self) -> dict:
        kwargs = {key: getattr(self, key) for key in ("lr", "patience", "min_lr", "batch_size")}
        kwargs.update(PROTOCOL)
        return kwargs

    def to_dict(self) -> dict:
        return asdict(self)


_ROWS = [
    # model, dataset, L, hidden, heads, readout, residual, dropout, lr, patience, min_lr, batch
    ("gt", "zinc", 10, 64, 8, "mean", True, 0.0, 7e-4, 15, 1e-6, 128),
    ("gt", "tox21", 10, 444, 12, "mean", True, 0.0, 7e-4, 15, 1e-6, 128),
    ("gt", "ogbn-proteins", 3, 64, 8, None, False, 0.0, 7e-4, 15, 1e-6, 512),
    ("san", "zinc", 10, 56, 8, "sum", True, 0.0, 7e-4, 25, 1e-6, 32),
    ("san", "tox21", 10, 88, 8, "sum", True, 0.5, 7e-4, 25, 1e-6, 128),
    ("san", "ogbn-proteins", 3, 88, 8, None, False, 0.5, 7e-4, 25, 1e-5, 512),
    ("graphit", "zinc", 10, 64, 8, "sum", True, 0.0, 3e-4, 25, 1e-6, 32),
    ("graphit", "tox21", 10, 88, 8, "sum", True, 0.5, 7e-4, 25, 1e-6, 256),
    ("graphit", "ogbn-proteins", 3, 88, 8, None, False, 0.5, 7e-4, 25, 1e-5, 768),
]
PRESETS: dict[tuple[str, str], Preset] = {(row[0], row[1]): Preset(*row) for row in _ROWS}


def dataset_key(name: str) -> str:
    """'ZINC', 'zinc-subset', 'ogbg-moltox21', 'ogbn-proteins', ... -> 'zinc' | 'tox21' | 'ogbn-proteins'."""
    lowered = name.lower()
    if "zinc" in lowered:
        return "zinc"
    if "tox21" in lowered:
        return "tox21"
    if "protein" in lowered:
        return "ogbn-proteins"
    raise ValueError(f"no preset for dataset {name!r}; presets exist for {DATASETS}")


def get_preset(model: str, dataset: str) -> Preset:
    key = (model, dataset_key(dataset))
    if key not in PRESETS:
        raise ValueError(f"no preset for model {model!r}; choose one of 'gt', 'graphit', 'san'")
    return PRESETS[key]


# -- quick profiles: CPU-sized settings on top of the paper's rows (pure data) ----------------------
# What `--preset quick` (magnn train) and `--quick` (magnn study) change; the searches behind the
# values: docs/EXPERIMENTS.md.

# magnn train --preset quick: the paper's row for the pair, shrunk to train in minutes on 2 CPU cores
QUICK_MODEL = {"num_layers": 4, "hidden": 64, "heads": 8}
# on top of QUICK_MODEL and the paper's training row, per dataset: TOX21 trains with dropout 0.2,
# batches of 32 graphs and lr 1e-3, 3 warmup epochs then cosine decay
QUICK_DATASET_MODEL = {"tox21": {"dropout": 0.2}}
QUICK_TRAINING = {"tox21": {"lr": 1e-3, "schedule": "cosine", "warmup_epochs": 3, "batch_size": 32}}

# magnn study profiles. quick: minutes on 2 CPU cores; full: the paper's protocol (SPEC §10).
# attack_steps is the attack's epoch cap (one Adam step per validation batch per epoch); quick
# lowers the cap and the split, never the protocol (lr 7e-4, plateau schedule, min_lr stop).
# fit_edges: the gamma fit sees the exact ratios of each layer's first fit_edges edges (the
# paper's code: 50,000), see magnn.analysis.detect; mechanics_graphs: the test graphs the MA intervention
# and the int8 sensitivity run on (magnn.study.mechanics; None: the whole test split)
STUDY_PROFILES = {
    "quick": dict(epochs=15, preset="quick", detect_graphs=300, attack_graphs=256, attack_steps=25,
                  ablation_graphs=300, fit_edges=5_000, mechanics_graphs=100),
    "full": dict(epochs=1000, preset="paper", detect_graphs=None, attack_graphs=None, attack_steps=1000,
                 ablation_graphs=None, fit_edges=50_000, mechanics_graphs=None),
}
# ogbn-proteins (one large graph): detect_graphs / attack_graphs count seed nodes (one sampled
# subgraph each); the ablation and magnn's full-graph detection use the whole graph
NODE_STUDY_PROFILES = {
    "quick": dict(epochs=4, preset="quick", detect_graphs=150, attack_graphs=16, attack_steps=3,
                  ablation_graphs=None, lr=1e-2),  # full batch: one step per epoch, hence the larger lr
    "full": dict(epochs=1000, preset="paper", detect_graphs=None, attack_graphs=512, attack_steps=1000,
                 ablation_graphs=None),
}
# quick, per (dataset, model), on top of STUDY_PROFILES["quick"]: GT on the bundled ZINC keeps the
# paper's 10-layer model (its MAs grow with depth) and trains it at lr 2e-3 for 60 epochs, so that
# the quick study shows them
QUICK_PAIRS = {("zinc", "gt"): dict(epochs=60, preset="paper", lr=2e-3)}


def study_profile(dataset: str, model: str, quick: bool) -> dict:
    """A study's profile settings: STUDY_PROFILES (NODE_STUDY_PROFILES for ogbn-proteins), with
    QUICK_PAIRS on top for a quick study of a listed (dataset, model) pair."""
    profiles = NODE_STUDY_PROFILES if dataset == "ogbn-proteins" else STUDY_PROFILES
    profile = dict(profiles["quick" if quick else "full"])
    if quick:
        profile.update(QUICK_PAIRS.get((dataset, model), {}))
    return profile


# -- named variants -> model keywords -----------------------------------------------------------------

# EBT as the paper's published code computes it (magnn.models.compat); None: the formula. The
# paper's GT code computes the formula, so the switch leaves GT alone.
EBT_COMPAT_MODES = ("gnn-mas",)
EBT_COMPAT_MODELS = ("san", "graphit")
PRESET_NAMES = ("paper", "quick")


def mitigation_ebt(mitigation: Optional[str], ebt: Optional[str]) -> Optional[str]:
    """The EBT variant a run uses: `ebt`, or the one --mitigation ebt-edge / ebt-slot names (UserError
    when --ebt names another one). The other mitigations leave `ebt` alone."""
    from ..core.errors import UserError
    from ..core.mitigation import MITIGATION_EBT

    wanted = MITIGATION_EBT.get(mitigation)
    if wanted is None or ebt in (None, wanted):
        return ebt if wanted is None else wanted
    raise UserError(f"--mitigation {mitigation} is --ebt {wanted}, but --ebt {ebt} was given: drop one of them")


def variant_overrides(model: str, dataset: str, *, architecture: Optional[str] = None,
                      ebt_compat: Optional[str] = None, mitigation: Optional[str] = None) -> dict:
    """The model keywords that the named variants select: `architecture` (ogbn-proteins only:
    PROTEINS_ARCHITECTURES), `ebt_compat` (SAN and GraphiT; GT computes the formula either way) and
    `mitigation` "sink" / "gate" (the model keyword; "ebt-edge" / "ebt-slot" are the EBT setting,
    `mitigation_ebt`; "none" selects nothing). UserError when a variant does not apply or is unknown."""
    from ..core.errors import UserError
    from ..core.mitigation import MITIGATIONS

    overrides = {}
    if mitigation is not None:
        if mitigation not in MITIGATIONS:
            raise UserError(f"unknown --mitigation {mitigation!r}; choose one of {MITIGATIONS}")
        if mitigation in ("sink", "gate"):
            overrides["mitigation"] = mitigation
    if architecture is not None:
        if dataset != "ogbn-proteins":
            raise UserError(f"--architecture chooses between ogbn-proteins' two model forms; drop it for "
                             f"--dataset {dataset}")
        overrides.update(proteins_architecture(model, architecture))
    if ebt_compat is not None:
        if ebt_compat not in EBT_COMPAT_MODES:
            raise UserError(f"unknown --ebt-compat {ebt_compat!r}; choose one of {EBT_COMPAT_MODES}")
        if model in EBT_COMPAT_MODELS:
            overrides["ebt_compat"] = ebt_compat
    return overrides
