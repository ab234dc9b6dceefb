"""report.md and report.json: the study's numbers as valid JSON and as tables beside the paper's.

`report_json` writes JSON every parser accepts (NaN and +-inf become null),
`format_number` and `layer_cell` turn report numbers into honest table cells,
`findings` says in plain words whether each of the paper's qualitative findings
reproduced, and `markdown` lays report.md out (tables shaped like the paper's
Table 1 and 2). Used by `magnn study` (pipeline) and `magnn detect` (detect_run).
"""
from __future__ import annotations

import json
import math

from ..stats import json_safe

__all__ = ["report_json", "format_number", "layer_cell", "findings", "finding_details", "markdown", "PAPER_TABLE1",
           "PAPER_TABLE2"]

# SPEC §9 / §7: the paper's numbers, printed beside ours
PAPER_TABLE1 = {
    ("zinc", "gt"): (0.26, 0.29), ("zinc", "graphit"): (0.13, 0.31), ("zinc", "san"): (0.18, 0.27),
    ("tox21", "gt"): (0.25, 0.29), ("tox21", "graphit"): (0.38, 0.32), ("tox21", "san"): (0.38, 0.31),
    ("ogbn-proteins", "gt"): (0.13, 0.12), ("ogbn-proteins", "graphit"): (0.13, 0.12), ("ogbn-proteins", "san"): (0.14, 0.13),
}
PAPER_TABLE2 = {0.01: (1.50, 1.41), 0.0316: (1.83, 1.78), 0.1: (4.73, 2.53)}  # gain % without / with EBT (GT, TOX21)


# -- numbers for report.json / report.md ------------------------------------------------

def report_json(report) -> str:
    """`report` as JSON text that every parser accepts: NaN and +-inf become null (JSON has
    neither; `EdgeStats.to_dict()["all_nan"]` says when a layer's values were all NaN)."""
    return json.dumps(json_safe(report), indent=2, default=str, allow_nan=False)


