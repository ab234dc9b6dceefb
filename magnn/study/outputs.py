"""The study's last two stages: the figures (PNG files) and the report (report.json, report.md)."""
from __future__ import annotations

from pathlib import Path

from ..core.files import write_atomically
from .stages import Trained, edge_type_names, study_variants
from .task import GraphTask, StudyData


def figures_stage(data: StudyData, task: GraphTask, trained: Trained, detections: dict, ablation: dict,
                  out: Path) -> dict:
    """Every figure, by name (the paths written)."""
    from ..analysis.figures import plot_edge_ratios_by_layer, plot_ma_over_epochs

    config = data.config
    title = f"{config.model.upper()} on {config.dataset}"
    figures = _sorted_ratio_figures(config, detections, out, title)
    edge_ratios = {label: d.edge_ratios for label, d in detections.items()}
    figures["edge_ratios"] = plot_edge_ratios_by_layer(edge_ratios, out / "edge_ratios.png",
                                                       title=f"{title}: per-edge ratios r_e, every layer (Fig. 1)",
                                                       threshold=config.threshold)
    figures["ablation"] = _ablation_figure(config, ablation, out, title)
    figures.update(task.extra_figures(data, detections, out, title))
    curves = {tag: (metrics or {}).get("ma_over_epochs") for tag, metrics in trained.metrics.items()}
    if all(curves.values()):  # MA emergence over training (metrics.json "ma_over_epochs" of both runs)
        figures["ma_over_epochs"] = plot_ma_over_epochs(curves, out / "ma_over_epochs.png",
                                                        title=f"{title}: MAs over training", threshold=config.threshold)
    figures.update(_per_detection_figures(data, detections, out, title))
    return figures


def fig4_base_label(config) -> str:
    return "base no_ebt" if config.fig4_base == "no_ebt" else f"base ebt_{config.ebt}"


def _sorted_ratio_figures(config, detections: dict, out: Path, title: str) -> dict:
    """Fig. 2 (no EBT vs its base) and Fig. 4 (EBT vs the chosen base)."""
    from ..analysis.figures import plot_sorted_ratios

    ebt_tag, base = f"ebt_{config.ebt}", fig4_base_label(config)
    reports = {label: d.report for label, d in detections.items()}
    return {
        "sorted_max_ratios": plot_sorted_ratios(
            {label: r for label, r in reports.items() if label in ("base no_ebt", "trained no_ebt")},
            out / "sorted_max_ratios.png", title=f"{title} (Fig. 2: no EBT vs base)", threshold=config.threshold),
        "sorted_max_ratios_ebt": plot_sorted_ratios(
            {label: reports[label] for label in (base, f"trained {ebt_tag}")},
            out / "sorted_max_ratios_ebt.png", title=f"{title} (Fig. 4: {ebt_tag} vs {base})",
            threshold=config.threshold),
    }


def _ablation_figure(config, ablation: dict, out: Path, title: str):
    from ..analysis.figures import plot_ablation

    return plot_ablation({"test graphs": ablation["without"],
                          f"+{config.ablation_fraction:.0%} meaningless edges": ablation["with"]},
                         out / "ablation.png", title=f"{title}: where the MAs go", threshold=config.threshold)


def _per_detection_figures(data: StudyData, detections: dict, out: Path, title: str) -> dict:
    """Per detection, its layer histograms (Fig. 3); per trained model, its edge-type heatmap."""
    from ..analysis.figures import plot_layer_histograms, plot_type_heatmap

    _, type_names = edge_type_names(data.info)
    figures = {}
    for label, detection in detections.items():
        slug = label.replace(" ", "_")
        figures[f"hist_{slug}"] = plot_layer_histograms(detection.report, out / f"hist_{slug}.png",
                                                        title=f"{title}, {label}")
        if label.startswith("trained"):
            figures[f"heatmap_{slug}"] = plot_type_heatmap(detection.report, out / f"heatmap_{slug}.png",
                                                           type_names=type_names, threshold=data.config.threshold,
                                                           title=f"{title}, {label}: MAs by edge type")
    return figures


def report_stage(data: StudyData, task: GraphTask, trained: Trained, detections: dict, ablation: dict,
                 attack: dict, figures: dict, out: Path, extra: dict | None = None) -> dict:
    """report.json (every number, and the config that re-runs the study) and report.md; `extra`: the
    other stages' report.json entries (e.g. "sinks", magnn.study.sink_profile)."""
    from ..analysis.detect import tap_kinds
    from .mechanics import mechanics_markdown
    from .report import finding_details, findings, markdown, report_json

    config, metrics = data.config, trained.metrics
    variants = study_variants(config)
    report = {
        "dataset": config.dataset, "model": config.model, "ebt": config.ebt, "profile": config.profile_name,
        "threshold": config.threshold, "abs_threshold": config.abs_threshold,
        "training": {tag: (m or {}).get("test") for tag, m in metrics.items()},
        "training_final": {tag: (m or {}).get("test_final") for tag, m in metrics.items()},
        "training_stopped": {tag: (m or {}).get("stopped") for tag, m in metrics.items()},
        "max_time_minutes": config.train.max_time,
        "ebt_compat": {tag: (c.overrides or {}).get("ebt_compat") for tag, c in trained.configs.items()},
        "fig4_base": fig4_base_label(config),
        "analysed_model": trained.analysed,
        "tap_kinds": {tag: tap_kinds(model) for tag, model in trained.models.items()},
        "gamma_source": _gamma_sources(detections),
        "gamma_fit_edges": data.profile.get("fit_edges", 50_000),
        "attack_protocol": attack["protocol"],
        "detection": {label: d.report.to_dict() for label, d in detections.items()},
        "ablation": ablation,
        "attack": attack["attack"],
        "figures": {name: str(Path(path).name) for name, path in figures.items()},
    }
    report.update(task.extra_report(data, trained.configs["no_ebt"], detections))
    report.update(extra or {})
    report["findings_detail"] = finding_details(report, variants)
    report["findings"] = findings(report, variants)
    report["config"] = config.to_dict()
    write_atomically(out / "report.json", report_json(report))
    write_atomically(out / "report.md", "\n".join([markdown(report, variants), *mechanics_markdown(report.get("mechanics"))]))
    return report


def _gamma_sources(detections: dict) -> dict:
    """Per detection label, how the gamma fits were made ("exact" / "histogram" / "none")."""
    out = {}
    for label, detection in detections.items():
        sources = {layer.gamma.source for layer in detection.report.layers if layer.gamma is not None}
        out[label] = "/".join(sorted(sources)) or "none"
    return out
