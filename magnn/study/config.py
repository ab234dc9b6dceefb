"""StudyConfig: everything `magnn study` takes, as one tree.

    StudyConfig(train=TrainConfig(...), quick=..., ebt=..., ...)

`train` is the template of the study's two training runs (without and with EBT): a
TrainConfig, its fields not copied here. Its `ebt` and `out` are set per run (no_ebt,
ebt_<variant>, each in OUT/<tag>); its epochs, preset and lr, when None, come from the
study's profile (magnn.models.presets.study_profile). `StudyConfig.from_options(...)` builds
the tree from the command line's flat option names, turning the named variants
(--architecture, --ebt-compat) into model keywords with magnn.models.presets.variant_overrides.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from ..core.constants import MA_THRESHOLD
from ..models.presets import mitigation_ebt, study_profile, variant_overrides
from ..train import TrainConfig
from ..train.validation import check_study_config, check_variant_choices

VARIANT_OPTIONS = ("architecture", "ebt_compat", "mitigation")
KEYED_BY_THEIR_STAGE = {"mechanics_threshold": None}  # setting -> its default (StudyConfig.key_settings)


def _template() -> TrainConfig:
    return TrainConfig(epochs=None)


@dataclass
class StudyConfig:
    """The study's training template and its own settings; `validate()` raises the command
    line's UserError for a bad setting (checkpoints are read, and checked, by run_study)."""

    train: TrainConfig = field(default_factory=_template)
    out: str = "runs/study"
    quick: bool = False  # the "quick" profile (minutes on a CPU) instead of the full protocol
    ebt: str = "edge"  # the EBT variant compared with no EBT
    ckpt_no_ebt: str | None = None  # a trained checkpoint to use instead of training
    ckpt_ebt: str | None = None  # a trained EBT checkpoint to use instead of training
    ablation_fraction: float = 0.1  # meaningless edges added, per real edge
    xavier_base: bool = False  # base model Xavier-initialised (the paper's text)
    threshold: float = MA_THRESHOLD
    attack_steps: int | None = None  # the attack's epoch cap; default: the profile's (0: random noise only)
    attack_node_only: bool = False  # attack noise on the node embedding only (default: node and edge)
    attack_shared_noise: bool = False  # one attack noise vector shared by every node / edge and batch
    max_seeds: int | None = None  # ogbn-proteins: cap on the test seed nodes of the seed-subgraph detection
    seeds: int = 1  # the pair run this many times (seed, seed+1, ...): findings as mean and interval over seeds
    abs_threshold: float = 100.0  # the absolute MA criterion beside the ratio: max |a| above it (the LLM definition)
    analyse: str = "final"  # the analysed model: "final" (the last epoch's, as the paper's code) or "best" (validation)
    fig4_base: str = "own"  # Fig. 4's base band: "own" (the EBT model's base) or "no_ebt" (the no-EBT base)
    mechanics_threshold: float | None = None  # the MA intervention's threshold (None: `threshold`); detection keeps `threshold`

    @property
    def profile_name(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def dataset(self) -> str:
        return self.train.dataset

    @property
    def model(self) -> str:
        return self.train.model

    @property
    def intervention_threshold(self) -> float:
        """The r_ec above which the mechanics stage's intervention edits an entry: --mechanics-threshold,
        else the detection's --threshold."""
        return self.threshold if self.mechanics_threshold is None else self.mechanics_threshold

    def profile(self) -> dict:
        """The profile's settings for this study, --attack-steps applied."""
        profile = study_profile(self.train.dataset, self.train.model, self.quick)
        if self.attack_steps is not None:
            profile["attack_steps"] = self.attack_steps
        return profile

    def run_config(self, ebt, out: str) -> TrainConfig:
        """The TrainConfig of one of the study's training runs: the template, the profile filling its gaps."""
        profile = self.profile()
        template = self.train
        return dataclasses.replace(
            template, ebt=ebt, out=out, overrides=dict(template.overrides), fanouts=tuple(template.fanouts),
            epochs=profile["epochs"] if template.epochs is None else template.epochs,
            preset=profile["preset"] if template.preset is None else template.preset,
            lr=profile.get("lr") if template.lr is None else template.lr)

    def validate(self) -> StudyConfig:
        check_study_config(self)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def key_settings(self) -> dict:
        """to_dict() as the report's stage key reads it: the settings that only one later stage reads
        (KEYED_BY_THEIR_STAGE) left out at their default, so that a study finished without them
        stays current; their own stage keys them."""
        return {name: value for name, value in self.to_dict().items()
                if not (name in KEYED_BY_THEIR_STAGE and value == KEYED_BY_THEIR_STAGE[name])}

    @classmethod
    def from_dict(cls, raw: dict) -> StudyConfig:
        """The config report.json records ("config")."""
        raw = dict(raw)
        return cls(train=TrainConfig.from_dict(raw.pop("train")), **raw)

    @classmethod
    def from_options(cls, **options) -> StudyConfig:
        """A StudyConfig from flat settings named as the command line names them: the study's own
        fields, TrainConfig's fields (into `train`) and the named variants (into train.overrides)."""
        own = {name for name in cls.__dataclass_fields__ if name != "train"}
        train_fields = set(TrainConfig.__dataclass_fields__) - own
        unknown = set(options) - own - train_fields - set(VARIANT_OPTIONS)
        if unknown:
            raise TypeError(f"StudyConfig has no setting(s) {sorted(unknown)}")
        train = {name: value for name, value in options.items() if name in train_fields}
        train.setdefault("epochs", None)
        template = TrainConfig(**train)
        architecture, ebt_compat, mitigation = (options.get(name) for name in VARIANT_OPTIONS)
        check_variant_choices(architecture, ebt_compat, mitigation)
        template.overrides = {**variant_overrides(template.model, template.dataset, architecture=architecture,
                                                  ebt_compat=ebt_compat, mitigation=mitigation), **template.overrides}
        template.fanouts = tuple(template.fanouts)
        study = {name: value for name, value in options.items() if name in own}
        if mitigation_ebt(mitigation, None) is not None:  # ebt-edge / ebt-slot: the EBT variant compared
            study["ebt"] = mitigation_ebt(mitigation, None)
        return cls(train=template, **study)
