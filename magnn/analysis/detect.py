"""magnn detect: massive-activation detection over a dataset split (SPEC §6).

For each attention layer and batch, `magnn.stats.collect` reduces the tapped
edge activations inside the attention call; this module keeps each batch's
max ratio (edge and layer normalisation), merges the histograms, fits a gamma
distribution to -log10(ratio + eps) and measures the fit with a one-sample
Kolmogorov-Smirnov statistic. As the paper's code does, the fit sees the exact
ratios |a_ec| / med_e (all H*D of them) of the first `fit_edges` (50,000) edges
of each layer, taken from the layer's edge output as it passes (bounded memory:
fit_edges x H*D floats per layer, never the whole split); with fit_edges=0 (or
for forms that keep no rows, e.g. the full-graph pass) it fits the merged
histogram instead. `GammaFit.source` says which ("exact" or "histogram"); the fit
itself lives in magnn.analysis.gamma.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..core.progress import progress_enabled
from ..core.constants import MA_THRESHOLD
from ..stats import EdgeStats, collect

from .gamma import EPS, FIT_EDGES, ExactRatioSampler, GammaFit, fit_gamma, fit_gamma_exact
from .robust import BatchRatios, robust_summary
from .unbiased import collect_without_bias

__all__ = ["EPS", "GammaFit", "fit_gamma", "LayerReport", "DetectionReport", "detect", "xavier_reset",
           "detect_seed_subgraphs", "detect_full_graph", "FullGraphDetection", "seed_generator", "ExactRatioSampler",
           "block_refusal"]

# -- detection over a split -----------------------------------------------------------

@dataclass
class LayerReport:
    name: str
    batch_max_ratio_edge: list = field(default_factory=list)
    batch_max_ratio_layer: list = field(default_factory=list)
    stats: Optional[EdgeStats] = None
    gamma: Optional[GammaFit] = None
    ratio_batches: Optional[BatchRatios] = field(default=None, repr=False)  # per batch r_e histograms (bootstrap)
    robust: Optional[dict] = None  # robust_summary: high quantiles, fraction above threshold, max, with intervals

    def summarise(self, threshold: float) -> None:
        """Fills `robust` from the per-batch r_e histograms (magnn.analysis.robust)."""
        if self.ratio_batches is not None:
            self.robust = robust_summary(self.ratio_batches, threshold)

    def sorted_ratios(self) -> list:
        return sorted((r for r in self.batch_max_ratio_edge if r == r), reverse=True)

    def to_dict(self) -> dict:
        ratios = [r for r in self.batch_max_ratio_edge if r == r]
        types = {}
        if self.stats is not None:
            for t, n in self.stats.type_edges.items():
                massive = self.stats.type_ma_edges.get(t, 0)
                types[str(t)] = {"edges": n, "ma_edges": massive, "ma_frequency": massive / n if n else 0.0,
                                 "max_ratio": self.stats.type_max_ratio.get(t, float("nan"))}
        return {
            "name": self.name,
            "max_ratio_edge": max(ratios) if ratios else float("nan"),
            "median_batch_max_ratio_edge": float(np.median(ratios)) if ratios else float("nan"),
            "max_ratio_layer": max((r for r in self.batch_max_ratio_layer if r == r), default=float("nan")),
            "batches_with_ma": int(sum(r > (self.stats.threshold if self.stats else MA_THRESHOLD) for r in ratios)),
            "batches": len(self.batch_max_ratio_edge),
            "stats": self.stats.to_dict() if self.stats is not None else None,
            "gamma": self.gamma.to_dict() if self.gamma is not None else None,
            "edge_types": types,
            "edge_ratio_robust": self.robust,
        }


def forward_with_stats(model, batch, threshold: float, without_bias: bool = False, **collect_kwargs) -> dict:
    """One forward of `batch` with statistics on every attention layer, counted by the batch's
    per-edge `edge_type` where it has one; returns what `collect` yields (name -> EdgeStats).
    without_bias: of each layer's score without EBT's bias term (magnn.analysis.unbiased)."""
    from .unbiased import collect_without_bias

    if getattr(batch, "edge_type", None) is not None:
        collect_kwargs["edge_types"] = batch.edge_type
    with (collect_without_bias if without_bias else collect)(model, threshold=threshold, **collect_kwargs) as stats:
        model(batch)
    return stats


def record_batch(reports: dict, stats: dict) -> None:
    """Folds one batch's collected `EdgeStats` (name -> stats, as `collect` yields them) into
    the per-layer reports: the batch's max ratios appended, its statistics merged."""
    for name, layer_stats in stats.items():
        report = reports.setdefault(name, LayerReport(name))
        if report.ratio_batches is None:
            report.ratio_batches = BatchRatios(layer_stats.mantissa_bits)
        report.ratio_batches.add(layer_stats)  # before the merge below changes the first batch's stats
        report.batch_max_ratio_edge.append(layer_stats.max_ratio("edge"))
        report.batch_max_ratio_layer.append(layer_stats.max_ratio("layer"))
        if report.stats is None:
            report.stats = layer_stats
        else:
            report.stats.merge(layer_stats)


