"""magnn.data through the command line: broken caches, raw files and splits are one error line each."""
from __future__ import annotations

import gzip
import shutil

import torch

from cli_helpers import TINY, data_root, error_line, run, run_copy, trained  # noqa: F401  (fixtures)


def _tiny_tox21_cache(tmp_path):
    """A valid TOX21 cache, built from 20 molecules, placed where the bundled CSV's cache would be."""
    import pandas as pd

    from magnn.data import TOX21
    from magnn.data._files import bundled_path, sha256_file

    csv = tmp_path / "small.csv"
    pd.read_csv(bundled_path("tox21.csv.gz")).iloc[:20].to_csv(csv, index=False)
    small = TOX21(root=tmp_path / "small_root", csv_path=csv)
    root = tmp_path / "root"
    target = root / "tox21" / "processed" / f"v1-{sha256_file(bundled_path('tox21.csv.gz'))[:16]}"
    shutil.copytree(small.processed_dir, target)
    return root, target / "scaffold_split.pt", len(small)


def test_tox21_cache_with_bad_split_is_refused(capsys, tmp_path):
    root, split_path, count = _tiny_tox21_cache(tmp_path)
    split = torch.load(split_path)
    argv = ["train", "--dataset", "tox21", "--max-graphs", "2", "--data-root", root, "--out", tmp_path / "o"]
    for name, bad, words in (
        ("out of range", {**split, "test": torch.cat([split["test"], torch.tensor([count + 5])])}, "outside [0, 20)"),
        ("overlap", {**split, "val": torch.cat([split["val"], split["train"][:1]])}, "splits overlap"),
        ("missing key", {"train": split["train"]}, "not train/val/test"),
    ):
        torch.save(bad, split_path)
        code, err = run(capsys, *argv)
        line = error_line(err, "train", code)
        assert words in line and str(split_path.parent) in line and "delete" in line, (name, line)


def test_zinc_raw_garbage_is_a_clear_error(capsys, tmp_path):
    from test_data import _write_benchmarking_gnns_raw

    from magnn.data import load_zinc

    bundled = load_zinc(source="bundled")
    source = {split: [bundled[split][i] for i in range(4)] for split in ("train", "val", "test")}

    def fresh(name):
        root = tmp_path / name
        _write_benchmarking_gnns_raw(root / "ZINC" / "raw", source)
        return root, root / "ZINC" / "raw"

    cases = []
    root, raw = fresh("pickle_text")
    (raw / "val.pickle").write_text("these are not molecules\n")
    cases.append((root, ["cannot be processed", str(raw)]))
    root, raw = fresh("index_words")
    (raw / "train.index").write_text("zero,two\n")
    cases.append((root, ["train.index", "comma-separated integers"]))
    root, raw = fresh("index_range")
    (raw / "test.index").write_text("0,99\n")
    cases.append((root, ["cannot be processed", "test.index has index 99, but test.pickle holds 4 molecules"]))
    root, raw = fresh("index_negative")
    (raw / "val.index").write_text("0,-1\n")
    cases.append((root, ["val.index", "negative"]))
    root, raw = fresh("index_no_newline")
    (raw / "train.index").write_text("0,2")  # PyG would silently read "0," -> a wrong split
    cases.append((root, ["train.index", "newline"]))
    root, raw = fresh("processed_garbage")
    load_zinc(root=root, source="official")
    (root / "ZINC" / "subset" / "processed" / "val.pt").write_bytes(b"garbage")
    cases.append((root, ["processed ZINC cache", "delete"]))
    for root, words in cases:
        code, err = run(capsys, "train", *TINY, "--data-root", root, "--out", tmp_path / "o")
        line = error_line(err, "train", code)
        assert all(word in line for word in words), (root.name, line)


def test_proteins_overlapping_or_out_of_range_split(capsys, tmp_path):
    from magnn.data import write_ogb_proteins_raw

    write_ogb_proteins_raw(tmp_path, num_nodes=60, num_edges_undirected=200, seed=3)
    split_dir = tmp_path / "ogbn_proteins" / "split" / "species"
    with gzip.open(split_dir / "train.csv.gz", "rt") as f:
        train_rows = f.read().splitlines()
    with gzip.open(split_dir / "valid.csv.gz", "rt") as f:
        valid_rows = f.read().splitlines()
    with gzip.open(split_dir / "valid.csv.gz", "wt") as f:
        f.write("\n".join(valid_rows + train_rows[:2]) + "\n")
    argv = ["train", "--dataset", "ogbn-proteins", "--data-root", tmp_path, "--out", tmp_path / "o"]
    code, err = run(capsys, *argv)
    assert "share 2 node(s)" in error_line(err, "train", code)
    with gzip.open(split_dir / "valid.csv.gz", "wt") as f:
        f.write("\n".join(valid_rows + ["600"]) + "\n")
    code, err = run(capsys, *argv)
    assert "outside [0, num_nodes)" in error_line(err, "train", code)
