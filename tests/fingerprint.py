"""A seeded fingerprint of what the upper floors compute, to prove a refactor changes nothing.

It records, for every model in several configurations, the state_dict (names, shapes and a
digest of the exact bytes) and the outputs of a forward pass on a fixed batch; then the
metrics.json of a short `magnn train` and the report.json of a short `magnn study`, with the
values that vary from run to run (timings, output paths, dates) left out.

    python -m tests.fingerprint --write     # record tests/fingerprint.json from this tree
    python -m tests.fingerprint             # compare this tree with the record; exit 1 on a difference

tests/test_fingerprint.py runs the comparison. Floats are compared to 1e-6 relative (the same
machine gives the same bits; another CPU may round an accumulation differently); state_dict
digests, integers and strings exactly.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

RECORD = Path(__file__).with_name("fingerprint.json")
REL_TOL = 1e-6
# keys whose values vary between identical runs (wall time, where the run was written, when)
VOLATILE = ("time", "seconds", "elapsed", "duration", "date", "out", "path", "root", "ckpt", "wall", "host",
            "version", "figures", "device_name", "threads")

# (model, dataset, model keyword overrides): the presets and the variants the flags select today
MODEL_CASES = [
    ("gt", "zinc", {"preset": "paper"}),
    ("gt", "zinc", {"preset": "paper", "ebt": "edge"}),
    ("gt", "zinc", {"preset": "paper", "ebt": "slot"}),
    ("gt", "zinc", {"num_layers": 2, "hidden": 32, "heads": 4}),  # the class defaults: LapPE
    ("graphit", "zinc", {"preset": "paper"}),
    ("graphit", "zinc", {"preset": "paper", "ebt": "edge", "ebt_compat": "gnn-mas"}),
    ("graphit", "zinc", {"num_layers": 2, "hidden": 32, "heads": 4}),  # the class defaults: RW kernel
    ("san", "zinc", {"preset": "paper"}),
    ("san", "zinc", {"preset": "paper", "ebt": "edge", "ebt_compat": "gnn-mas"}),
    ("san", "zinc", {"num_layers": 2, "hidden": 32, "heads": 4}),  # the class defaults: full graph, LPE
    ("gt", "tox21", {"preset": "paper", "num_layers": 3, "hidden": 48}),
    ("san", "tox21", {"preset": "paper", "num_layers": 3, "ebt": "edge"}),
    ("graphit", "tox21", {"preset": "paper", "num_layers": 3, "ebt": "slot"}),
]
PROTEINS_CASES = [
    ("gt", {"preset": "paper"}),
    ("graphit", {"preset": "paper", "ebt": "edge"}),
    ("san", {"preset": "paper"}),
    ("gt", {"preset": "paper", "architecture": "magnn"}),
    ("san", {"preset": "paper", "architecture": "magnn", "ebt": "edge"}),
]


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def tensor_summary(tensor: torch.Tensor) -> list:
    values = tensor.detach().double().flatten()
    return [list(tensor.shape), float(values.sum()), float(values.abs().sum()), [float(v) for v in values[:4]]]


def state_summary(model: torch.nn.Module) -> dict:
    return {name: [list(value.shape), str(value.dtype).replace("torch.", ""), digest(value)]
            for name, value in model.state_dict().items()}


def _build(name: str, info, overrides: dict):
    from magnn.models import build_model, transforms_for

    overrides = dict(overrides)
    architecture = overrides.pop("architecture", None)
    if architecture is not None:
        from magnn.models.presets import proteins_architecture

        overrides.update(proteins_architecture(name, architecture))
    preset = overrides.pop("preset", None)
    ebt = overrides.pop("ebt", None)
    torch.manual_seed(0)
    model = build_model(name, info, ebt=ebt, preset=preset, backend="torch", **overrides)
    transform = transforms_for(name, info, preset=preset, **overrides)
    return model, transform


def _batch(splits, transform, count: int = 12):
    from torch_geometric.data import Batch

    graphs = [splits["test"][index] for index in range(count)]
    if transform is not None:
        graphs = [transform(graph) for graph in graphs]
    return Batch.from_data_list(graphs)


def model_fingerprints() -> dict:
    from magnn.data import load_dataset

    result = {}
    data = {name: load_dataset(name, max_graphs=16) for name in ("zinc", "tox21")}
    for index, (name, dataset, overrides) in enumerate(MODEL_CASES):
        splits, info = data[dataset]
        model, transform = _build(name, info, overrides)
        batch = _batch(splits, transform)
        torch.manual_seed(1)  # random sign flips of the positional encodings, dropout
        model.train()
        out_train = model(batch)
        model.eval()
        with torch.no_grad():
            out_eval = model(batch)
        key = f"{index:02d} {name} {dataset} {json.dumps(overrides, sort_keys=True)}"
        result[key] = {"state": state_summary(model), "train": tensor_summary(out_train),
                       "eval": tensor_summary(out_eval)}
    return result


def proteins_fingerprints(root: Path) -> dict:
    from magnn.data import load_dataset, write_ogb_proteins_raw

    write_ogb_proteins_raw(root, num_nodes=600, num_edges_undirected=3000, seed=3)
    splits, info = load_dataset("ogbn-proteins", root=root)
    graph = splits["train"]
    result = {}
    for index, (name, overrides) in enumerate(PROTEINS_CASES):
        model, transform = _build(name, info, overrides)
        data = transform(graph.clone()) if transform is not None else graph
        model.eval()
        with torch.no_grad():
            out = model(data)
        key = f"{index:02d} {name} ogbn-proteins {json.dumps(overrides, sort_keys=True)}"
        result[key] = {"state": state_summary(model), "eval": tensor_summary(out)}
    return result


def _strip(value):
    """The JSON without the keys that vary between identical runs; floats rounded to 12 digits."""
    if isinstance(value, dict):
        return {key: _strip(item) for key, item in value.items()
                if not any(word in key.lower() for word in VOLATILE)}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _run_cli(argv: list[str]) -> None:
    from magnn.cli import main

    with contextlib.redirect_stdout(sys.stderr):
        code = main(argv)
    if code != 0:
        raise RuntimeError(f"magnn {' '.join(argv)} exited {code}")


def run_fingerprints(folder: Path) -> dict:
    train_out = folder / "train"
    _run_cli(["train", "--dataset", "zinc", "--model", "gt", "--epochs", "2", "--max-graphs", "48",
              "--preset", "quick", "--backend", "cpu", "--ma-probe-graphs", "8", "--out", str(train_out)])
    study_out = folder / "study"
    _run_cli(["study", "--dataset", "tox21", "--model", "gt", "--quick", "--epochs", "1", "--max-graphs", "48",
              "--attack-steps", "2", "--backend", "cpu", "--out", str(study_out)])
    report = json.loads((study_out / "report.json").read_text())
    report.pop("config", None)  # the StudyConfig that re-runs the study: recorded after the fingerprint was
    return {"metrics.json": _strip(json.loads((train_out / "metrics.json").read_text())),
            "report.json": _strip(report)}


def fingerprint() -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        return {"models": model_fingerprints(), "proteins": proteins_fingerprints(Path(tmp) / "proteins"),
                "runs": run_fingerprints(Path(tmp))}


def differences(expected, actual, where: str = "") -> list[str]:
    """Where two fingerprints differ (floats to REL_TOL), as readable lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = [f"{where}/{key}: missing" for key in expected if key not in actual]
        lines += [f"{where}/{key}: new" for key in actual if key not in expected]
        for key in expected:
            if key in actual:
                lines += differences(expected[key], actual[key], f"{where}/{key}")
        return lines
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{where}: length {len(expected)} -> {len(actual)}"]
        return [line for index, (a, b) in enumerate(zip(expected, actual))
                for line in differences(a, b, f"{where}[{index}]")]
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        if math.isnan(expected) and math.isnan(actual):
            return []
        if math.isclose(expected, actual, rel_tol=REL_TOL, abs_tol=1e-12):
            return []
    elif expected == actual:
        return []
    return [f"{where}: {expected!r} -> {actual!r}"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record {RECORD.name} from this tree")
    args = parser.parse_args(argv)
    current = json.loads(json.dumps(fingerprint()))  # the JSON's own types (tuples -> lists)
    if args.write:
        RECORD.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"wrote {RECORD}")
        return 0
    lines = differences(json.loads(RECORD.read_text()), current)
    print("\n".join(lines[:50]) if lines else "fingerprint unchanged")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
