"""The study's findings: whether each of the paper's qualitative claims reproduced, and on what basis.

Every ratio finding compares a model with its **own base** (the same architecture, seed and
initialisation, untrained): growth = trained / own base, per layer and overall. Comparing two
trained models directly is confounded by initialisation: EBT's N(0, 1) bias raises every edge's
median and lowers its ratio before any training, so an untrained EBT model already "has lower
ratios". The EBT claim is therefore "EBT lowers growth over its own base", and the init effect
(EBT base vs no-EBT base) is reported on its own line.

The criterion is stated on a robust statistic, the 99.9 % quantile of the per-edge ratio r_e
(magnn.analysis.robust, with its bootstrap interval over test graphs); the maximum is shown beside
it. Each ratio finding also shows its numerator and denominator (the layer's max |a| and median
|a|, base and trained), says whether the growth comes from larger activations or from shrinking
medians, and applies a second, absolute criterion (max |a| > ABS_THRESHOLD, the LLM definition's
100) beside the ratio.
"""
from __future__ import annotations

import math

__all__ = ["finding_details", "model_growth", "GROWTH", "GROWTH_MARGIN", "ABS_THRESHOLD", "STATISTIC"]

GROWTH = 10.0  # "trained >> base": growth over the own base above this factor
GROWTH_MARGIN = 2.0  # "lowers growth": the no-EBT growth is more than this factor of the EBT growth
ABS_THRESHOLD = 100.0  # the LLM definition's absolute criterion, |a| > 100 (Sun et al.)
STATISTIC = "q99.9"  # the robust statistic findings are stated on
MEASURED = "MEASURED (not one of the paper's claims)"


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def layer_numbers(report, label) -> dict:
    """{layer: {"q", "q_low", "q_high", "max", "max_abs", "median_abs", "tap_kind"}} of one detection;
    without robust statistics (an older report) the statistic falls back to the max."""
    detection = (report.get("detection") or {}).get(label) or {"layers": []}
    kinds = (report.get("tap_kinds") or {}).get(label.split(" ", 1)[-1], {})
    out = {}
    for layer in detection["layers"]:
        robust = (layer.get("edge_ratio_robust") or {}).get(STATISTIC) or {}
        stats = layer.get("stats") or {}
        value = _number(robust.get("value", layer.get("max_ratio_edge")))
        if math.isnan(value):
            continue
        out[layer["name"]] = {"q": value, "q_low": _number(robust.get("low")), "q_high": _number(robust.get("high")),
                              "max": _number(layer.get("max_ratio_edge")), "max_abs": _number(stats.get("max_abs")),
                              "median_abs": _number((stats.get("median_abs") or {}).get("estimate")),
                              "tap_kind": kinds.get(layer["name"])}
    return out


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def _peak(numbers: dict, key: str = "q") -> float:
    values = [row[key] for row in numbers.values() if not math.isnan(row[key])]
    return max(values, default=float("nan"))


def _verdict(ok) -> str:
    return "REPRODUCED" if ok else "NOT reproduced"


def _finding(name, criterion, overall, per_layer) -> dict:
    count = sum(1 for row in per_layer if row["verdict"] == "REPRODUCED")
    if per_layer and all(row["verdict"] == MEASURED for row in per_layer):
        return {"name": name, "criterion": criterion, "overall": overall, "per_layer": per_layer,
                "layers_reproduced": "-"}
    untestable = sum(1 for row in per_layer if not row["verdict"].startswith(("REPRODUCED", "NOT reproduced")))
    return {"name": name, "criterion": criterion, "overall": overall, "per_layer": per_layer,
            "layers_reproduced": f"{count}/{len(per_layer)}" + (f" ({untestable} not testable)" if untestable else "")}