@dataclass
class DetectionReport:
    layers: list
    form: Optional[str] = None  # one large graph's seed form: "per-layer blocks, ..." or "union subgraph, ..."

    def to_dict(self) -> dict:
        return {"layers": [layer.to_dict() for layer in self.layers]}

    def max_ratio(self) -> float:
        return max((l.to_dict()["max_ratio_edge"] for l in self.layers), default=float("nan"))


@torch.no_grad()
def detect(model, graphs, *, batch_size: int = 1, device="cpu", threshold: float = MA_THRESHOLD,
           max_batches: Optional[int] = None, fit: bool = True, progress: bool = True,
           desc: str = "detect", fit_edges: int = FIT_EDGES, without_bias: bool = False) -> DetectionReport:
    """Run `model` in eval mode over `graphs` (a list/dataset of PyG Data) collecting MA stats.
    A single Data (one large graph, e.g. an ogbn-proteins split whose `mask` selects its
    nodes) runs `detect_seed_subgraphs` over the masked nodes (max_batches caps the seeds).

    One graph per batch follows the paper's protocol (each batch contributes its maximum edge ratio
    per layer). Edge types come from `data.edge_type`. The gamma fit uses the exact ratios of each
    layer's first `fit_edges` edges (the paper's code; 0: the merged histogram), see the module
    docstring. without_bias: of the score without EBT's bias term (`collect_without_bias`).
    """
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader
    from tqdm import tqdm

    from ..distributed import all_reduce_stats

    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 (or None for all batches), got {max_batches}")
    if isinstance(graphs, Data):  # one large graph (an ogbn-proteins split): the paper's seed subgraphs
        if without_bias:
            raise ValueError("without_bias=True measures graph batches; the one-graph seed form has no such option")
        return detect_seed_subgraphs(model, graphs, getattr(graphs, "mask", None), max_seeds=max_batches,
                                     device=device, threshold=threshold, fit=fit, progress=progress, desc=desc)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval().to(device)
    reports: dict[str, LayerReport] = {}
    loader = DataLoader(graphs, batch_size=batch_size, shuffle=False)
    total = len(loader) if max_batches is None else min(max_batches, len(loader))
    sampler = ExactRatioSampler(model, fit_edges if fit and not without_bias else 0)
    try:
        for position, batch in enumerate(tqdm(loader, total=total, desc=desc, disable=not progress_enabled(progress), leave=False)):
            if max_batches is not None and position >= max_batches:
                break
            record_batch(reports, forward_with_stats(model, batch.to(device), threshold, without_bias))
    finally:
        sampler.remove()
    merged = all_reduce_stats({name: r.stats for name, r in reports.items()})
    for name, report in reports.items():
        report.stats = merged[name]
        report.summarise(threshold)
        if fit:
            exact = sampler.ratios(name)
            report.gamma = (fit_gamma_exact(exact, sampler.rows.get(name, 0)) if exact is not None else None) \
                or fit_gamma(report.stats.hist_ratio)
    return DetectionReport(list(reports.values()))


