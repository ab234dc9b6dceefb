"""The ZINC GT quick profile (lr, epochs) chosen on the VALIDATION split (issue 25 item 7).

    python benchmarks/quick_profile_search.py --lr 2e-3 --epochs 20 40 60 --out runs/qps_2e-3
    python benchmarks/quick_profile_search.py --table runs/qps_7e-4 runs/qps_2e-3

The first form trains the quick study's no-EBT model of GT on ZINC (the paper's 10-layer
model, `QUICK_PAIRS[("zinc", "gt")]` but for lr and epochs) once, up to the largest epoch
count, and keeps the weights after each listed epoch: with the paper's plateau schedule (it
never reads the epoch count) and a per-epoch shuffle seed, the weights after epoch E of a
60-epoch run are those of an E-epoch run's final model, which the study analyses. Each kept
model and the untrained base (the same seed and architecture at step 0, as the study builds
it) then run the study's detection on the first `--graphs` validation graphs (one graph per
batch), and OUT/search.json records, per epoch count, the criterion the quick profile is
chosen on: the trained model's growth over its own base of the 99.9 % quantile of r_e (the
statistic the report's findings use), overall (peak over layers, as the report's overall
growth) and per layer, with the max's growth beside it and the validation loss.

The second form prints the Markdown table of one or more OUT folders.

Run it niced on a shared machine: `OMP_WAIT_POLICY=PASSIVE nice -n 10 python ...`.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path


def train_with_snapshots(config, epochs: list[int]) -> tuple:
    """({epoch count: state_dict after it}, the validation split, {epoch count: val loss}, dataset info)
    of one training."""
    from magnn.train.callbacks import Callback
    from magnn.train.trainer import Trainer

    class Snapshots(Callback):
        def __init__(self):
            self.states = {}

        def on_train_epoch_end(self, trainer, module) -> None:
            done = len(trainer.history)
            if done in epochs:
                self.states[done] = copy.deepcopy(module.state_dict())

    trainer = Trainer(config, overwrite=True)
    snapshots = Snapshots()
    trainer.callbacks.append(snapshots)
    trainer.fit()
    val_loss = {e: trainer.history[e - 1]["val_loss"] for e in snapshots.states}
    return snapshots.states, trainer.splits["val"], val_loss, trainer.info


def growth(base_report: dict, trained_report: dict) -> dict:
    """Overall and per-layer growth over the own base, as the study's findings compute it."""
    from magnn.study.findings import _growth

    report = {"detection": {"base no_ebt": base_report, "trained no_ebt": trained_report}}
    overall, rows = _growth(report, "no_ebt")
    keep = ("growth", "growth_low", "growth_high", "growth_max", "base_q99.9", "trained_q99.9", "base_max",
            "trained_max")
    return {"overall": {k: overall[k] for k in keep}, "per_layer": {n: {k: r[k] for k in keep} for n, r in rows.items()}}


def search(args) -> dict:
    from magnn.analysis.detect import detect
    from magnn.study.config import StudyConfig
    from magnn.study.stages import _base

    study = StudyConfig.from_options(dataset="zinc", model="gt", quick=True, seed=args.seed)
    epochs = sorted(set(args.epochs))
    config = study.run_config(None, str(Path(args.out) / "train"))
    config.lr, config.epochs = args.lr, max(epochs)
    began = time.process_time()
    states, val, val_loss, info = train_with_snapshots(config, epochs)
    cpu_train = time.process_time() - began
    graphs = list(val[: args.graphs])
    base = _base(config, info, False)
    result = {"lr": args.lr, "seed": args.seed, "graphs": len(graphs), "split": "val", "train_cpu_s": cpu_train,
              "config": {"preset": config.preset, "lr": config.lr, "epochs": config.epochs}, "epochs": {}}
    base_report = detect(base, graphs, desc="base", fit=False).to_dict()
    for count, state in sorted(states.items()):
        model = copy.deepcopy(base)
        model.load_state_dict(state)
        trained = detect(model, graphs, desc=f"epoch {count}", fit=False).to_dict()
        result["epochs"][str(count)] = dict(growth(base_report, trained), val_loss=val_loss[count])
        del model
    return result


def table(folders) -> str:
    lines = ["| lr | epochs | val loss | base q99.9 (peak) | trained q99.9 (peak) | growth q99.9 [95% interval] | "
             "growth of the max | layers with growth > 10 |",
             "|---|---|---|---|---|---|---|---|"]
    for folder in folders:
        result = json.loads((Path(folder) / "search.json").read_text())
        for count, row in result["epochs"].items():
            o = row["overall"]
            above = sum(1 for r in row["per_layer"].values() if r["growth"] > 10)
            lines.append(f"| {result['lr']:g} | {count} | {row['val_loss']:.4f} | {o['base_q99.9']:.1f} | "
                         f"{o['trained_q99.9']:.1f} | {o['growth']:.1f} [{o['growth_low']:.1f}-{o['growth_high']:.1f}]"
                         f" | {o['growth_max']:.1f} | {above}/{len(row['per_layer'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=int, nargs="+", default=[20, 40, 60])
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--graphs", type=int, default=300, help="validation graphs detected (the study: 300 test graphs)")
    parser.add_argument("--out", default="runs/quick_profile_search")
    parser.add_argument("--table", nargs="+", help="print the table of these OUT folders and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.lr is None:
        parser.error("--lr is required (or --table)")
    result = search(args)
    out = Path(args.out) / "search.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(out)
    print(table([args.out]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
