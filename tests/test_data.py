"""magnn.data: shipped files, TOX21, ZINC, ogbn-proteins through ogb, synthetic writer."""
from __future__ import annotations

import gzip
import logging
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import magnn.data as mdata
from magnn.data import (TOX21, TOX21_TASKS, CorruptDataError, DatasetInfo, MissingDataError,
                        evaluate_rocauc, load_dataset, load_ogbn_proteins, load_zinc,
                        scaffold_split, synthetic_proteins_graph, write_ogb_proteins_raw)
from magnn.data import _files
from magnn.data.proteins import OfflinePygNodePropPredDataset, check_proteins_raw
from magnn.data.synthetic import _csv_int_rows, _csv_thousandths_rows
from magnn.data.tox21 import _split_scaffold_sets

TOX21_SUBSET = 300


# ----------------------------------------------------------------------------- helpers

def _edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


def _assert_both_directions(edge_index: torch.Tensor) -> None:
    edges = _edge_set(edge_index)
    assert edges == {(j, i) for i, j in edges}


def _write_gz_rows(path, rows: list[str]) -> None:
    with gzip.open(path, "wt") as f:
        f.write("".join(row + "\n" for row in rows))


@pytest.fixture(scope="module")
def tox21_frame() -> pd.DataFrame:
    return pd.read_csv(_files.bundled_path("tox21.csv.gz"))


@pytest.fixture(scope="module")
def tox21_subset(tmp_path_factory, tox21_frame):
    """The first 300 bundled molecules as a CSV, featurised once for the module."""
    folder = tmp_path_factory.mktemp("tox21_subset")
    csv = folder / "tox21_subset.csv"
    tox21_frame.iloc[:TOX21_SUBSET].to_csv(csv, index=False)
    return TOX21(root=folder / "cache", csv_path=csv), csv


@pytest.fixture()
def proteins_root(tmp_path):
    write_ogb_proteins_raw(tmp_path, num_nodes=200, num_edges_undirected=1500, seed=3)
    return tmp_path


# ----------------------------------------------------------------------------- shipped files

def test_bundled_files_match_their_checksums():
    for name, digest in _files.BUNDLED_SHA256.items():
        path = _files.bundled_path(name)
        assert _files.sha256_file(path) == digest
    notes = (_files.BUNDLED_DIR / "SOURCES.md").read_text()
    for digest in _files.BUNDLED_SHA256.values():
        assert digest in notes


def test_corrupt_bundled_file_is_refused(tmp_path, monkeypatch):
    shutil.copytree(_files.BUNDLED_DIR, tmp_path / "bundled")
    target = tmp_path / "bundled" / "zinc_subset" / "atom_types.json"
    target.chmod(0o644)
    target.write_text(target.read_text().replace('"C"', '"X"'))
    monkeypatch.setattr(_files, "BUNDLED_DIR", tmp_path / "bundled")
    with pytest.raises(CorruptDataError, match="sha256"):
        _files.bundled_path("zinc_subset/atom_types.json")
    (tmp_path / "bundled" / "tox21.csv.gz").unlink()
    with pytest.raises(MissingDataError, match="tox21.csv.gz"):
        _files.bundled_path("tox21.csv.gz")


# ----------------------------------------------------------------------------- TOX21

def test_tox21_graphs_follow_the_contract(tox21_subset, tox21_frame):
    dataset, _ = tox21_subset
    assert dataset.info == mdata.TOX21_INFO
    assert dataset.info.num_tasks == 12 and dataset.info.task == "graph_multilabel"
    assert dataset.num_skipped == 0 and len(dataset) == TOX21_SUBSET
    expected_labels = tox21_frame.iloc[:TOX21_SUBSET][list(TOX21_TASKS)].to_numpy(dtype=np.float32)
    for i in (0, 17, 123, TOX21_SUBSET - 1):
        graph = dataset[i]
        n, e = graph.num_nodes, graph.edge_index.size(1)
        assert graph.x.dtype == torch.long and graph.x.shape == (n, 9)
        assert graph.edge_attr.dtype == torch.long and graph.edge_attr.shape == (e, 3)
        assert graph.edge_type.dtype == torch.long and torch.equal(graph.edge_type, graph.edge_attr[:, 0])
        assert graph.y.dtype == torch.float32 and graph.y.shape == (1, 12)
        assert graph.smiles == tox21_frame.smiles[i]
        _assert_both_directions(graph.edge_index)
        # NaN exactly where the CSV field is empty, 0/1 elsewhere.
        np.testing.assert_array_equal(np.isnan(graph.y[0].numpy()), np.isnan(expected_labels[i]))
        np.testing.assert_array_equal(graph.y[0].numpy(), expected_labels[i])
    all_y = dataset.y
    assert torch.isnan(all_y).any()
    assert set(all_y[~torch.isnan(all_y)].unique().tolist()) <= {0.0, 1.0}