def xavier_reset(model: torch.nn.Module) -> torch.nn.Module:
    """Xavier-uniform every Linear weight and zero its bias (the paper text's base model).

    Attention layers re-initialise their own projections (`reset_parameters(init="xavier")`,
    which leaves the EBT parameters as they are); every other Linear is reset here. Modules
    are visited in `model.modules()` order, so the draws are those of one Xavier loop over
    all Linear layers.
    """
    from ..layers import FusedEdgeAttention

    done: set[int] = set()  # the projections an attention layer has reset
    for module in model.modules():
        if id(module) in done:
            continue
        if isinstance(module, FusedEdgeAttention):
            module.reset_parameters(init="xavier")
            done.update(id(child) for child in module.modules())
        elif isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    return model


# -- one large graph (ogbn-proteins): the paper's seed subgraphs and magnn's full-graph pass ------

PAPER_FANOUTS = (5, 10, 15)  # the paper's neighbour sampling on ogbn-proteins (SPEC §8)


def _node_mask_seeds(data, seeds) -> torch.Tensor:
    if seeds is None:
        seeds = getattr(data, "test_mask", None)
        if seeds is None:
            raise ValueError("pass seeds= (node ids or a bool mask): the graph has no test_mask")
    seeds = torch.as_tensor(seeds)
    if seeds.dtype == torch.bool:
        seeds = torch.nonzero(seeds).reshape(-1)
    return seeds.long().cpu()


def block_refusal(model) -> Optional[str]:
    """Why `model` cannot run layer by layer over per-layer blocks (None: it can): magnn's models say
    (GraphModel.block_refusal); any other module takes one graph for every layer."""
    refusal = getattr(model, "block_refusal", None)
    return refusal() if callable(refusal) else f"{type(model).__name__} takes one graph for every layer"


def _seed_batch(data, graph, node: int, fanouts, blocks: bool, generator):
    """One seed's mini-batch: its per-layer blocks (block_batch) or its union subgraph (subgraph)."""
    from ..data.sampling import block_batch, sample_blocks, sample_edges, subgraph
    one = torch.tensor([node])
    if blocks:
        return block_batch(data, sample_blocks(graph, one, fanouts, generator))
    return subgraph(data, one, sample_edges(graph, one, fanouts, generator))


def _seed_form(model, blocks: Optional[bool], fanouts) -> tuple[bool, tuple]:
    """(blocks, fan-outs) of the seed form: blocks=None picks blocks when the model can run them."""
    from ..data.sampling import PAPER_BLOCK_FANOUTS
    refusal = block_refusal(model)
    if blocks and refusal is not None:
        raise ValueError(f"blocks=True: {refusal}; pass blocks=False for one union subgraph per seed")
    blocks = refusal is None if blocks is None else blocks
    return blocks, tuple(fanouts) if fanouts is not None else (PAPER_BLOCK_FANOUTS if blocks else PAPER_FANOUTS)


