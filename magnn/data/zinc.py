"""ZINC: PyG's ZINC-12k from local raw files, or the bundled real val/test subset graphs.

Both sources give the same Data layout: `x` long [N, 1] (atom type 0..27),
`edge_index` long [2, E] (both directions), `edge_attr` long [E, 1] and
`edge_type` long [E] (bond type 1 = single, 2 = double, 3 = triple;
Kekulé form, no aromatic type), `y` float [1] (penalized logP, normalised).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.datasets import ZINC as PygZINC

from ._files import (CorruptDataError, MissingDataError, UntrustedFileError, bundled_path, default_root,
                     load_tensor_pickle, weights_only_loads)
from .info import DatasetInfo

__all__ = [
    "ZINC_INFO",
    "ZINC_BOND_TYPE_NAMES",
    "BUNDLED_ZINC_NOTE",
    "BundledZINC",
    "OfflineZINC",
    "zinc_atom_type_names",
    "zinc_root_has_raw_files",
    "load_zinc",
]

logger = logging.getLogger(__name__)

# Index = bond type value (benchmarking-gnns bond_dict); 0 never occurs on an edge.
ZINC_BOND_TYPE_NAMES = ("NONE", "SINGLE", "DOUBLE", "TRIPLE")

ZINC_INFO = DatasetInfo(
    name="zinc",
    task="graph_regression",
    num_tasks=1,
    node_features="zinc_atom",
    edge_features="zinc_bond",
    edge_type_names=ZINC_BOND_TYPE_NAMES,
)

ZINC_NUM_ATOM_TYPES = 28  # atom types 0..27 (the models embed that many); bonds 1..3 (ZINC_BOND_TYPE_NAMES)
ZINC_RAW_FILES = ("train.pickle", "val.pickle", "test.pickle", "train.index", "val.index", "test.index")

BUNDLED_ZINC_NOTE = (
    "Bundled offline ZINC: train = the official ZINC-12k validation subset (1,000 graphs), "
    "val = the first 500 and test = the last 500 graphs of the official ZINC-12k test subset. "
    "The official 10k training subset is not bundled, so results on this data are NOT "
    "comparable to published ZINC-12k numbers.")

# Bundled split -> (npz file, slice of its graphs).
_BUNDLED_SPLITS = {
    "train": ("zinc_subset/val_graphs.npz", slice(0, 1000)),
    "val": ("zinc_subset/test_graphs.npz", slice(0, 500)),
    "test": ("zinc_subset/test_graphs.npz", slice(500, 1000)),
}


def zinc_atom_type_names() -> tuple[str, ...]:
    """The 28 ZINC atom-type strings (index = atom type), e.g. 'C', 'O -', 'N H1 +'."""
    with open(bundled_path("zinc_subset/atom_types.json")) as f:
        return tuple(json.load(f)["idx2word"])


def _graphs_from_npz(path: Path, graphs: slice) -> list[Data]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            x, edge_index, edge_attr, y, node_ptr, edge_ptr = (
                arrays[k] for k in ("x", "edge_index", "edge_attr", "y", "node_ptr", "edge_ptr"))
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptDataError(f"cannot read ZINC graphs from {path}: {exc}") from exc
    if not (len(node_ptr) == len(edge_ptr) == len(y) + 1 and node_ptr[-1] == len(x)
            and edge_ptr[-1] == edge_index.shape[1] == len(edge_attr)):
        raise CorruptDataError(f"{path}: array sizes disagree with node_ptr/edge_ptr")
    x_all = torch.from_numpy(x).long()
    edge_index_all = torch.from_numpy(edge_index).long()
    edge_attr_all = torch.from_numpy(edge_attr).long()
    y_all = torch.from_numpy(y).float()
    data_list = []
    for g in range(len(y))[graphs]:
        n0, n1 = int(node_ptr[g]), int(node_ptr[g + 1])
        e0, e1 = int(edge_ptr[g]), int(edge_ptr[g + 1])
        bond = edge_attr_all[e0:e1]
        data_list.append(Data(
            x=x_all[n0:n1].view(-1, 1).clone(),
            edge_index=edge_index_all[:, e0:e1].clone(),  # already local to the graph
            edge_attr=bond.view(-1, 1).clone(),
            edge_type=bond.clone(),
            y=y_all[g:g + 1].clone(),
            num_nodes=n1 - n0,
        ))
    return data_list


class BundledZINC(InMemoryDataset):
    """One split of the bundled offline ZINC (real ZINC-12k val/test subset graphs).

    split: "train" (official val subset, 1,000 graphs), "val" (official test
    subset graphs 0..499) or "test" (official test subset graphs 500..999).
    Results on it are not comparable to ZINC-12k results: see `note`.
    Built in memory from the bundled npz files (no cache needed).
    """

    info = ZINC_INFO
    note = BUNDLED_ZINC_NOTE

    def __init__(self, split: str = "train", transform: Callable | None = None) -> None:
        if split not in _BUNDLED_SPLITS:
            raise ValueError(f"split must be one of {sorted(_BUNDLED_SPLITS)}, got {split!r}")
        super().__init__(None, transform)
        file_name, graphs = _BUNDLED_SPLITS[split]
        self.split = split
        self.data, self.slices = self.collate(_graphs_from_npz(bundled_path(file_name), graphs))


class _MagnnLayout:
    """PyG stores the bond type as edge_attr [E]; magnn's contract is [E, 1] plus edge_type [E].

    A class rather than a closure so datasets stay picklable for DataLoader workers.
    """

    def __init__(self, then: Callable | None = None) -> None:
        self.then = then

    def __call__(self, data: Data) -> Data:
        bond = data.edge_attr.view(-1)
        data.edge_attr = bond.view(-1, 1)
        data.edge_type = bond
        return data if self.then is None else self.then(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(then={self.then!r})"


def zinc_root_has_raw_files(root: str | os.PathLike) -> bool:
    raw = Path(root) / "raw"
    return all((raw / name).is_file() for name in ZINC_RAW_FILES)


def _missing_zinc_message(zinc_root: Path) -> str:
    raw = zinc_root / "raw"
    missing = [name for name in ZINC_RAW_FILES if not (raw / name).is_file()]
    return (
        f"ZINC raw files missing in {raw}: {', '.join(missing)}. magnn never downloads data. "
        f"Put the benchmarking-gnns files there: train.pickle, val.pickle, test.pickle (from "
        f"molecules.zip, {PygZINC.url}) and train.index, val.index, test.index "
        "(github.com/graphdeeplearning/benchmarking-gnns, data/molecules/). "
        "Without them, use the bundled offline subset: load_zinc(source='bundled').")


class OfflineZINC(PygZINC):
    """PyG's `ZINC` that raises instead of downloading when raw files are absent.

    Data come in magnn's layout (edge_attr [E, 1], edge_type [E]) through a
    transform, so the processed files stay those of plain PyG.

    No code from files: the raw pickles are read as tensors and plain data only (a pickle that
    names anything else is refused, UntrustedFileError), and the processed cache with torch.load's
    weights_only=True, PyG's own pre_transform.pt / pre_filter.pt checks included; allow_pickle=True
    (or MAGNN_ALLOW_PICKLE=1) lifts both for files the user trusts. Every load checks the values the
    models index with: atom types 0..27, bond types 1..3, finite labels (CorruptDataError naming the
    split, the graph and its molecule in the raw pickle).
    """

    info = ZINC_INFO
    note = "Official ZINC (benchmarking-gnns split) read by torch_geometric.datasets.ZINC."

    def __init__(self, root: str | os.PathLike, subset: bool = True, split: str = "train",
                 transform: Callable | None = None, *, allow_pickle: bool | None = None, **kwargs) -> None:
        self.allow_pickle = allow_pickle
        with weights_only_loads(allow_pickle):
            super().__init__(str(root), subset=subset, split=split,
                             transform=_MagnnLayout(transform), **kwargs)
        self.split = split
        _check_zinc_values(self, Path(self.raw_dir), split, Path(self.processed_dir))

    def download(self) -> None:
        raise MissingDataError(_missing_zinc_message(Path(self.root)))

    def process(self) -> None:
        raw = Path(self.raw_dir)
        if self.subset:
            for split in ("train", "val", "test"):
                _check_index_file(raw / f"{split}.index")
        failure = None
        try:
            for split in ("train", "val", "test"):
                self.save(self._read_split(raw, split), os.path.join(self.processed_dir, f"{split}.pt"))
        except UntrustedFileError:
            raise
        except Exception as exc:  # pickles of anything else fail in many ways; the remedy is the same
            failure = f"{type(exc).__name__}: {exc}"
        # raised here, not in the except block: the failed frame is released first
        if failure is not None and failure.startswith("IndexError") and self.subset:
            failure = _index_out_of_range(raw, self.allow_pickle) or failure
        if failure is not None:
            raise CorruptDataError(
                f"ZINC raw files in {raw} cannot be processed ({failure}); they must be the "
                "benchmarking-gnns files (train/val/test.pickle: lists of molecules with atom_type, bond_type and "
                "logP_SA_cycle_normalized; train/val/test.index: the subset's indices). Replace the damaged files, "
                f"or move {raw.parent} away to use the bundled subset")

    def _read_split(self, raw: Path, split: str) -> list[Data]:
        """One split's graphs, as PyG's ZINC builds them, from a pickle read as tensors only."""
        molecules = load_tensor_pickle(raw / f"{split}.pickle", self.allow_pickle)
        indices = _subset_indices(raw, split) if self.subset else range(len(molecules))
        graphs = []
        for index in indices:
            molecule = molecules[index]
            adjacency = molecule["bond_type"]
            edge_index = adjacency.nonzero(as_tuple=False).t().contiguous()
            data = Data(x=molecule["atom_type"].to(torch.long).view(-1, 1), edge_index=edge_index,
                        edge_attr=adjacency[edge_index[0], edge_index[1]].to(torch.long),
                        y=molecule["logP_SA_cycle_normalized"].to(torch.float))
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            graphs.append(data)
        return graphs


def _subset_indices(raw: Path, split: str) -> list[int]:
    # the file's last character is its newline (_check_index_file)
    return [int(part) for part in (raw / f"{split}.index").read_text()[:-1].split(",")]


def _check_zinc_values(dataset: InMemoryDataset, raw: Path, split: str, processed: Path) -> None:
    """CorruptDataError naming the first graph whose atom type, bond type or label the models cannot take
    (an embedding index out of range, a non-finite target), with its molecule in the raw pickle."""
    data, slices = dataset._data, dataset.slices
    checks = (
        ("x", "atom type", lambda v: (v < 0) | (v >= ZINC_NUM_ATOM_TYPES), f"outside 0..{ZINC_NUM_ATOM_TYPES - 1}"),
        ("edge_attr", "bond type", lambda v: (v < 1) | (v >= len(ZINC_BOND_TYPE_NAMES)),
         f"outside 1..{len(ZINC_BOND_TYPE_NAMES) - 1} (single, double, triple)"),
        ("y", "label (logP_SA_cycle_normalized)", lambda v: ~torch.isfinite(v), "not finite"),
    )
    for key, what, is_bad, why in checks:
        values = getattr(data, key, None)
        if values is None or key not in slices or values.numel() == 0:
            continue
        flat = values.reshape(values.shape[0], -1)
        bad = is_bad(flat.float() if key == "y" else flat).any(dim=1)
        if not bool(bad.any()):
            continue
        row = int(bad.nonzero()[0, 0])
        graph = int(torch.searchsorted(slices[key], torch.tensor(row), right=True)) - 1
        value = flat[row].tolist()
        value = value[0] if len(value) == 1 else value
        try:
            molecule = _subset_indices(raw, split)[graph] if dataset.subset else graph
            where = f"molecule {molecule} of {raw / (split + '.pickle')}"
        except (OSError, ValueError, IndexError):
            where = f"in {raw / (split + '.pickle')}"
        raise CorruptDataError(
            f"ZINC {split} graph {graph} ({where}) has {what} {value}, {why}: the file is damaged or not "
            f"benchmarking-gnns ZINC. Fix or remove that molecule, then delete {processed} so the cache is "
            "rebuilt (or move the raw folder away to use the bundled subset)")


def _index_out_of_range(raw: Path, allow_pickle: bool | None = None) -> str | None:
    """After an IndexError: which index file points past the end of its pickle (None if none found)."""
    for split in ("train", "val", "test"):
        try:
            count = len(load_tensor_pickle(raw / f"{split}.pickle", allow_pickle))
            largest = max(int(part) for part in (raw / f"{split}.index").read_text()[:-1].split(","))
        except Exception:  # unreadable here too: the generic message stands
            continue
        if largest >= count:
            return f"{split}.index has index {largest}, but {split}.pickle holds {count} molecules"
    return None


def _check_index_file(path: Path) -> None:
    """A ZINC subset index file: comma-separated indices >= 0, no repeats, ending in a newline
    (PyG drops the file's last character, so without the newline the last index loses a digit)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"cannot read the ZINC index file {path} ({type(exc).__name__}: {exc})") from exc
    if not text.endswith("\n"):
        raise CorruptDataError(f"ZINC index file {path} is empty or does not end with a newline; it must hold "
                               "comma-separated graph indices followed by a newline (benchmarking-gnns format)")
    try:
        indices = [int(part) for part in text[:-1].split(",")]
    except ValueError:
        raise CorruptDataError(f"ZINC index file {path} holds something other than comma-separated integers "
                               f"(starts {text[:40]!r}); replace it with the benchmarking-gnns file") from None
    if min(indices) < 0:
        raise CorruptDataError(f"ZINC index file {path} has a negative index ({min(indices)}); "
                               "indices count graphs from 0")
    if len(set(indices)) != len(indices):
        raise CorruptDataError(f"ZINC index file {path} lists a graph twice; replace it with the benchmarking-gnns file")


def _official_zinc_root(root: Path) -> Path:
    # Accept both the PyG ZINC root itself and a shared data root holding ZINC/.
    if (root / "raw").is_dir() and not (root / "ZINC").is_dir():
        return root
    return root / "ZINC"


def load_zinc(root: str | os.PathLike | None = None, source: str = "auto",
              transform: Callable | None = None, *, allow_pickle: bool | None = None) -> dict[str, InMemoryDataset]:
    """ZINC splits {"train", "val", "test"}.

    source:
      "official": PyG ZINC-12k from `root/ZINC/raw/` (or `root/raw/`), never downloaded;
        raises MissingDataError naming the missing files when they are absent.
      "bundled": the bundled real val/test subset graphs (see BUNDLED_ZINC_NOTE).
      "auto" (default): official when its raw files are present, else bundled
        (with a logged warning that says where the official files would go).
    root: shared data root (default: magnn.data.default_root()).
    allow_pickle: read the official raw pickles and PyG's processed cache with plain pickle
      (code in them runs). Default: only tensors and plain data are read from them, anything else is
      refused with UntrustedFileError; MAGNN_ALLOW_PICKLE=1 opts in too.
    """
    if source not in ("auto", "official", "bundled"):
        raise ValueError(f"source must be 'auto', 'official' or 'bundled', got {source!r}")
    zinc_root = _official_zinc_root(Path(root).expanduser() if root is not None else default_root())
    if source == "auto":
        if zinc_root_has_raw_files(zinc_root):
            source = "official"
        else:
            logger.warning("official ZINC raw files not found in %s; using the bundled offline subset. %s",
                           zinc_root / "raw", BUNDLED_ZINC_NOTE)
            source = "bundled"
    if source == "bundled":
        return {split: BundledZINC(split, transform=transform) for split in _BUNDLED_SPLITS}
    if not zinc_root_has_raw_files(zinc_root):
        raise MissingDataError(_missing_zinc_message(zinc_root))
    try:
        return {split: OfflineZINC(zinc_root, subset=True, split=split, transform=transform, allow_pickle=allow_pickle)
                for split in ("train", "val", "test")}
    except (MissingDataError, CorruptDataError):
        raise
    except Exception as exc:  # raw files processed fine earlier: PyG's processed cache is what fails
        processed = zinc_root / "subset" / "processed"
        raise CorruptDataError(
            f"the processed ZINC cache in {processed} is unreadable ({type(exc).__name__}: {exc}); "
            f"delete {processed} to rebuild it from the raw files") from exc