def test_tox21_unparsable_smiles_are_skipped_and_counted(tmp_path, caplog, tox21_frame):
    frame = tox21_frame.iloc[:4].copy()
    frame.loc[1, "smiles"] = "O=CO[AlH3](OC=O)OC=O"   # one of the 8 real failures
    frame.loc[3, "smiles"] = "C1CC(C"                  # broken syntax
    csv = tmp_path / "bad.csv"
    frame.to_csv(csv, index=False)
    with caplog.at_level(logging.WARNING, logger="magnn.data.tox21"):
        dataset = TOX21(root=tmp_path / "cache", csv_path=csv)
    assert len(dataset) == 2
    assert dataset.num_skipped == 2
    assert dataset.skipped_mol_ids == [frame.mol_id[1], frame.mol_id[3]]
    assert [dataset[0].mol_id, dataset[1].mol_id] == [frame.mol_id[0], frame.mol_id[2]]
    assert any("skipped 2 of 4" in record.getMessage() for record in caplog.records)


def test_tox21_cache_is_reused_and_keyed_by_content(tmp_path, tox21_frame, monkeypatch):
    csv = tmp_path / "a.csv"
    tox21_frame.iloc[:20].to_csv(csv, index=False)
    first = TOX21(root=tmp_path / "cache", csv_path=csv)

    def fail(self):
        raise AssertionError("cache should have been reused")

    monkeypatch.setattr(TOX21, "process", fail)
    again = TOX21(root=tmp_path / "cache", csv_path=csv)
    assert len(again) == len(first) == 20
    assert torch.equal(again[5].x, first[5].x)
    # Different content -> different cache folder -> processing again.
    tox21_frame.iloc[:21].to_csv(csv, index=False)
    with pytest.raises(AssertionError, match="reused"):
        TOX21(root=tmp_path / "cache", csv_path=csv)


def test_tox21_bad_files(tmp_path, tox21_frame):
    with pytest.raises(MissingDataError, match="not found"):
        TOX21(root=tmp_path, csv_path=tmp_path / "nope.csv")
    blob = _files.bundled_path("tox21.csv.gz").read_bytes()
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError, match="truncated"):
        TOX21(root=tmp_path / "cache", csv_path=truncated)
    no_labels = tmp_path / "no_labels.csv"
    tox21_frame[["mol_id", "smiles"]].iloc[:5].to_csv(no_labels, index=False)
    with pytest.raises(CorruptDataError, match="lacks columns"):
        TOX21(root=tmp_path / "cache", csv_path=no_labels)


def test_tox21_full_bundled_file(tmp_path):
    dataset = TOX21(root=tmp_path)  # the bundled CSV, all 7,831 rows
    assert len(dataset) == 7823 and dataset.num_skipped == 8
    split = dataset.split_idx
    sizes = {name: len(index) for name, index in split.items()}
    assert sum(sizes.values()) == 7823
    joined = torch.cat(list(split.values()))
    assert torch.equal(joined.sort().values, torch.arange(7823))       # disjoint and covering
    assert 0.79 <= sizes["train"] / 7823 <= 0.80 and 0.09 <= sizes["val"] / 7823 <= 0.11
    # Label statistics of the standard file (SOURCES.md), less the 8 unparsable rows.
    frame = pd.read_csv(dataset.csv_path)
    kept = frame[~frame.mol_id.isin(dataset.skipped_mol_ids)]
    labels = dataset.y
    labelled = (~torch.isnan(labels)).sum(0).tolist()
    assert labelled == kept[list(TOX21_TASKS)].notna().sum().tolist()
    assert frame[list(TOX21_TASKS)].notna().sum().tolist() == [
        7265, 6758, 6549, 5821, 6193, 6955, 6450, 5832, 7072, 6467, 5810, 6774]