@torch.no_grad()
def detect_seed_subgraphs(model, data, seeds=None, *, fanouts=None, blocks: Optional[bool] = None,
                          max_seeds: Optional[int] = None, device="cpu", threshold: float = MA_THRESHOLD,
                          seed: int = 0, fit: bool = True, progress: bool = True,
                          desc: str = "detect (seed subgraphs)") -> DetectionReport:
    """The paper's detection on one large graph: one neighbour-sampled batch per seed node, each
    contributing its maximum edge ratio per layer; a DetectionReport whose "batches" are the seeds.

    blocks=True: the paper's code's form, DGL per-layer blocks (`sample_blocks`, default fan-outs
    [5, 10, 15, 1], first layer first), layer l over block l only; False: one union subgraph drawn
    `fanouts` hops out (default (5, 10, 15)) for every layer; None: blocks when the model can run
    them (`block_refusal`). The report's `form` says which. seeds: node ids or a bool mask (default:
    data.test_mask); `max_seeds` keeps the first that many. Each seed's batch is drawn from
    `seed_generator(seed, node)`; under torchrun the ranks split the seeds and every rank ends with
    all of them. Histograms merge over all batches (an edge drawn for two seeds counts twice).
    """
    from tqdm import tqdm

    from ..core.graph import Graph
    from ..data.proteins import check_node_graph
    from ..distributed import all_reduce_stats, rank_world

    check_node_graph(data, "detection")
    if max_seeds is not None and max_seeds < 1:
        raise ValueError(f"max_seeds must be >= 1 (or None for all seeds), got {max_seeds}")
    blocks, fanouts = _seed_form(model, blocks, fanouts)
    seeds = _node_mask_seeds(data, seeds)
    if max_seeds is not None:
        seeds = seeds[:max_seeds]
    rank, world = rank_world()
    seeds = seeds[rank::world]  # under torchrun each rank takes every world-th seed; merged below
    model.eval().to(device)
    graph = Graph(data.edge_index, data.num_nodes, validate=False)
    reports: dict[str, LayerReport] = {}
    for node in tqdm(seeds.tolist(), desc=desc, disable=not progress_enabled(progress) or rank != 0, leave=False, unit="seed"):
        batch = _seed_batch(data, graph, node, fanouts, blocks, seed_generator(seed, node)).to(device)
        record_batch(reports, forward_with_stats(model, batch, threshold))
    merged = all_reduce_stats({name: r.stats for name, r in reports.items()})
    if world > 1:  # every rank's per-seed maxima, rank by rank
        import torch.distributed as dist

        parts: list = [None] * world
        dist.all_gather_object(parts, {name: (r.batch_max_ratio_edge, r.batch_max_ratio_layer)
                                       for name, r in reports.items()})
        for name, report in reports.items():
            report.batch_max_ratio_edge = [v for part in parts for v in part[name][0]]
            report.batch_max_ratio_layer = [v for part in parts for v in part[name][1]]
    for name, report in reports.items():
        report.stats = merged[name]
        report.summarise(threshold)
        if fit:
            report.gamma = fit_gamma(report.stats.hist_ratio)
    form = f"per-layer blocks, fan-outs {list(fanouts)}" if blocks else f"union subgraph, fan-outs {list(fanouts)}"
    return DetectionReport(list(reports.values()), form=form)