def format_number(value) -> str:
    """A table cell: "-" for None (a number JSON could not hold, or none at all), "NaN" / "inf"
    spelled out, else 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"


def layer_cell(layer: dict, key: str = "max_ratio_edge") -> str:
    """One detection layer's number (a `LayerReport.to_dict()`, stats included) for report.md.

    Says "all NaN (n values)" when every activation the layer produced was NaN (no ratio
    exists), "no values" when it saw none, and adds "(k of n values NaN)" when some were.
    """
    stats = layer.get("stats") or {}
    count, nan_count = stats.get("count") or 0, stats.get("nan_count") or 0
    if count and nan_count == count:
        return f"all NaN ({nan_count} values)"
    value = layer.get(key)
    if stats and not count:
        return "no values"
    cell = format_number(value)
    if nan_count:
        cell += f" ({nan_count} of {count} values NaN)"
    return cell


# -- report.md ---------------------------------------------------------------------------

def _max_ratio(report, label) -> float:
    ratios = [l["max_ratio_edge"] for l in report["detection"][label]["layers"]]
    ratios = [r for r in ratios if r is not None and r == r]  # NaN (all-NaN layers) would make max() order-dependent
    return max(ratios, default=float("nan"))


def _layer_ratios(report, label) -> dict:
    """{layer name: max edge ratio} of one detection (None / NaN dropped)."""
    detection = report["detection"].get(label) or {"layers": []}
    return {l["name"]: l["max_ratio_edge"] for l in detection["layers"]
            if l.get("max_ratio_edge") is not None and l["max_ratio_edge"] == l["max_ratio_edge"]}


def _verdict(ok) -> str:
    return "REPRODUCED" if ok else "NOT reproduced"


def finding_details(report, variants) -> list[dict]:
    """Each of the paper's qualitative findings with its criterion, evaluated overall and per layer.

    Every entry: {"name", "criterion", "overall": {"verdict", ...numbers}, "per_layer": [{"layer",
    "verdict", ...numbers}], "layers_reproduced": "k/n"} (docs/REPORT.md).
    """
    ebt_tag = [t for t in variants if t != "no_ebt"][0]
    threshold = report["threshold"]
    base, trained = _layer_ratios(report, "base no_ebt"), _layer_ratios(report, "trained no_ebt")
    with_ebt = _layer_ratios(report, f"trained {ebt_tag}")
    details = [_growth_finding(base, trained), _threshold_finding(trained, threshold),
               _ebt_finding(trained, with_ebt, ebt_tag), _attack_finding(report, ebt_tag),
               _ablation_finding(report, threshold)]
    return [detail for detail in details if detail is not None]


def _peak(values: dict) -> float:
    return max(values.values(), default=float("nan"))


def _finding(name, criterion, overall, per_layer) -> dict:
    count = sum(1 for row in per_layer if row["verdict"] == "REPRODUCED")
    untestable = sum(1 for row in per_layer if not row["verdict"].startswith(("REPRODUCED", "NOT reproduced")))
    return {"name": name, "criterion": criterion, "overall": overall, "per_layer": per_layer,
            "layers_reproduced": f"{count}/{len(per_layer)}" + (f" ({untestable} not testable)" if untestable else "")}


def _growth_finding(base: dict, trained: dict) -> dict:
    layers = [name for name in trained if name in base]
    peak_trained, peak_base = _peak(trained), _peak(base)
    return _finding(
        "trained max ratio >> base",
        "the trained model's (no EBT) largest edge ratio is more than 10x the base model's; per layer: the "
        "layer's own max over test batches against the same layer of the base model",
        {"verdict": _verdict(peak_trained > 10 * peak_base), "trained": peak_trained, "base": peak_base,
         "factor": peak_trained / peak_base if peak_base else float("nan")},
        [{"layer": n, "verdict": _verdict(trained[n] > 10 * base[n]), "trained": trained[n], "base": base[n],
          "factor": trained[n] / base[n] if base[n] else float("nan")} for n in layers])


def _threshold_finding(trained: dict, threshold: float) -> dict:
    return _finding(
        "MA threshold crossed",
        f"the trained model's (no EBT) largest edge ratio exceeds the MA threshold {threshold:g}",
        {"verdict": _verdict(_peak(trained) > threshold), "trained": _peak(trained)},
        [{"layer": n, "verdict": _verdict(v > threshold), "trained": v} for n, v in trained.items()])


def _ebt_finding(trained: dict, with_ebt: dict, ebt_tag: str) -> dict:
    layers = [name for name in trained if name in with_ebt]
    peak_trained, peak_ebt = _peak(trained), _peak(with_ebt)
    return _finding(
        "EBT reduces trained ratios",
        f"the trained {ebt_tag} model's largest edge ratio is below the trained no-EBT model's (factor = no EBT / "
        f"{ebt_tag}); per layer: same layer index",
        {"verdict": _verdict(peak_ebt < peak_trained), "no_ebt": peak_trained, ebt_tag: peak_ebt,
         "factor": peak_trained / peak_ebt if peak_ebt else float("nan")},
        [{"layer": n, "verdict": _verdict(with_ebt[n] < trained[n]), "no_ebt": trained[n], ebt_tag: with_ebt[n],
          "factor": trained[n] / with_ebt[n] if with_ebt[n] else float("nan")} for n in layers])


def _attack_finding(report, ebt_tag: str):
    attack = report.get("attack") or {}
    if not (attack.get("no_ebt") and attack.get(ebt_tag)):
        return None
    gain = {tag: {round(r["sigma"], 4): r["gain_percent"] for r in rows} for tag, rows in attack.items()}
    g0, g1 = gain["no_ebt"].get(0.1), gain[ebt_tag].get(0.1)
    if g0 is None or g1 is None:
        verdict = "NOT TESTABLE (no sigma 0.1 run)"
    elif abs(g0 - g1) < 0.05 * max(abs(g0), 1e-9):
        verdict = "INCONCLUSIVE (within 5% of each other)"
    else:
        verdict = _verdict(g1 < g0)
    return _finding("attack gain lower with EBT at sigma 0.1",
                    "Explicit Bias Attack gain (loss_opt / loss_random - 1) at sigma 0.1 lower with EBT than without "
                    "(within 5% of each other: inconclusive); a model-level number, no per-layer form",
                    {"verdict": verdict, "no_ebt_percent": g0, f"{ebt_tag}_percent": g1}, [])


def _ablation_finding(report, threshold: float):
    ablation = report.get("ablation") or {}
    fake = (ablation.get("with") or {}).get("meaningless")
    if fake is None:
        return None
    real = {k: v for k, v in ablation["with"].items() if k != "meaningless"}
    criterion = (f"after adding meaningless edges, their MA frequency (share of edges with r_e > {threshold:g}) "
                 "exceeds every real bond type's; not testable where no edge exceeds the threshold")
    per_layer = [dict(_judge_ablation(types, threshold), layer=name)
                 for name, types in (ablation.get("per_layer") or {}).items()]
    return _finding("MAs move onto meaningless edges", criterion,
                    _judge_ablation(dict(real, meaningless=fake), threshold), per_layer)


def _judge_ablation(with_types: dict, threshold: float) -> dict:
    fake_row = with_types.get("meaningless")
    if fake_row is None:
        return {"verdict": "NOT TESTABLE (no meaningless edge in this layer)"}
    others = [v for k, v in with_types.items() if k != "meaningless"]
    if not any(v["ma_frequency"] for v in with_types.values()):
        return {"verdict": f"NOT TESTABLE (no edge above {threshold:g})",
                "meaningless_max_ratio": fake_row["max_ratio"],
                "real_max_ratio": max((v["max_ratio"] for v in others), default=float("nan"))}
    top = max((v["ma_frequency"] for v in others), default=0.0)
    return {"verdict": _verdict(fake_row["ma_frequency"] > top), "meaningless_ma_frequency": fake_row["ma_frequency"],
            "real_ma_frequency_max": top}


def findings(report, variants) -> list[str]:
    """Plain statements of whether the paper's qualitative findings reproduced here: each with its
    criterion, the overall verdict and how many layers reproduce it (details: finding_details)."""
    lines = []
    for item in report.get("findings_detail") or finding_details(report, variants):
        overall = item["overall"]
        numbers = ", ".join(f"{k} {format_number(v)}" for k, v in overall.items() if k != "verdict")
        layers = f"; per layer {item['layers_reproduced']} reproduced" if item["per_layer"] else ""
        lines.append(f"{item['name']}: {overall['verdict']} ({numbers}{layers}) — criterion: {item['criterion']}")
    if report["profile"] == "quick":
        lines.append("quick profile: small models trained for minutes; the paper trained to convergence, "
                     "so magnitudes are not comparable (run without --quick for the full protocol)")
    return lines


def _fmt(value) -> str:
    """report.md's plain cell: "-" for None, "nan", 4 significant digits for floats, ints as they are."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def markdown(report, variants) -> str:
    ebt_tag = [t for t in variants if t != "no_ebt"][0]
    dataset, model = report["dataset"], report["model"]
    lines = [f"# magnn study: {model.upper()} on {dataset} ({report['profile']} profile)", ""]
    lines += ["## Findings", ""] + [f"- {line}" for line in report["findings"]] + [""]
    lines += finding_layer_lines(report)
    lines += table1_lines(report, variants)
    train = report["training"]
    metric_rows = [f"{k} {_fmt(v)}" for tag in variants for k, v in (train.get(tag) or {}).items() if k != "loss"]
    if metric_rows:
        lines += ["", "Test metrics: " + "; ".join(f"{tag}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in (train.get(tag) or {}).items())
                                              for tag in variants)]
    lines += ["", "## Maximum edge ratio per layer (max over test batches)", "",
              "| layer | " + " | ".join(report["detection"]) + " |", "|---|" + "---|" * len(report["detection"])]
    layer_names = [l["name"] for l in next(iter(report["detection"].values()))["layers"]]
    for index, name in enumerate(layer_names):
        row = [layer_cell(d["layers"][index]) if index < len(d["layers"]) else "-" for d in report["detection"].values()]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    sources = report.get("gamma_source") or {}
    fit_edges = report.get("gamma_fit_edges") or 50_000
    how = {"exact": f"the exact ratios |a_ec| / med_e (all H*D) of each layer's first {fit_edges:,} edges "
                    "(the paper's code: 50,000)",
           "histogram": "the merged ratio histogram (no exact ratios kept)"}
    used = sorted({part for value in sources.values() for part in str(value).split("/") if part in how})
    lines += ["", "Gamma fit of -log10(ratio + eps) per layer (KS statistic; low = gamma-like, high = MA spike); "
              "fitted on " + ("; ".join(how[u] for u in used) if used else "-") + ":", "",
              "| layer | " + " | ".join(report["detection"]) + " |", "|---|" + "---|" * len(report["detection"])]
    for index, name in enumerate(layer_names):
        row = []
        for d in report["detection"].values():
            gamma = d["layers"][index].get("gamma") if index < len(d["layers"]) else None
            row.append(_fmt(gamma["ks"]) if gamma else "-")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    if report["attack"]:
        lines += ["", "## Table 2: Explicit Bias Attack gain (%)", ""] + attack_protocol_lines(report, variants) + [
                  "", "| sigma | ours: no EBT | ours: " + ebt_tag + " | paper: no EBT | paper: EBT |", "|---|---|---|---|---|"]
        rows = {tag: {round(r["sigma"], 4): r["gain_percent"] for r in report["attack"][tag]} for tag in variants}
        sigmas = sorted({round(r["sigma"], 4) for tag in variants for r in report["attack"][tag]})
        for sigma in sigmas:
            p = PAPER_TABLE2.get(sigma, (None, None)) if (dataset, model) == ("tox21", "gt") else (None, None)
            lines.append(f"| {sigma:g} | {_fmt(rows['no_ebt'].get(round(sigma, 4)))} | {_fmt(rows[ebt_tag].get(round(sigma, 4)))} "
                         f"| {_fmt(p[0])} | {_fmt(p[1])} |")
    ablation = report["ablation"]
    lines += ["", f"## Meaningless-edge ablation (+{ablation['fraction']:.0%} random edges of a new type)", "",
              "| edge type | MA frequency, test graphs | MA frequency, + meaningless | largest r_e, test graphs | largest r_e, + meaningless |",
              "|---|---|---|---|---|"]
    for name in sorted(set(ablation["without"]) | set(ablation["with"])):
        before, after = ablation["without"].get(name, {}), ablation["with"].get(name, {})
        lines.append(f"| {name} | {_fmt(before.get('ma_frequency'))} | {_fmt(after.get('ma_frequency'))} "
                     f"| {_fmt(before.get('max_ratio'))} | {_fmt(after.get('max_ratio'))} |")
    lines += one_graph_detection_lines(report)
    lines += ["", "## Figures", ""] + [f"![{name}]({path})" for name, path in report["figures"].items()]
    lines += ["", "## Notes", "",
              "- One featurisation for every model (OGB smiles2graph via RDKit) and the scaffold split; the paper's GT used "
              "74/12-dim canonical features and a random split (SPEC §10).",
              compat_note(report),
              "- Base model: same architecture and seed, untrained, eval mode.", ""]
    return "\n".join(lines)


