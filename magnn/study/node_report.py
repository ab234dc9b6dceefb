"""report.json's ogbn-proteins parts: the architecture, the training mode, and magnn's
full-graph detection (per layer, and per test node) beside the paper's seed-subgraph form."""
from __future__ import annotations


def node_report(data, train_config, detections: dict) -> dict:
    from ..models import model_config
    from ..models.presets import architecture_name
    from ..train import model_overrides

    config, graph = data.config.train, data.splits["test"]
    kwargs = model_config(config.model, data.info, preset="paper", **model_overrides(train_config))
    keys = ("num_layers", "hidden", "heads", "node_input", "edge_stream", "layer_edge_encoders", "fused_edge_projection")
    test = graph.test_mask
    first = next(iter(detections.values())).report if detections else None
    seeds_used = len(first.layers[0].batch_max_ratio_edge) if first is not None else 0
    form = (first.form if first is not None else None) or "union subgraph"
    return {
        "architecture": {"name": architecture_name(config.model, kwargs),
                         "model": {k: kwargs[k] for k in keys if k in kwargs}},
        "training_mode": {"sampled": config.sampled, "fanouts": list(config.fanouts) if config.sampled else None},
        "graph": {"nodes": int(graph.num_nodes), "directed_edges": int(graph.edge_index.shape[1]),
                  "test_nodes": int(test.sum())},
        "detection_forms": {
            "detection": f"the paper's: one sampled batch per test seed node ({form}; per-layer blocks: layer l "
                         "attends over block l only, as the paper's DGL code; union subgraph: every layer over one "
                         f"subgraph, for models that cannot run blocks), each contributing its max edge ratio per "
                         f"layer; {seeds_used} seeds",
            "detection_full_graph": "magnn's: one forward over the whole graph, statistics on every layer and edge; "
                                    "per test node, the max r_e over its incoming edges",
        },
        "detection_full_graph": {
            label: {"layers": d.full_graph.report.to_dict()["layers"], "test_nodes": d.full_graph.node_summary(test)}
            for label, d in detections.items()},
    }