# ----------------------------------------------------------------------------- scaffold split

def test_scaffold_split_rule_on_known_groups():
    scaffolds = ["a"] * 5 + ["b"] * 3 + ["c", "d"]
    split = _split_scaffold_sets(scaffolds, frac_train=0.5, frac_valid=0.3)
    assert split["train"].tolist() == [0, 1, 2, 3, 4]
    assert split["val"].tolist() == [5, 6, 7]
    assert split["test"].tolist() == [8, 9]


def test_scaffold_split_is_deterministic_disjoint_and_covering(tox21_frame):
    smiles = tox21_frame.smiles.iloc[:TOX21_SUBSET].tolist()
    first = scaffold_split(smiles)
    second = scaffold_split(list(smiles))
    assert all(torch.equal(first[k], second[k]) for k in ("train", "val", "test"))
    joined = torch.cat([first["train"], first["val"], first["test"]])
    assert torch.equal(joined.sort().values, torch.arange(len(smiles)))
    # No scaffold straddles two splits.
    owner = {}
    for name, index in first.items():
        for i in index.tolist():
            scaffold = mdata.murcko_scaffold(smiles[i])
            assert owner.setdefault(scaffold, name) == name
    assert len(first["train"]) <= 0.8 * len(smiles) and len(first["test"]) > 0


# ----------------------------------------------------------------------------- ZINC

def test_bundled_zinc_matches_the_npz_files():
    splits = load_zinc(source="bundled")
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1000, 500, 500]
    train = splits["train"]
    assert "not comparable" in train.note.lower()
    assert train._data.num_nodes == 23_083 and train._data.edge_index.size(1) == 49_692
    test_nodes = splits["val"]._data.num_nodes + splits["test"]._data.num_nodes
    test_edges = splits["val"]._data.edge_index.size(1) + splits["test"]._data.edge_index.size(1)
    assert (test_nodes, test_edges) == (23_117, 49_720)
    with np.load(_files.bundled_path("zinc_subset/test_graphs.npz")) as npz:
        assert float(splits["test"][0].y) == pytest.approx(float(npz["y"][500]))
    for graph in (train[0], train[999], splits["val"][3], splits["test"][499]):
        e = graph.edge_index.size(1)
        assert graph.x.dtype == torch.long and graph.x.shape == (graph.num_nodes, 1)
        assert int(graph.x.min()) >= 0 and int(graph.x.max()) <= 27
        assert graph.edge_attr.dtype == torch.long and graph.edge_attr.shape == (e, 1)
        assert torch.equal(graph.edge_type, graph.edge_attr.view(-1))
        assert set(graph.edge_type.unique().tolist()) <= {1, 2, 3}
        assert graph.y.dtype == torch.float32 and graph.y.shape == (1,)
        assert int(graph.edge_index.max()) < graph.num_nodes
        _assert_both_directions(graph.edge_index)
    assert len(mdata.zinc_atom_type_names()) == 28


def _write_benchmarking_gnns_raw(raw_dir, graphs_per_split: dict[str, list]) -> None:
    """ZINC raw files in the benchmarking-gnns format PyG reads (pickled dicts + index files)."""
    raw_dir.mkdir(parents=True)
    for split, graphs in graphs_per_split.items():
        molecules = []
        for graph in graphs:
            adjacency = torch.zeros(graph.num_nodes, graph.num_nodes, dtype=torch.long)
            adjacency[graph.edge_index[0], graph.edge_index[1]] = graph.edge_type
            molecules.append({"atom_type": graph.x.view(-1), "bond_type": adjacency,
                              "logP_SA_cycle_normalized": graph.y})
        with open(raw_dir / f"{split}.pickle", "wb") as f:
            pickle.dump(molecules, f)
        # The subset picks graphs by index; take every second one.
        (raw_dir / f"{split}.index").write_text(",".join(str(i) for i in range(0, len(graphs), 2)) + "\n")