def one_graph_detection_lines(report) -> list[str]:
    """report.md's ogbn-proteins section (empty for molecule datasets): the architecture used and
    the two detection forms side by side, per layer: the paper's (one sampled subgraph per test
    seed, its max r_e) and magnn's (one full-graph forward; per test node, the max r_e of its
    incoming edges, and the layer's max over all edges)."""
    full = report.get("detection_full_graph")
    if not full:
        return []
    arch = report.get("architecture", {})
    mode = report.get("training_mode", {})
    graph = report.get("graph", {})
    threshold = report["threshold"]
    lines = ["", "## ogbn-proteins: architecture and training", "",
             f"- architecture: **{arch.get('name')}** ({', '.join(f'{k}={v}' for k, v in arch.get('model', {}).items())}); "
             "'paper' = species embedding as node input, one shared Linear(8, hidden) re-embedding the edge features "
             "for every layer (GT without an edge stream), as the paper's code; 'magnn' = mean incoming edge features "
             "added to the node input, GT's edge stream carried across layers, one edge Linear per layer.",
             f"- training: {'neighbour-sampled, fan-outs ' + str(mode.get('fanouts')) if mode.get('sampled') else 'full batch'}; "
             f"graph: {graph.get('nodes')} nodes, {graph.get('directed_edges')} directed edges, "
             f"{graph.get('test_nodes')} test nodes.",
             "", "## Detection on one large graph: two forms side by side", "",
             f"- seed subgraphs, {report.get('detection_forms', {}).get('detection', '')}",
             f"- full graph, {report.get('detection_forms', {}).get('detection_full_graph', '')}", "",
             "| model | layer | seeds: median max r_e | seeds: max | seeds > " + f"{threshold:g}"
             + " | full: median node max r_e (test) | full: p99 | full: max over all edges | test nodes > "
             + f"{threshold:g} | full: KS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, detection in report["detection"].items():
        whole = full.get(label)
        if whole is None:
            continue
        for index, layer in enumerate(detection["layers"]):
            other = whole["layers"][index] if index < len(whole["layers"]) else {}
            nodes = whole["test_nodes"].get(layer["name"], {})
            gamma = other.get("gamma")
            lines.append(
                f"| {label} | {layer['name']} | {_fmt(layer.get('median_batch_max_ratio_edge'))} "
                f"| {layer_cell(layer)} | {layer.get('batches_with_ma')}/{layer.get('batches')} "
                f"| {_fmt(nodes.get('median'))} | {_fmt(nodes.get('p99'))} | {layer_cell(other) if other else '-'} "
                f"| {nodes.get('nodes_with_ma', '-')}/{nodes.get('nodes', '-')} | {_fmt(gamma['ks']) if gamma else '-'} |")
    return lines


def compat_note(report) -> str:
    """The Notes line on the paper's SAN/GraphiT EBT code (what --ebt-compat gnn-mas reproduces)."""
    compat = {v for v in (report.get("ebt_compat") or {}).values() if v}
    if compat:
        return ("- --ebt-compat gnn-mas: SAN/GraphiT computed as the paper's published code does (the EBT bias weight "
                "overwrites every real edge's attention weight, so K, E and e' get no gradient; SAN on ogbn-proteins "
                "without EBT: every real edge the same weight); the statistics are taken on the score, which the loss "
                "never sees. GT is unaffected (its code computes the formula). See SPEC §10.")
    return ("- magnn implements the EBT formula. The paper's SAN and GraphiT EBT numbers (Table 1, Fig. 4) come from "
            "code in which the bias weight overwrites every real edge's attention weight (K, E and e' get no gradient, "
            "so the tapped score stays near its initial scale), and its SAN on ogbn-proteins without EBT behaves alike; "
            "`--ebt-compat gnn-mas` reproduces that behaviour for a like-for-like comparison.")


def table1_lines(report, variants) -> list[str]:
    """Table 1: test loss of the final-epoch model (the paper's) and of the best-validation checkpoint."""
    ebt_tag = [t for t in variants if t != "no_ebt"][0]
    dataset, model = report["dataset"], report["model"]
    paper = PAPER_TABLE1.get((dataset, model), (None, None))
    best, final = report.get("training") or {}, report.get("training_final") or {}
    loss = lambda table, tag: (table.get(tag) or {}).get("loss")
    lines = ["## Table 1: test loss without / with EBT", "",
             "Final: the last epoch's model (the paper's Table 1); best: the best-validation checkpoint.", "",
             f"| model | dataset | ours final: no EBT | ours final: {ebt_tag} | ours best: no EBT | ours best: {ebt_tag} "
             "| paper: no EBT | paper: EBT |", "|---|---|---|---|---|---|---|---|",
             f"| {model} | {dataset} | {_fmt(loss(final, 'no_ebt'))} | {_fmt(loss(final, ebt_tag))} "
             f"| {_fmt(loss(best, 'no_ebt'))} | {_fmt(loss(best, ebt_tag))} | {_fmt(paper[0])} | {_fmt(paper[1])} |"]
    stopped = report.get("training_stopped") or {}
    notes = [f"{tag}: stopped by {(stopped.get(tag) or {}).get('reason', '-')} after epoch "
             f"{_fmt(((stopped.get(tag) or {}).get('epoch', -2)) + 1)}" for tag in variants if stopped.get(tag)]
    if report.get("max_time_minutes"):
        notes.append(f"--max-time {report['max_time_minutes']:g} minutes per run")
    if notes:
        lines += ["", "Training: " + "; ".join(notes) + "."]
    return lines


def finding_layer_lines(report) -> list[str]:
    """report.md: each finding's criterion and its per-layer verdicts."""
    details = report.get("findings_detail") or []
    lines = []
    for item in details:
        if not item["per_layer"]:
            continue
        lines += [f"**{item['name']}** per layer ({item['layers_reproduced']} reproduced). Criterion: {item['criterion']}.", "",
                  "| layer | verdict | numbers |", "|---|---|---|"]
        for row in item["per_layer"]:
            numbers = ", ".join(f"{k} {format_number(v)}" for k, v in row.items() if k not in ("layer", "verdict"))
            lines.append(f"| {row['layer']} | {row['verdict']} | {numbers} |")
        lines.append("")
    return lines


def attack_protocol_lines(report, variants) -> list[str]:
    """The attack's protocol and epoch counts, stated next to Table 2."""
    protocol = report.get("attack_protocol") or {}
    if not protocol:
        return []
    noise = "node embedding only" if not protocol.get("edge_noise", True) else "node and edge embeddings"
    shape = "one shared noise vector per embedding" if protocol.get("shared_noise") else "one noise tensor per batch"
    lines = [f"Protocol (the paper's code, SPEC §10): noise on the {noise} ({shape}), each rescaled to std sigma on "
             f"every forward; model frozen in eval mode; {protocol.get('split', 'validation')} split "
             f"({protocol.get('graphs', '-')} graphs), batch {protocol.get('batch_size')}; Adam lr {protocol.get('lr'):g}, "
             f"one step per batch; ReduceLROnPlateau(factor {protocol.get('factor')}, patience {protocol.get('patience')}) "
             f"on the epoch loss; stop when lr < {protocol.get('min_lr'):g} or after {protocol.get('max_epochs')} epochs; "
             "baseline: one Gaussian draw; gain = loss_opt / loss_random - 1."]
    runs = [f"{tag} sigma {r['sigma']:g}: {r.get('epochs', r.get('steps'))} epochs ({r.get('stop_reason', '-')})"
            for tag in variants for r in (report.get("attack") or {}).get(tag, [])]
    if runs:
        lines.append("Epochs run: " + "; ".join(runs) + ".")
    return lines