def growth_row(base: dict, trained: dict) -> dict:
    """One layer's growth over its own base: the robust statistic's (with a conservative interval
    from the two bootstrap intervals), the max's, and the numerator / denominator behind them."""
    max_growth = _div(trained["max_abs"], base["max_abs"])
    median_shrink = _div(base["median_abs"], trained["median_abs"])
    source = ("large activations" if max_growth >= median_shrink else "shrinking medians") \
        if not (math.isnan(max_growth) or math.isnan(median_shrink)) else "unknown"
    return {"growth": _div(trained["q"], base["q"]), "growth_low": _div(trained["q_low"], base["q_high"]),
            "growth_high": _div(trained["q_high"], base["q_low"]), "growth_max": _div(trained["max"], base["max"]),
            f"base_{STATISTIC}": base["q"], f"trained_{STATISTIC}": trained["q"],
            "base_max": base["max"], "trained_max": trained["max"],
            "base_max_abs": base["max_abs"], "trained_max_abs": trained["max_abs"],
            "base_median_abs": base["median_abs"], "trained_median_abs": trained["median_abs"],
            "max_abs_growth": max_growth, "median_abs_shrink": median_shrink, "growth_from": source}


def _growth(report, tag: str) -> tuple[dict, dict]:
    """(overall growth row, {layer: growth row}) of one model over its own base."""
    base, trained = layer_numbers(report, f"base {tag}"), layer_numbers(report, f"trained {tag}")
    rows = {name: growth_row(base[name], trained[name]) for name in trained if name in base}
    peak = lambda numbers, key: _peak(numbers, key)
    whole = lambda numbers: {"q": peak(numbers, "q"), "q_low": peak(numbers, "q_low"), "q_high": peak(numbers, "q_high"),
                             "max": peak(numbers, "max"), "max_abs": peak(numbers, "max_abs"),
                             "median_abs": min((r["median_abs"] for r in numbers.values()), default=float("nan"))}
    return growth_row(whole(base), whole(trained)), rows


def model_growth(report, tag: str) -> tuple[dict, dict]:
    """(overall growth row, {layer: growth row}) of the model `tag` over its own base, from a report's
    "detection" ("base <tag>", "trained <tag>") and "tap_kinds": overall compares the peaks over layers."""
    return _growth(report, tag)


def _growth_finding(report, tag: str, paper_claim: bool) -> dict:
    overall, rows = _growth(report, tag)
    judge = (lambda row: _verdict(row["growth"] > GROWTH)) if paper_claim else (lambda row: MEASURED)
    what = "no-EBT" if tag == "no_ebt" else tag
    return _finding(
        f"{what} model grows over its own base" + (" (> 10x)" if paper_claim else ""),
        f"growth = trained / own base (same weights at step 0) of the {STATISTIC} quantile of r_e (bootstrap "
        f"interval over test graphs, conservatively combined), reproduced above {GROWTH:g}x; the max's growth, the "
        "max |a| and median |a| (base, trained) beside it, and whether large activations or shrinking medians drive it",
        dict(overall, verdict=judge(overall)),
        [dict(row, layer=name, verdict=judge(row)) for name, row in rows.items()])


def _threshold_finding(report, threshold: float) -> dict:
    trained = layer_numbers(report, "trained no_ebt")
    absolute = report.get("abs_threshold") or ABS_THRESHOLD
    judge = lambda row: {"verdict": _verdict(row["q"] > threshold), STATISTIC: row["q"], "max": row["max"],
                         "max_abs": row["max_abs"], "absolute_verdict": _verdict(row["max_abs"] > absolute)}
    whole = {"q": _peak(trained), "max": _peak(trained, "max"), "max_abs": _peak(trained, "max_abs")}
    return _finding(
        "MA threshold crossed",
        f"the trained no-EBT model's {STATISTIC} quantile of r_e exceeds the MA threshold {threshold:g} (the max "
        f"beside it); absolute_verdict: its max |a| exceeds {absolute:g} (the LLM definition: 100)",
        judge(whole), [dict(judge(row), layer=name) for name, row in trained.items()])