def test_official_zinc_reads_local_raw_files_without_download(tmp_path, caplog):
    bundled = load_zinc(source="bundled")
    source = {"train": [bundled["train"][i] for i in range(6)],
              "val": [bundled["val"][i] for i in range(4)],
              "test": [bundled["test"][i] for i in range(4)]}
    _write_benchmarking_gnns_raw(tmp_path / "ZINC" / "raw", source)
    splits = load_zinc(root=tmp_path, source="auto")
    assert all(type(ds).__name__ == "OfflineZINC" for ds in splits.values())
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 2, 2]
    for position, original in ((0, source["train"][0]), (2, source["train"][4])):
        graph = splits["train"][position]
        assert graph.edge_attr.shape == (graph.edge_index.size(1), 1)
        assert torch.equal(graph.edge_type, graph.edge_attr.view(-1))
        assert torch.equal(graph.x, original.x) and torch.equal(graph.y, original.y)
        assert _edge_set(graph.edge_index) == _edge_set(original.edge_index)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError, match=r"train\.pickle.*test\.index"):
        load_zinc(root=empty, source="official")
    with caplog.at_level(logging.WARNING, logger="magnn.data.zinc"):
        fallback = load_zinc(root=empty, source="auto")
    assert type(fallback["train"]).__name__ == "BundledZINC"
    assert any("bundled" in record.getMessage() for record in caplog.records)


# ----------------------------------------------------------------------------- ogbn-proteins

def test_generated_folder_loads_through_ogb(proteins_root):
    folder = proteins_root / "ogbn_proteins"
    (folder / "RELEASE_v1.txt").unlink()   # ogb would now prompt on stdin; the guard answers
    dataset = OfflinePygNodePropPredDataset(name="ogbn-proteins", root=proteins_root)
    graph = dataset[0]
    assert graph.num_nodes == 200
    assert graph.edge_index.shape == (2, 3000) and graph.edge_attr.shape == (3000, 8)
    assert graph.edge_attr.dtype == torch.float32
    assert graph.y.shape == (200, 112) and graph.node_species.shape == (200, 1)
    split = dataset.get_idx_split()
    assert sum(len(v) for v in split.values()) == 200


def test_load_ogbn_proteins_contract_and_roundtrip(proteins_root):
    graph = load_ogbn_proteins(proteins_root)
    assert (proteins_root / "ogbn_proteins" / "RELEASE_v1.txt").exists()
    n, e = 200, 3000
    assert graph.x.dtype == torch.float32 and graph.x.shape == (n, 8)
    assert graph.species.dtype == torch.long and graph.species.shape == (n,)
    assert set(graph.species.tolist()) == set(range(8))
    assert graph.y.dtype == torch.float32 and graph.y.shape == (n, 112)
    assert graph.edge_attr.shape == (e, 8) and float(graph.edge_attr.min()) >= 0 and float(graph.edge_attr.max()) <= 1
    assert graph.edge_type.dtype == torch.long and graph.edge_type.shape == (e,) and int(graph.edge_type.abs().sum()) == 0
    _assert_both_directions(graph.edge_index)
    masks = torch.stack([graph.train_mask, graph.val_mask, graph.test_mask])
    assert torch.equal(masks.sum(0), torch.ones(n, dtype=torch.long))        # a partition
    for mask in masks:                                                        # species split
        assert len(set(graph.species[mask].tolist())) >= 1
    assert not set(graph.species[graph.train_mask].tolist()) & set(graph.species[graph.test_mask].tolist())
    # x = mean of incident edge features, recomputed by hand for a few nodes.
    for node in (0, 57, 199):
        incoming = graph.edge_index[1] == node
        assert torch.allclose(graph.x[node], graph.edge_attr[incoming].mean(0))
    # The writer and the in-memory generator produce the same graph.
    memory = synthetic_proteins_graph(num_nodes=200, num_edges_undirected=1500, seed=3)
    for key in ("x", "edge_index", "edge_attr", "edge_type", "species", "species_ids", "y",
                "train_mask", "val_mask", "test_mask"):
        assert torch.equal(graph[key], memory[key]), key
    # Cached second load (ogb's processed file) gives the same Data; the folder itself works as root.
    again = load_ogbn_proteins(proteins_root / "ogbn_proteins")
    assert torch.equal(again.edge_index, graph.edge_index) and torch.equal(again.y, graph.y)