def seed_generator(seed: int, node: int) -> torch.Generator:
    """The random stream that samples seed node `node`'s subgraph (a function of both only)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + int(node))


@dataclass
class FullGraphDetection:
    """magnn's detection on one large graph: one forward over every edge, statistics on every layer.

    report: per layer the histograms, max ratios and gamma fit of all edges (one "batch": the
      graph). node_max_ratio: per layer, float [N], each node's largest r_e over its incoming
      edges (NaN for nodes without one). edge_ratio_sample: per layer, r_e of up to
      `sample_edges` edges drawn uniformly (for the per-edge figure).
    """

    report: DetectionReport
    node_max_ratio: dict
    edge_ratio_sample: dict
    threshold: float

    def node_summary(self, nodes=None) -> dict:
        """Per layer, the distribution of node_max_ratio over `nodes` (ids or bool mask; default all)."""
        out = {}
        for name, values in self.node_max_ratio.items():
            chosen = values if nodes is None else values[torch.as_tensor(nodes)]
            chosen = chosen[~torch.isnan(chosen)].double()
            if chosen.numel() == 0:
                out[name] = {"nodes": 0}
                continue
            q = torch.quantile(chosen, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64)).tolist()
            out[name] = {"nodes": int(chosen.numel()), "median": q[0], "p90": q[1], "p99": q[2],
                         "max": float(chosen.max()),
                         "nodes_with_ma": int((chosen > self.threshold).sum()),
                         "fraction_with_ma": float((chosen > self.threshold).double().mean())}
        return out

    def sorted_node_report(self, nodes=None) -> DetectionReport:
        """A DetectionReport whose "batches" are the chosen nodes (their node_max_ratio), with the
        full-graph stats: plots in the same Fig. 2/4 shape as the seed-subgraph form."""
        layers = []
        for layer in self.report.layers:
            values = self.node_max_ratio[layer.name]
            chosen = values if nodes is None else values[torch.as_tensor(nodes)]
            chosen = chosen[~torch.isnan(chosen)]
            layers.append(LayerReport(layer.name, chosen.tolist(), list(layer.batch_max_ratio_layer), layer.stats,
                                      layer.gamma))
        return DetectionReport(layers)


@torch.no_grad()
def detect_full_graph(model, data, *, device="cpu", threshold: float = MA_THRESHOLD, fit: bool = True,
                      sample_edges: int = 200_000, seed: int = 0) -> FullGraphDetection:
    """One eval-mode forward of `model` over the whole graph with statistics on every layer.

    No activation tensor is kept: each layer's [E, H*D] edge output is reduced inside the
    attention call; what is kept per layer is the histograms, the per-edge max ratio r_e
    (float [E], reduced at once to each destination node's maximum, float [N]) and a
    uniform sample of r_e. Rows beyond the real edges (GraphiT's kernel pairs, SAN's fake
    edges) count in the histograms but not in the per-node maxima.
    """
    from torch_geometric.utils import scatter

    from ..data.proteins import check_node_graph

    check_node_graph(data, "detection")
    model.eval().to(device)
    stats = forward_with_stats(model, data.to(device), threshold, keep_edge_ratio=True)
    num_edges = data.edge_index.shape[1]
    dst = data.edge_index[1].cpu()
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(num_edges, generator=generator)[:sample_edges] if num_edges > sample_edges else None
    layers, node_max, sample = [], {}, {}
    for name, layer_stats in stats.items():
        ratio = layer_stats.edge_ratio[:num_edges].float()
        layer_stats._edge_ratio_parts = []  # the per-node maxima below are what is kept
        layer_stats.keep_edge_ratio = False
        finite = torch.nan_to_num(ratio, nan=-1.0)
        per_node = scatter(finite, dst, dim=0, dim_size=data.num_nodes, reduce="max")
        per_node[per_node < 0] = float("nan")  # no incoming edge (or only NaN ratios)
        node_max[name] = per_node
        sample[name] = (ratio if pick is None else ratio[pick]).numpy()
        report = LayerReport(name, [layer_stats.max_ratio("edge")], [layer_stats.max_ratio("layer")], layer_stats,
                             ratio_batches=BatchRatios(layer_stats.mantissa_bits))
        report.ratio_batches.add(layer_stats)
        report.summarise(threshold)
        if fit:
            report.gamma = fit_gamma(layer_stats.hist_ratio)
        layers.append(report)
    return FullGraphDetection(DetectionReport(layers), node_max, sample, float(threshold))


PRE_SOFTMAX, POST_SOFTMAX = "pre-softmax score", "post-softmax message"


def tap_kinds(model: torch.nn.Module) -> dict:
    """Per tapped layer (as `collect` names it), what its statistics measure: a magnn layer in "gt"
    mode taps the pre-softmax score; "additive" mode (a_ij (v_j + e_ij)) and PyG layers (their
    message hook) tap post-softmax messages, whose per-edge ratio cancels one head's attention
    weight, so their numbers are not comparable with pre-softmax scores."""
    from ..layers import FusedEdgeAttention

    kinds = {}
    with collect(model) as stats:
        names = list(stats)
    modules = dict(model.named_modules())
    for name in names:
        module = modules.get(name)
        pre = isinstance(module, FusedEdgeAttention) and getattr(module, "mode", "gt") == "gt"
        kinds[name] = PRE_SOFTMAX if pre else POST_SOFTMAX
    return kinds
