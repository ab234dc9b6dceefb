"""Datasets: TOX21, ZINC and ogbn-proteins in PyG form, plus synthetic ogb-format graphs.

Nothing here downloads: data come from files shipped in the package
(TOX21 CSV, ZINC val/test subset graphs) or from local folders, and missing
files raise MissingDataError with the folder and the file names to put there.
"""
from __future__ import annotations

import copy
import os
from typing import Any

from torch_geometric.data import Data, Dataset

from ..core.constants import DATASETS as DATASET_NAMES  # the names load_dataset takes (defined once, in core)
from ..core.constants import SPLITS
from ._files import (ALLOW_PICKLE_ENV, CorruptDataError, MissingDataError, UntrustedFileError, bundled_path,
                     default_root)
from .info import DatasetInfo
from .proteins import (build_proteins_data, check_node_graph, check_proteins_raw, check_proteins_splits,
                       evaluate_rocauc, load_ogbn_proteins, proteins_dataset_dir, proteins_info)
from .synthetic import synthetic_proteins_graph, write_ogb_proteins_raw
from .tox21 import TOX21, TOX21_INFO, TOX21_TASKS, murcko_scaffold, scaffold_split
from .zinc import BUNDLED_ZINC_NOTE, ZINC_INFO, BundledZINC, OfflineZINC, load_zinc, zinc_atom_type_names

__all__ = [
    "DatasetInfo",
    "load_dataset",
    "DATASET_NAMES",
    "MissingDataError",
    "CorruptDataError",
    "UntrustedFileError",
    "ALLOW_PICKLE_ENV",
    "default_root",
    "bundled_path",
    "TOX21",
    "TOX21_INFO",
    "TOX21_TASKS",
    "scaffold_split",
    "murcko_scaffold",
    "ZINC_INFO",
    "BundledZINC",
    "OfflineZINC",
    "BUNDLED_ZINC_NOTE",
    "load_zinc",
    "zinc_atom_type_names",
    "load_ogbn_proteins",
    "proteins_dataset_dir",
    "proteins_info",
    "build_proteins_data",
    "check_proteins_raw",
    "check_proteins_splits",
    "check_node_graph",
    "evaluate_rocauc",
    "write_ogb_proteins_raw",
    "synthetic_proteins_graph",
]


def _first(dataset: Dataset, max_graphs: int | None) -> Dataset:
    if max_graphs is None:
        return dataset
    if max_graphs < 1:
        raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
    return dataset[:max_graphs]


def load_dataset(name: str, root: str | os.PathLike | None = None, *, max_graphs: int | None = None,
                 **kwargs: Any) -> tuple[dict[str, Dataset | Data], DatasetInfo]:
    """Load a dataset by name; return ({"train", "val", "test"} splits, DatasetInfo).

    root: the shared data root (default `default_root()`, i.e. ~/.cache/magnn
    or $MAGNN_DATA_ROOT). Layout under it: `tox21/` (processed cache),
    `ZINC/raw/` (official ZINC files, optional), `ogbn_proteins/` (ogb's folder).

    - "tox21": splits are PyG datasets (scaffold split of TOX21); kwargs go to
      TOX21 (e.g. csv_path=..., force_reload=True). A user's own CSV in the MoleculeNet
      layout: csv_path=FILE, or put it at `root/tox21.csv` (or .csv.gz), used when present.
    - "zinc": splits are PyG datasets; kwargs go to load_zinc (source="auto" |
      "official" | "bundled"). The bundled fallback is not comparable to
      ZINC-12k results (BUNDLED_ZINC_NOTE).

    Nothing is unpickled beyond tensors and plain data (raw ZINC pickles, processed caches):
    a file that needs more raises UntrustedFileError naming it, unless allow_pickle=True
    (tox21, zinc) or MAGNN_ALLOW_PICKLE=1 says the user trusts it. Corrupt entries (an atom
    or bond type the models cannot embed, a non-finite label) raise CorruptDataError naming
    the file and the graph or row.
    - "ogbn-proteins": one full graph; every split is a shallow copy of it
      (tensors shared) whose `mask` (bool [N]) selects that split's nodes;
      train_mask/val_mask/test_mask are there too. max_graphs does not apply.

    max_graphs: keep the first N graphs of each molecule split (deterministic).
    """
    key = name.lower()
    if root is not None and os.path.exists(os.path.expanduser(root)) and not os.path.isdir(os.path.expanduser(root)):
        raise MissingDataError(f"data root {root} is a file, not a folder; pass the folder that holds the dataset "
                               "files (or nothing, for the default cache)")
    if key == "tox21":
        dataset = TOX21(root=root, **kwargs)
        splits = {split: _first(dataset[index], max_graphs) for split, index in dataset.split_idx.items()}
        return splits, TOX21_INFO
    if key == "zinc":
        splits = {split: _first(ds, max_graphs) for split, ds in load_zinc(root=root, **kwargs).items()}
        return splits, ZINC_INFO
    if key in ("ogbn-proteins", "ogbn_proteins", "proteins"):
        if kwargs:
            raise TypeError(f"unexpected arguments for ogbn-proteins: {sorted(kwargs)}")
        if max_graphs is not None:
            raise ValueError("max_graphs applies to molecule datasets, not to the single ogbn-proteins graph")
        graph = load_ogbn_proteins(root)
        splits = {}
        for split in SPLITS:
            view = copy.copy(graph)
            view.mask = graph[f"{split}_mask"]
            splits[split] = view
        return splits, proteins_info(int(graph.species_ids.numel()))
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASET_NAMES}")