def test_rocauc_helpers():
    generator = torch.Generator().manual_seed(0)
    y = (torch.rand(300, 112, generator=generator) < 0.3).float()
    assert evaluate_rocauc(y, y * 2 - 1) == pytest.approx(1.0)
    assert evaluate_rocauc(y, torch.randn(300, 112, generator=generator)) == pytest.approx(0.5, abs=0.05)
    tox = torch.tensor([[1.0, 0.0] * 6, [0.0, 1.0] * 6, [float("nan")] * 12, [1.0, 0.0] * 6])
    assert evaluate_rocauc(tox, torch.nan_to_num(tox, nan=0.5), dataset="tox21") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        evaluate_rocauc(y, y, dataset="zinc")


def test_missing_proteins_files_name_folder_and_files(tmp_path, proteins_root):
    with pytest.raises(MissingDataError) as info:
        load_ogbn_proteins(tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "ogbn_proteins") in message
    assert "edge.csv.gz" in message and "node-label.csv.gz" in message and "never downloads" in message

    (proteins_root / "ogbn_proteins" / "raw" / "node-label.csv.gz").unlink()
    with pytest.raises(MissingDataError, match="missing in .*ogbn_proteins: raw/node-label.csv.gz\\."):
        load_ogbn_proteins(proteins_root)


def test_truncated_gzip_is_a_clear_error(proteins_root):
    path = proteins_root / "ogbn_proteins" / "raw" / "edge-feat.csv.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptDataError, match="edge-feat.csv.gz.*truncated"):
        load_ogbn_proteins(proteins_root)
    assert not (proteins_root / "ogbn_proteins" / "processed" / "geometric_data_processed.pt").exists()


def test_row_count_mismatches_are_clear_errors(proteins_root):
    raw = proteins_root / "ogbn_proteins" / "raw"
    _write_gz_rows(raw / "num-edge-list.csv.gz", ["1501"])
    with pytest.raises(CorruptDataError, match="edge.csv.gz has 1500 rows.*1501"):
        load_ogbn_proteins(proteins_root)
    _write_gz_rows(raw / "num-edge-list.csv.gz", ["1500"])
    with gzip.open(raw / "node-label.csv.gz", "rt") as f:
        labels = f.read().splitlines()
    _write_gz_rows(raw / "node-label.csv.gz", labels[:-3])   # a valid gzip that lost rows
    with pytest.raises(CorruptDataError, match="node-label.csv.gz has 197 rows.*200"):
        load_ogbn_proteins(proteins_root)


def test_stale_processed_file_is_detected(proteins_root):
    load_ogbn_proteins(proteins_root)
    raw = proteins_root / "ogbn_proteins" / "raw"
    # Raw lists changed after processing: the cached Data no longer matches them.
    _write_gz_rows(raw / "num-node-list.csv.gz", ["201"])
    with pytest.raises(CorruptDataError, match="inconsistent.*delete"):
        load_ogbn_proteins(proteins_root)
    _write_gz_rows(raw / "num-node-list.csv.gz", ["200"])
    processed = proteins_root / "ogbn_proteins" / "processed" / "geometric_data_processed.pt"
    processed.write_bytes(processed.read_bytes()[:100])
    with pytest.raises(CorruptDataError, match="unreadable.*delete"):
        load_ogbn_proteins(proteins_root)


def test_check_proteins_raw_reports_sizes(proteins_root):
    assert check_proteins_raw(proteins_root / "ogbn_proteins") == (200, 1500)


# ----------------------------------------------------------------------------- synthetic generator

