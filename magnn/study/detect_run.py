"""`magnn detect`: MA detection on a split from a saved checkpoint (detect.json + figures).

Library entry point: `run_detect(DetectConfig(ckpt=...))`; the command line only
parses its options into a DetectConfig and prints the result's summary.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.constants import MA_THRESHOLD
from ..core.errors import UserError, output_folder
from ..core.files import write_atomically
from ..train.validation import check_detect_config

if TYPE_CHECKING:
    from ..analysis.detect import DetectionReport


@dataclass
class DetectConfig:
    """Everything `magnn detect` takes; `validate()` raises the command line's UserError for a bad
    setting (the checkpoint itself is read, and checked, by run_detect)."""

    ckpt: str  # a checkpoint written by magnn train (best.pt or last.pt)
    split: str = "test"
    out: str | None = None  # default: detect_<split> next to the checkpoint
    max_batches: int | None = None  # the first N batches only
    threshold: float = MA_THRESHOLD
    device: str = "cpu"
    data_root: str | None = None  # default: the one the checkpoint was trained with
    tox21_csv: str | None = None  # default: the one the checkpoint was trained with
    without_bias: bool = False  # statistics of the score without EBT's bias term (magnn.analysis.unbiased)

    def validate(self) -> DetectConfig:
        check_detect_config(self)
        return self


@dataclass
class DetectResult:
    """What run_detect wrote (out/detect.json and figures) and found."""

    report: DetectionReport
    out: Path
    dataset: str
    model: str

    def summary(self) -> list[str]:
        """One line per layer: its largest edge ratio and, when fitted, the gamma fit's KS statistic."""
        from .report import layer_cell

        return [f"{layer.name}: max ratio {layer_cell(layer.to_dict())}"
                + (f", gamma KS {layer.gamma.ks:.3f}" if layer.gamma else "") for layer in self.report.layers]


def run_detect(config: DetectConfig) -> DetectResult:
    """Detect MAs with the checkpoint's model on one split; writes detect.json, sorted_max_ratios.png
    and neg_log10_ratio_hist.png into config.out (default: detect_<split> beside the checkpoint)."""
    from ..analysis.detect import detect
    from ..analysis.figures import plot_layer_histograms, plot_sorted_ratios
    from ..train import load_checkpoint, prepare
    from .report import report_json

    config.validate()
    checkpoint = load_checkpoint(config.ckpt, option="--ckpt")
    train_config = checkpoint.config
    if config.data_root is not None:
        train_config.data_root = config.data_root
    if config.tox21_csv is not None:
        train_config.tox21_csv = config.tox21_csv
    out = output_folder(Path(config.out) if config.out else checkpoint.path.parent / f"detect_{config.split}", "--out")
    splits, _, model = prepare(train_config)
    checkpoint.restore_model(model)
    if len(splits[config.split]) == 0:
        raise UserError(f"--split {config.split}: the {train_config.dataset} {config.split} split is empty; "
                        "pick another split")
    report = detect(model, splits[config.split], device=config.device, threshold=config.threshold,
                    max_batches=config.max_batches, without_bias=config.without_bias)
    write_atomically(out / "detect.json", report_json(report.to_dict()))
    plot_sorted_ratios({"trained": report}, out / "sorted_max_ratios.png",
                       title=f"{train_config.model} on {train_config.dataset}")
    plot_layer_histograms(report, out / "neg_log10_ratio_hist.png")
    return DetectResult(report, out, train_config.dataset, train_config.model)
