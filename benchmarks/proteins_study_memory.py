"""Peak resident memory of each stage of `magnn study --dataset ogbn-proteins --quick`, at
sizes small enough for a shared machine, and a linear fit in the edge count (issue 24, item 4).

    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/proteins_study_memory.py --model gt \\
        --scales 0.04 0.08 --out /tmp/study-memory

For each scale s it writes a synthetic ogbn-proteins folder of s x the real sizes (nodes and
undirected edges both scaled, so the mean degree, and with it each sampled seed subgraph, stays
the real one) and runs the quick study once, with `--epochs` full-batch epochs, in this
process. Each pipeline stage (data, training, detection, ablation, attack, figures, sinks,
mechanics, report) is wrapped: the kernel's peak-RSS mark is reset before it
(/proc/self/clear_refs) and VmHWM read after it. The peak of each stage at the two scales gives a
line a + b*E per stage; the real-size value of that line is an ESTIMATE (printed as such), not
a measurement. JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procstatus import status_kib  # noqa: E402

REAL_NODES, REAL_EDGES_UNDIRECTED = 132_534, 39_561_252
STAGES = ("prepare", "train_stage", "detect_stage", "ablate_stage", "attack_stage", "figures_stage",
          "sinks_stage", "mechanics_stage", "report_stage")


def _wrap(module, name: str, peaks: dict) -> None:
    """Replace module.name by a version recording its wall time and peak RSS (GiB) in peaks[name]."""
    inner = getattr(module, name)

    def wrapped(*args, **kwargs):
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before, start = status_kib("VmRSS"), time.perf_counter()
        result = inner(*args, **kwargs)
        peaks[name] = {"seconds": round(time.perf_counter() - start, 2), "before_gib": before / 2**20,
                       "peak_gib": status_kib("VmHWM") / 2**20}
        return result

    setattr(module, name, wrapped)


def install(peaks: dict) -> None:
    """Wrap every stage of the study pipeline once (`_wrap`); each run reads and clears `peaks`."""
    import magnn.train
    from magnn.study import pipeline

    for name in STAGES[1:]:
        _wrap(pipeline, name, peaks)
    _wrap(magnn.train, "prepare", peaks)


def run_scale(scale: float, model: str, epochs: int, work: Path, peaks: dict, overrides: dict) -> dict:
    """One quick study at `scale` x the real sizes: {"edges": directed E, "stages": per stage}."""
    from magnn.data import write_ogb_proteins_raw
    from magnn.study import StudyConfig, run_study

    nodes, undirected = int(REAL_NODES * scale), int(REAL_EDGES_UNDIRECTED * scale)
    root = work / f"data-{scale}"
    write_ogb_proteins_raw(root, num_nodes=nodes, num_edges_undirected=undirected, seed=0, overwrite=True)
    peaks.clear()
    start = time.perf_counter()
    run_study(StudyConfig.from_options(dataset="ogbn-proteins", model=model, quick=True, data_root=str(root),
                                       out=str(work / f"study-{scale}"), epochs=epochs, backend="cpu",
                                       overrides=overrides))
    return {"scale": scale, "nodes": nodes, "edges": 2 * undirected, "study_seconds": round(time.perf_counter() - start, 1),
            "peak_gib": status_kib("VmHWM") / 2**20, "stages": dict(peaks)}


def fit(runs: list) -> dict:
    """Per stage, the line through the two runs' peaks, evaluated at the real edge count (GiB)."""
    small, large, real = runs[0], runs[-1], 2 * REAL_EDGES_UNDIRECTED
    estimate = {}
    for name in small["stages"]:
        if name not in large["stages"]:
            continue
        a, b = small["stages"][name]["peak_gib"], large["stages"][name]["peak_gib"]
        slope = (b - a) / (large["edges"] - small["edges"])
        estimate[name] = {"peak_gib_estimate": round(a + slope * (real - small["edges"]), 2),
                          "bytes_per_edge": round(slope * 2**30, 1)}
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gt", choices=("gt", "graphit", "san"))
    parser.add_argument("--scales", type=float, nargs="+", default=(0.04, 0.08),
                        help="one run per scale; with two or more, the fit uses the smallest and the largest")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--unfused", action="store_true",
                        help="fused_edge_projection=False: the [E, hidden] edge embedding and projections, for comparison")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="study-memory-"))
    peaks: dict = {}
    install(peaks)
    overrides = {"fused_edge_projection": False} if args.unfused else {}
    runs = [run_scale(scale, args.model, args.epochs, work, peaks, overrides) for scale in sorted(args.scales)]
    result = {"model": args.model, "epochs": args.epochs, "overrides": overrides, "runs": runs}
    if len(runs) > 1:
        result["real_size_estimate_from_a_linear_fit"] = fit(runs)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