def test_synthetic_degrees_are_heavy_tailed_and_simple():
    graph = synthetic_proteins_graph(num_nodes=3000, num_edges_undirected=90_000, seed=1)
    src, dst = graph.edge_index
    assert not bool((src == dst).any())
    keys = torch.minimum(src, dst) * 3000 + torch.maximum(src, dst)
    assert keys.unique().numel() == 90_000                     # each undirected edge exactly once per direction
    degree = torch.bincount(dst, minlength=3000).float()
    mean = degree.mean().item()
    assert mean == pytest.approx(60.0)
    assert degree.min().item() == 1 and degree.max().item() >= 5 * mean
    assert int((degree <= 2).sum()) >= 30                      # leaves next to hubs
    # Same seed -> same graph; another seed -> another graph.
    assert torch.equal(synthetic_proteins_graph(3000, 90_000, seed=1).edge_index, graph.edge_index)
    assert not torch.equal(synthetic_proteins_graph(3000, 90_000, seed=2).edge_index, graph.edge_index)


def test_synthetic_argument_checks(tmp_path):
    with pytest.raises(ValueError):
        synthetic_proteins_graph(num_nodes=5, num_edges_undirected=4)
    with pytest.raises(ValueError):
        synthetic_proteins_graph(num_nodes=10, num_edges_undirected=46)
    dense = synthetic_proteins_graph(num_nodes=10, num_edges_undirected=45, seed=0)   # complete graph
    assert dense.edge_index.size(1) == 90
    write_ogb_proteins_raw(tmp_path, num_nodes=20, num_edges_undirected=30)
    with pytest.raises(FileExistsError):
        write_ogb_proteins_raw(tmp_path, num_nodes=20, num_edges_undirected=30)
    write_ogb_proteins_raw(tmp_path, num_nodes=20, num_edges_undirected=40, overwrite=True)
    assert check_proteins_raw(tmp_path / "ogbn_proteins") == (20, 40)


def test_csv_formatters_roundtrip_through_pandas(tmp_path):
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 200_000, (50, 3))
    ints[0] = [0, 9, 10]
    ints[1] = [100, 99_999, 1]
    path = tmp_path / "ints.csv"
    path.write_bytes(_csv_int_rows(ints))
    np.testing.assert_array_equal(pd.read_csv(path, header=None).to_numpy(), ints)
    thousandths = rng.integers(0, 1001, (40, 8))
    thousandths[0] = 0                                   # an all-zero row still parses as floats
    path.write_bytes(_csv_thousandths_rows(thousandths))
    parsed = pd.read_csv(path, header=None).to_numpy()
    assert parsed.dtype == np.float64
    np.testing.assert_array_equal(parsed.astype(np.float32), (thousandths / 1000.0).astype(np.float32))


# ----------------------------------------------------------------------------- load_dataset

def test_load_dataset_for_every_name(tmp_path, tox21_subset, proteins_root):
    _, csv = tox21_subset
    splits, info = load_dataset("tox21", root=tmp_path / "cache", csv_path=csv, max_graphs=7)
    assert isinstance(info, DatasetInfo) and info.name == "tox21"
    assert set(splits) == {"train", "val", "test"} and all(len(s) == 7 for s in splits.values())
    full, _ = load_dataset("tox21", root=tmp_path / "cache", csv_path=csv)
    assert splits["val"][3].mol_id == full["val"][3].mol_id          # first N, in order

    splits, info = load_dataset("zinc", root=tmp_path / "no_zinc", max_graphs=10)
    assert info.task == "graph_regression" and info.edge_type_names[1] == "SINGLE"
    assert [len(splits[s]) for s in ("train", "val", "test")] == [10, 10, 10]

    splits, info = load_dataset("ogbn-proteins", root=proteins_root)
    assert info.task == "node_multilabel" and info.num_tasks == 112 and info.num_species == 8
    assert splits["train"].edge_index is splits["test"].edge_index     # one graph, shared
    assert torch.equal(splits["val"].mask, splits["val"].val_mask)
    with pytest.raises(ValueError, match="max_graphs"):
        load_dataset("ogbn-proteins", root=proteins_root, max_graphs=3)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("cora")
