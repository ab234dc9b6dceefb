"""MA detection on your own model (SPEC §6), as `magnn detect` does for magnn's checkpoints.

    import magnn.detect

    result = magnn.detect.run(trained, test_graphs, base="reset", out="detect_out",
                              forward=lambda model, batch: model(batch.x, batch.edge_index, batch.edge_attr))
    print("\\n".join(result.summary()))
    result.to_dict()["detection"]["trained"]["layers"][0]["max_ratio_edge"]

Works on any `torch.nn.Module` whose attention layers `magnn.stats.collect` sees: magnn's
layers (statistics from the kernels) and every PyG `MessagePassing` layer (TransformerConv,
GATConv, GINEConv, GPSConv's conv, ...: statistics of each layer's per-edge messages), plus
the outputs of the modules named in ``modules=`` (node-level). Each batch contributes its
largest edge ratio per layer (one graph per batch is the paper's protocol); histograms merge
over the batches; a gamma distribution is fitted to -log10(ratio) with its KS statistic.

The report has the structure of `magnn detect`'s detect.json, one entry per model:
``{"detection": {"trained": {"layers": [...]}, "base": {...}}, "threshold": ..., "figures": {...}}``
(each layer: name, max_ratio_edge, median_batch_max_ratio_edge, max_ratio_layer,
batches_with_ma, batches, stats, gamma, edge_types). With ``out=`` it writes detect.json,
sorted_max_ratios.png (base vs trained, the paper's Fig. 2/4) and one
neg_log10_ratio_hist_<label>.png per model (Fig. 3).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from .analysis.detect import DetectionReport, LayerReport, fit_gamma, record_batch
from .core.progress import progress_enabled
from .core.constants import MA_THRESHOLD
from .core.errors import UserError, check_positive, output_folder
from .stats import collect

Forward = Callable[[torch.nn.Module, object], object]


def _default_forward(model, batch):
    return model(batch)


def _batches(data, batch_size: int) -> Iterable:
    """What the user passed as batches: a DataLoader / iterable of batches as is; a list or
    Dataset of PyG Data batched `batch_size` at a time; one Data as one batch."""
    from torch_geometric.data import Data, Dataset
    from torch_geometric.loader import DataLoader

    if isinstance(data, Data):
        return [data]
    if isinstance(data, (list, tuple, Dataset)):
        if len(data) == 0:
            raise UserError("magnn.detect.run: no graphs given; pass a non-empty list, Dataset or DataLoader")
        if all(isinstance(graph, Data) for graph in data):
            return DataLoader(data, batch_size=batch_size, shuffle=False)
        return data
    if isinstance(data, Iterable):
        return data
    raise UserError(f"magnn.detect.run: cannot iterate over a {type(data).__name__}; pass a DataLoader, "
                    "a list/Dataset of torch_geometric Data, or one Data")


def base_model(model: torch.nn.Module, base: Union[str, torch.nn.Module, None]) -> Optional[torch.nn.Module]:
    """The base model: `base` itself, None, or with base="reset" a copy of `model` whose every
    submodule with `reset_parameters()` (PyG's and magnn's convention) is re-initialised,
    i.e. the same architecture untrained (seeded by the global torch RNG)."""
    if base is None or isinstance(base, torch.nn.Module):
        return base
    if base != "reset":
        raise UserError(f"magnn.detect.run: base must be a model, 'reset' or None, got {base!r}")
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return fresh


@torch.no_grad()
def detect_model(model: torch.nn.Module, data, *, forward: Forward = _default_forward, batch_size: int = 1,
                 device="cpu", threshold: float = MA_THRESHOLD, max_batches: Optional[int] = None,
                 edge_type_attr: Optional[str] = None, modules: Sequence[str] = (), fit: bool = True,
                 progress: bool = False, desc: str = "detect") -> DetectionReport:
    """One model's `DetectionReport` over `data` (see `run`); eval mode, no gradients."""
    from tqdm import tqdm

    check_positive(batch_size, "batch_size", integer=True)
    check_positive(max_batches, "max_batches", integer=True)
    check_positive(threshold, "threshold")
    model.eval().to(device)
    reports: dict[str, LayerReport] = {}
    batches = _batches(data, batch_size)
    for position, batch in enumerate(tqdm(batches, desc=desc, disable=not progress_enabled(progress), leave=False)):
        if max_batches is not None and position >= max_batches:
            break
        batch = batch.to(device) if hasattr(batch, "to") else batch
        kwargs = {"threshold": threshold}
        if edge_type_attr is not None:
            types = getattr(batch, edge_type_attr, None)
            if types is None:
                raise UserError(f"magnn.detect.run(edge_type_attr={edge_type_attr!r}): the batch has no "
                                f"{edge_type_attr!r} attribute; pass the name of its per-edge type tensor or None")
            kwargs["edge_types"] = types
        with collect(model, modules=modules, **kwargs) as stats:
            forward(model, batch)
        record_batch(reports, stats)
    if not reports:
        raise UserError("magnn.detect.run: no batch was run (the data yielded nothing)")
    if fit:
        for report in reports.values():
            report.gamma = fit_gamma(report.stats.hist_ratio)
    return DetectionReport(list(reports.values()))


