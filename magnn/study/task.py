"""What differs between a graph-level study (molecules) and a node-level one (ogbn-proteins).

`task_for(dataset)` gives the strategy object; the study's stages call it and never branch on
the dataset themselves. A graph-level task detects on batches of test graphs, ablates a subset
of them and attacks validation graphs; a node-level task (one large graph) detects the paper's
way (one neighbour-sampled subgraph per test seed node) and magnn's (one forward over the
whole graph), ablates the whole graph and attacks the sampled subgraphs of validation seeds.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .ablation import add_meaningless_edges, subset

log = logging.getLogger("magnn.study.task")


@dataclass
class Detection:
    """One model's detection: the report, per-layer edge ratios (Fig. 1) and, for node tasks,
    magnn's full-graph detection beside the paper's seed-subgraph report."""

    report: object
    edge_ratios: dict
    full_graph: object = None


@dataclass
class StudyData:
    """What every stage of one study reads: the config, its profile, the dataset."""

    config: object
    profile: dict
    info: object
    splits: dict = field(repr=False)


class GraphTask:
    """Molecules: many small graphs."""

    node_level = False

    def detect(self, data: StudyData, model, label: str) -> Detection:
        from ..analysis.detect import detect

        config, graphs = data.config, subset(data.splits["test"], data.profile["detect_graphs"])
        report = detect(model, graphs, device=config.train.device, threshold=config.threshold, desc=label,
                        fit_edges=data.profile.get("fit_edges", 50_000))
        return Detection(report, edge_ratios_by_layer(model, graphs, config.train.device))

    def ablate(self, data: StudyData, model, edge_type: int, generator):
        """The detection report of `model` on test graphs with meaningless edges added (no gamma fit)."""
        from ..analysis.detect import detect

        config = data.config
        ablated = [add_meaningless_edges(g, config.ablation_fraction, edge_type, generator)
                   for g in subset(data.splits["test"], data.profile["ablation_graphs"])]
        return detect(model, ablated, device=config.train.device, threshold=config.threshold, desc="ablation",
                      fit=False)  # the ablation reports edge types, not the gamma fit

    def ablation_baseline(self, detections: dict):
        """The report the ablation compares with: the trained no-EBT model's detection."""
        return detections["trained no_ebt"].report

    def attack_inputs(self, data: StudyData) -> list:
        return subset(data.splits["val"], data.profile["attack_graphs"])

    def sink_inputs(self, data: StudyData) -> list:
        """The graphs the sink profile reads (magnn.study.sink_profile): the detection's test graphs."""
        return subset(data.splits["test"], data.profile["detect_graphs"])

    def mechanics_inputs(self, data: StudyData):
        """The test graphs the MA intervention and the int8 sensitivity run on (magnn.study.mechanics)."""
        return subset(data.splits["test"], data.profile.get("mechanics_graphs"))

    def extra_figures(self, data: StudyData, detections: dict, out, title: str) -> dict:
        return {}

    def extra_report(self, data: StudyData, train_config, detections: dict) -> dict:
        return {}


class NodeTask(GraphTask):
    """ogbn-proteins: one large graph."""

    node_level = True

    def detect(self, data: StudyData, model, label: str) -> Detection:
        """The paper's seed detection (per-layer blocks with the paper's fan-outs [5, 10, 15, 1] where the
        model can run them; otherwise one union subgraph per seed with --fanouts) and magnn's full-graph detection."""
        from ..analysis.detect import block_refusal, detect_full_graph, detect_seed_subgraphs

        config, profile, graph = data.config, data.profile, data.splits["test"]
        cap = config.max_seeds if config.max_seeds is not None else profile["detect_graphs"]
        fanouts = None if block_refusal(model) is None else config.train.fanouts
        seeds = detect_seed_subgraphs(model, graph, graph.test_mask, fanouts=fanouts, max_seeds=cap,
                                      device=config.train.device, threshold=config.threshold, seed=config.train.seed,
                                      desc=f"{label}: seed subgraphs")
        log.info(f"== detecting MAs: {label}, full graph")
        full = detect_full_graph(model, graph, device=config.train.device, threshold=config.threshold,
                                 seed=config.train.seed)
        return Detection(seeds, dict(full.edge_ratio_sample), full)

    def ablate(self, data: StudyData, model, edge_type: int, generator):
        """The whole test graph with meaningless edges added, one forward."""
        from ..analysis.detect import detect_full_graph

        config = data.config
        ablated = add_meaningless_edges(data.splits["test"], config.ablation_fraction, edge_type, generator)
        return detect_full_graph(model, ablated, device=config.train.device, threshold=config.threshold,
                                 fit=False).report

    def ablation_baseline(self, detections: dict):
        return detections["trained no_ebt"].full_graph.report

    def attack_inputs(self, data: StudyData) -> list:
        """One neighbour-sampled subgraph per validation seed (the first attack_graphs of val_mask)."""
        import torch

        from ..core.graph import Graph
        from ..data.sampling import sample_edges, subgraph

        graph, config = data.splits["val"], data.config
        seeds = torch.nonzero(graph.val_mask).reshape(-1)[: data.profile["attack_graphs"]]
        topology = Graph(graph.edge_index, graph.num_nodes, validate=False)
        generator = torch.Generator().manual_seed(config.train.seed)
        return [subgraph(graph, seed.view(1), sample_edges(topology, seed.view(1), config.train.fanouts, generator))
                for seed in seeds]

    def sink_inputs(self, data: StudyData) -> list:
        """Nothing: one large graph's profile needs its sampled subgraphs' node numbering (not done)."""
        return []

    def mechanics_inputs(self, data: StudyData):
        """None: the intervention and the int8 sensitivity are for batches of small graphs."""
        return None

    def extra_figures(self, data: StudyData, detections: dict, out, title: str) -> dict:
        from ..analysis.figures import plot_sorted_ratios

        test = data.splits["test"].test_mask
        return {"sorted_node_max_ratios": plot_sorted_ratios(
            {label: d.full_graph.sorted_node_report(test) for label, d in detections.items()},
            out / "sorted_node_max_ratios.png", title=f"{title}: full graph, per test node (max r_e of its in-edges)",
            threshold=data.config.threshold)}

    def extra_report(self, data: StudyData, train_config, detections: dict) -> dict:
        from .node_report import node_report

        return node_report(data, train_config, detections)


def task_for(dataset: str) -> GraphTask:
    """The strategy of a dataset: NodeTask for ogbn-proteins, GraphTask for the molecule datasets."""
    return NodeTask() if dataset == "ogbn-proteins" else GraphTask()


def edge_ratios_by_layer(model, graphs, device) -> dict:
    """Per-edge ratios r_e of every attention layer over all graphs (Fig. 1, every layer)."""
    import torch
    from torch_geometric.loader import DataLoader

    from ..stats import collect

    model.eval().to(device)
    parts: dict = {}
    with torch.no_grad():
        for batch in DataLoader(graphs, batch_size=64):
            with collect(model, keep_edge_ratio=True) as stats:
                model(batch.to(device))
            for name, layer_stats in stats.items():
                parts.setdefault(name, []).append(layer_stats.edge_ratio)
    return {name: torch.cat(values).numpy() for name, values in parts.items()}