def _ebt_finding(report, ebt_tag: str) -> dict:
    no_overall, no_rows = _growth(report, "no_ebt")
    ebt_overall, ebt_rows = _growth(report, ebt_tag)

    def judge(no, ebt):
        if math.isnan(no["growth"]) or math.isnan(ebt["growth"]):
            return {"verdict": "NOT TESTABLE (no growth measured)"}
        if no["growth"] <= GROWTH_MARGIN:
            verdict = f"INCONCLUSIVE (the no-EBT model did not grow over its base by more than {GROWTH_MARGIN:g}x)"
        else:
            verdict = _verdict(no["growth"] > GROWTH_MARGIN * ebt["growth"])
        return {"verdict": verdict, "growth_no_ebt": no["growth"], f"growth_{ebt_tag}": ebt["growth"],
                "growth_max_no_ebt": no["growth_max"], f"growth_max_{ebt_tag}": ebt["growth_max"],
                "factor": _div(no["growth"], ebt["growth"])}

    return _finding(
        "EBT lowers growth over its own base",
        f"the no-EBT model's growth over its own base ({STATISTIC} of r_e) is more than {GROWTH_MARGIN:g}x the "
        f"{ebt_tag} model's growth over its own base; inconclusive where the no-EBT model did not grow; the trained "
        "models are never compared directly (EBT's initialisation alone lowers ratios: see the init effect)",
        judge(no_overall, ebt_overall),
        [dict(judge(no_rows[n], ebt_rows[n]), layer=n) for n in no_rows if n in ebt_rows])


def _init_finding(report, ebt_tag: str) -> dict:
    base, ebt = layer_numbers(report, "base no_ebt"), layer_numbers(report, f"base {ebt_tag}")
    row = lambda a, b: {"verdict": MEASURED, f"base_no_ebt_{STATISTIC}": a["q"], f"base_{ebt_tag}_{STATISTIC}": b["q"],
                        "factor": _div(a["q"], b["q"]), "base_no_ebt_median_abs": a["median_abs"],
                        f"base_{ebt_tag}_median_abs": b["median_abs"]}
    whole = lambda numbers: {"q": _peak(numbers), "median_abs": _peak(numbers, "median_abs")}
    return _finding(
        "EBT init effect (untrained EBT vs untrained no-EBT)",
        f"the untrained models' {STATISTIC} of r_e, no EBT / {ebt_tag} (factor > 1: EBT's initialisation alone "
        "lowers ratios, before any training); not a claim of the paper, the confound the growth findings remove",
        row(whole(base), whole(ebt)), [dict(row(base[n], ebt[n]), layer=n) for n in base if n in ebt])


def finding_details(report, variants) -> list[dict]:
    """Each finding with its criterion, evaluated overall and per layer (docs/REPORT.md)."""
    ebt_tag = [t for t in variants if t != "no_ebt"][0]
    details = [_growth_finding(report, "no_ebt", True), _threshold_finding(report, report["threshold"]),
               _growth_finding(report, ebt_tag, False), _ebt_finding(report, ebt_tag), _init_finding(report, ebt_tag),
               _attack_finding(report, ebt_tag), _ablation_finding(report, report["threshold"])]
    return [detail for detail in details if detail is not None]


def _attack_finding(report, ebt_tag: str):
    attack = report.get("attack") or {}
    if not (attack.get("no_ebt") and attack.get(ebt_tag)):
        return None
    gain = {tag: {round(r["sigma"], 4): r["gain_percent"] for r in rows} for tag, rows in attack.items()}
    g0, g1 = gain["no_ebt"].get(0.1), gain[ebt_tag].get(0.1)
    unmeasured = [tag for tag in ("no_ebt", ebt_tag) for r in attack[tag]
                  if round(r["sigma"], 4) == 0.1 and r.get("measurable") is False]
    if g0 is None or g1 is None:
        verdict = "NOT TESTABLE (no sigma 0.1 run)"
    elif unmeasured:
        verdict = (f"NOT TESTABLE (the random noise left the loss of {' and '.join(unmeasured)} unchanged: "
                   "the gain is rounding, not a measurement)")
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