@dataclass
class DetectRun:
    """What `run` found (one DetectionReport per model label) and wrote (figures, detect.json)."""

    reports: dict
    threshold: float
    out: Optional[Path] = None
    figures: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"detection": {label: report.to_dict() for label, report in self.reports.items()},
                "threshold": self.threshold, "figures": {key: str(path) for key, path in self.figures.items()}}

    def summary(self) -> list[str]:
        """One line per model and layer: its largest edge ratio and the gamma fit's KS statistic."""
        lines = []
        for label, report in self.reports.items():
            for layer in report.layers:
                ratio = layer.to_dict()["max_ratio_edge"]
                lines.append(f"{label} {layer.name}: max ratio {ratio:.4g}"
                             + (f", gamma KS {layer.gamma.ks:.3f}" if layer.gamma else ""))
        return lines


def run(model: torch.nn.Module, data, *, base: Union[str, torch.nn.Module, None] = None,
        forward: Forward = _default_forward, out=None, batch_size: int = 1, device="cpu",
        threshold: float = MA_THRESHOLD, max_batches: Optional[int] = None, edge_type_attr: Optional[str] = None,
        modules: Sequence[str] = (), fit: bool = True, progress: bool = False, title: str = "") -> DetectRun:
    """Detect massive activations in `model` (and a base model) over `data`.

    Args:
      model: the trained model (any nn.Module holding magnn or PyG attention layers).
      data: a DataLoader or iterable of batches, a list/Dataset of PyG Data (batched
        `batch_size` at a time, 1 = the paper's protocol), or one Data.
      base: a base model to compare with (same architecture, e.g. untrained), "reset"
        (a copy of `model` with every `reset_parameters()` called), or None.
      forward: how to call a model on a batch (default ``model(batch)``), e.g.
        ``lambda m, b: m(b.x, b.edge_index, b.edge_attr)``.
      out: a folder for detect.json and the figures (nothing written when None).
      threshold: ratio above which an activation is massive (SPEC §4, 1000).
      max_batches: the first N batches only. edge_type_attr: the batches' per-edge type
        attribute (e.g. "edge_type") for per-type counts; None for none.
      modules: extra module paths whose outputs are tapped (node-level statistics).
    """
    base = base_model(model, base)
    options = dict(forward=forward, batch_size=batch_size, device=device, threshold=threshold,
                   max_batches=max_batches, edge_type_attr=edge_type_attr, modules=modules, fit=fit,
                   progress=progress)
    reports = {}
    if base is not None:
        reports["base"] = detect_model(base, data, desc="base", **options)
    reports["trained"] = detect_model(model, data, desc="trained", **options)
    result = DetectRun(reports, float(threshold))
    if out is not None:
        from .analysis.figures import plot_layer_histograms, plot_sorted_ratios
        from .core.files import write_atomically
        from .study.report import report_json

        folder = output_folder(Path(out), "out")
        result.out = folder
        result.figures["sorted_max_ratios"] = plot_sorted_ratios(reports, folder / "sorted_max_ratios.png",
                                                                 title=title, threshold=threshold)
        for label, report in reports.items():
            result.figures[f"hist_{label}"] = plot_layer_histograms(
                report, folder / f"neg_log10_ratio_hist_{label}.png", title=f"{title} {label}".strip())
        write_atomically(folder / "detect.json", report_json(result.to_dict()), option="out")
    return result
