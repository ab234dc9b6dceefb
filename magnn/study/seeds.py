"""`magnn study --seeds N`: the study's pair run N times (seeds seed, seed+1, ...), each finding
reported as the mean and a 95 % interval over seeds beside the per-seed values.

One seed's finding can flip with the initialisation; N studies, each its own folder
OUT/seed_<s>/ (a complete study: report.json, report.md, figures), give the spread. The
interval is Student's t over the seeds' values (wide for few seeds, as it should be). Writes
OUT/seeds.json (schema: docs/REPORT.md) and OUT/seeds.md.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

__all__ = ["run_seeds", "aggregate", "interval", "log_interval"]


def run_seeds(config, run_study) -> dict:
    """Runs the study (`run_study`, one seed's whole study) once per seed (config.seeds of them) and
    writes OUT/seeds.json and seeds.md."""
    from .report import report_json

    out = Path(config.out)
    reports = {}
    for offset in range(config.seeds):
        seed = config.train.seed + offset
        one = dataclasses.replace(config, seeds=1, out=str(out / f"seed_{seed}"),
                                  train=dataclasses.replace(config.train, seed=seed))
        reports[seed] = run_study(one)
    summary = aggregate(reports)
    _write(out / "seeds.json", report_json(summary))
    _write(out / "seeds.md", markdown(summary))
    return summary


def interval(values: list) -> dict:
    """Mean and Student-t 95 % interval of the finite values (NaN interval for fewer than two)."""
    from scipy import stats

    finite = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
              and v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    half = stats.t.ppf(0.975, len(finite) - 1) * sd / math.sqrt(len(finite))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(finite)}


def log_interval(values: list) -> dict:
    """For ratios (positive, multiplicative): the geometric mean and the Student-t 95 % interval on the
    log scale, mapped back (always positive; a symmetric interval on a ratio can reach below 0). Values
    that are not finite and positive are left out; "scale": "log" says which interval this is."""
    positive = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
                and math.isfinite(v) and v > 0]
    logs = interval([math.log(v) for v in positive])
    back = {key: math.exp(logs[key]) if math.isfinite(logs[key]) else logs[key] for key in ("mean", "low", "high")}
    return {**back, "n": logs["n"], "scale": "log"}


def _summarise(rows: dict) -> dict:
    """{seed: row} (a finding's overall or one layer's numbers) -> per numeric key its interval and
    per-seed values; the verdicts per seed and how many reproduced."""
    seeds = list(rows)
    keys = [k for k in rows[seeds[0]] if k not in ("verdict", "layer")
            and all(isinstance(rows[s].get(k), (int, float, type(None))) for s in seeds)]
    verdicts = {str(s): rows[s].get("verdict") for s in seeds}
    reproduced = sum(1 for v in verdicts.values() if v == "REPRODUCED")
    numbers = {k: dict(interval([rows[s].get(k) for s in seeds]), per_seed={str(s): rows[s].get(k) for s in seeds})
               for k in keys}
    return {"verdicts": verdicts, "seeds_reproduced": f"{reproduced}/{len(seeds)}", "numbers": numbers}


def aggregate(reports: dict) -> dict:
    """{seed: report.json} -> {"seeds", "findings_detail": [{"name", "criterion", "overall", "per_layer"}],
    "findings": [one line each]}."""
    seeds = list(reports)
    by_name = [{item["name"]: item for item in reports[s].get("findings_detail") or []} for s in seeds]
    names = [name for name in by_name[0] if all(name in other for other in by_name)]
    details = []
    for name in names:
        items = {s: table[name] for s, table in zip(seeds, by_name)}
        layers = [row["layer"] for row in items[seeds[0]]["per_layer"]]
        per_layer = []
        for index, layer in enumerate(layers):
            rows = {s: item["per_layer"][index] for s, item in items.items() if index < len(item["per_layer"])}
            if len(rows) == len(seeds):
                per_layer.append(dict(_summarise(rows), layer=layer))
        details.append({"name": name, "criterion": items[seeds[0]]["criterion"],
                        "overall": _summarise({s: item["overall"] for s, item in items.items()}), "per_layer": per_layer})
    return {"seeds": seeds, "findings_detail": details, "findings": [_line(item) for item in details]}


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _line(item) -> str:
    overall = item["overall"]
    numbers = "; ".join(f"{k} {_fmt(v['mean'])} [{_fmt(v['low'])}, {_fmt(v['high'])}] (seeds: "
                        + ", ".join(_fmt(x) for x in v["per_seed"].values()) + ")"
                        for k, v in overall["numbers"].items())
    verdicts = [str(v) for v in overall["verdicts"].values()]
    if verdicts and all(v.startswith("MEASURED") for v in verdicts):  # a measurement, not a claim to reproduce
        return f"{item['name']}: MEASURED in every seed, not one of the paper's claims ({numbers})"
    return f"{item['name']}: REPRODUCED in {overall['seeds_reproduced']} seeds ({numbers})"


def markdown(summary: dict) -> str:
    lines = [f"# magnn study over {len(summary['seeds'])} seeds ({', '.join(map(str, summary['seeds']))})", "",
             "Each number: mean [95 % Student-t interval over seeds] (per-seed values). Per seed: OUT/seed_<s>/.", ""]
    lines += [f"- {line}" for line in summary["findings"]]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
