"""ogbn-proteins through ogb's own PygNodePropPredDataset, from a local folder only.

ogb reads `root/ogbn_proteins/` (raw CSVs -> processed/geometric_data_processed.pt).
magnn adds what ogb leaves to the user: it never downloads (a clear error
names the folder and the files instead), never prompts on stdin, checks the
raw files for truncation and row-count mismatches before ogb parses them,
loads ogb's processed file under torch >= 2.6, and turns ogb's Data into
magnn's layout (see `build_proteins_data`).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from ..core.errors import missing_extra

try:  # the study's extras
    import pandas as pd
    from ogb.nodeproppred import PygNodePropPredDataset
except ImportError as _error:
    raise missing_extra(_error, "magnn.data (ogbn-proteins)") from _error

from ._files import CorruptDataError, MissingDataError, default_root, scan_gzip_csv, weights_only_loads
from .info import DatasetInfo

__all__ = [
    "PROTEINS_NUM_TASKS",
    "PROTEINS_RAW_FILES",
    "PROTEINS_SPLIT_FILES",
    "proteins_dataset_dir",
    "proteins_info",
    "build_proteins_data",
    "check_proteins_raw",
    "check_proteins_splits",
    "check_node_graph",
    "OfflinePygNodePropPredDataset",
    "load_ogbn_proteins",
    "evaluate_rocauc",
]

PROTEINS_NUM_TASKS = 112
PROTEINS_NUM_EDGE_FEATURES = 8
PROTEINS_URL = "http://snap.stanford.edu/ogb/data/nodeproppred/proteins.zip"

# Paths relative to the dataset folder, with the number of CSV columns each must have.
PROTEINS_RAW_FILES = {
    "raw/edge.csv.gz": 2,
    "raw/edge-feat.csv.gz": PROTEINS_NUM_EDGE_FEATURES,
    "raw/node-label.csv.gz": PROTEINS_NUM_TASKS,
    "raw/node_species.csv.gz": 1,
    "raw/num-node-list.csv.gz": 1,
    "raw/num-edge-list.csv.gz": 1,
}
PROTEINS_SPLIT_FILES = ("split/species/train.csv.gz", "split/species/valid.csv.gz",
                        "split/species/test.csv.gz")
_PROCESSED_FILE = "processed/geometric_data_processed.pt"


def proteins_dataset_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder ogb uses under `root`: `ogbn_proteins_pyg` if present, else `ogbn_proteins`.

    `root` may also be that folder itself.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    if root.name in ("ogbn_proteins", "ogbn_proteins_pyg") and (root / "raw").is_dir():
        return root
    pyg_folder = root / "ogbn_proteins_pyg"  # PygNodePropPredDataset's name for it
    return pyg_folder if pyg_folder.is_dir() else root / "ogbn_proteins"


def proteins_info(num_species: int = 8) -> DatasetInfo:
    return DatasetInfo(
        name="ogbn-proteins",
        task="node_multilabel",
        num_tasks=PROTEINS_NUM_TASKS,
        node_features="proteins",
        edge_features="proteins",
        edge_type_names=("interaction",),
        num_species=num_species,
    )


def build_proteins_data(num_nodes: int, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                        node_species: torch.Tensor, y: torch.Tensor,
                        split_idx: dict[str, torch.Tensor]) -> Data:
    """magnn's ogbn-proteins Data from ogb's fields (tensors are shared, not copied).

    Fields: `edge_index` long [2, E] (both directions), `edge_attr` float [E, 8],
    `edge_type` long [E] of zeros (a stride-0 view: no memory at 79M edges;
    call .contiguous() before writing to it), `x` float [N, 8] = mean of the
    features of the node's incoming edges (0 for isolated nodes), `species`
    long [N] in 0..S-1 (sorted taxonomy ids), `species_ids` long [S] (the
    taxonomy id of each class), `y` float [N, 112], `train_mask`, `val_mask`,
    `test_mask` bool [N] (ogb's species split; "valid" is called "val").
    """
    edge_attr = edge_attr.to(torch.float32)
    species_ids, species = torch.unique(node_species.view(-1), sorted=True, return_inverse=True)
    x = scatter(edge_attr, edge_index[1], dim=0, dim_size=num_nodes, reduce="mean")
    masks = {}
    for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
        index = split_idx[theirs] if theirs in split_idx else split_idx[ours]
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        mask[index] = True
        masks[f"{ours}_mask"] = mask
    return Data(
        x=x,
        edge_index=edge_index,
        edge_attr=edge_attr,
        edge_type=torch.zeros(1, dtype=torch.long).expand(edge_index.size(1)),
        species=species,
        species_ids=species_ids,
        y=y.to(torch.float32),
        num_nodes=num_nodes,
        **masks,
    )


def _missing_message(folder: Path, missing: list[str]) -> str:
    return (
        f"ogbn-proteins files missing in {folder}: {', '.join(missing)}. magnn never downloads data. "
        f"On a machine with network, download {PROTEINS_URL} (or run ogb's "
        "PygNodePropPredDataset('ogbn-proteins') once), unzip it and put its contents so that "
        f"{folder / 'raw' / 'edge.csv.gz'} and {folder / 'split' / 'species' / 'train.csv.gz'} exist. "
        f"The folder needs: {', '.join([*PROTEINS_RAW_FILES, *PROTEINS_SPLIT_FILES])}. "
        "For a synthetic stand-in, see magnn.data.write_ogb_proteins_raw.")


def _raw_file(folder: Path, name: str) -> Path:
    path = folder / name
    # ogb renames raw/species.csv.gz to node_species.csv.gz itself; accept either.
    if name == "raw/node_species.csv.gz" and not path.is_file():
        alias = folder / "raw" / "species.csv.gz"
        if alias.is_file():
            return alias
    return path


def _read_count_list(path: Path) -> list[int]:
    try:
        values = pd.read_csv(path, compression="gzip", header=None).to_numpy()
    except (EOFError, OSError, zlib.error, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CorruptDataError(f"cannot read {path} ({type(exc).__name__}: {exc})") from exc
    if values.ndim != 2 or values.shape[1] != 1 or not np.issubdtype(values.dtype, np.integer):
        raise CorruptDataError(f"{path} must hold one integer per row")
    return [int(v) for v in values[:, 0]]


def check_proteins_raw(folder: str | os.PathLike, deep: bool = True) -> tuple[int, int]:
    """Check an ogbn-proteins folder; return (num_nodes, num_undirected_edges).

    Always: every raw and split file exists (MissingDataError listing the
    missing ones otherwise) and num-node-list / num-edge-list are readable.
    deep=True also decompresses every file to its end (truncated gzip ->
    CorruptDataError) and checks row and column counts against those lists.
    Deep checking the full dataset reads ~2 GB of CSV text: done once, before
    ogb processes the files.
    """
    folder = Path(folder)
    names = [*PROTEINS_RAW_FILES, *PROTEINS_SPLIT_FILES]
    missing = [name for name in names if not _raw_file(folder, name).is_file()]
    if missing:
        raise MissingDataError(_missing_message(folder, missing))
    num_node_list = _read_count_list(_raw_file(folder, "raw/num-node-list.csv.gz"))
    num_edge_list = _read_count_list(_raw_file(folder, "raw/num-edge-list.csv.gz"))
    if len(num_node_list) != 1 or len(num_edge_list) != 1:
        raise CorruptDataError(f"{folder / 'raw'}: num-node-list and num-edge-list must describe one graph")
    num_nodes, num_edges = num_node_list[0], num_edge_list[0]
    if not deep:
        return num_nodes, num_edges
    expected_rows = {
        "raw/edge.csv.gz": num_edges,
        "raw/edge-feat.csv.gz": num_edges,
        "raw/node-label.csv.gz": num_nodes,
        "raw/node_species.csv.gz": num_nodes,
    }
    for name, columns in PROTEINS_RAW_FILES.items():
        path = _raw_file(folder, name)
        rows, found_columns = scan_gzip_csv(path)
        if name in expected_rows and rows != expected_rows[name]:
            raise CorruptDataError(
                f"{path} has {rows} rows, but num-node-list/num-edge-list say {expected_rows[name]}: "
                "the file is truncated or does not belong to this graph")
        if rows and found_columns != columns:
            raise CorruptDataError(f"{path} has {found_columns} columns, expected {columns}")
    for name in PROTEINS_SPLIT_FILES:
        rows, _ = scan_gzip_csv(folder / name)
        if rows == 0:
            raise CorruptDataError(f"{folder / name} is empty: a split lists the node ids of its nodes, one per "
                                   "row; replace the file with the dataset's own")
    return num_nodes, num_edges


def check_proteins_splits(folder: str | os.PathLike, num_nodes: int) -> None:
    """Every split file holds integer node ids in [0, num_nodes): CorruptDataError naming the
    file, the offending id and what to do otherwise (ogb would index out of range later)."""
    folder = Path(folder)
    for name in PROTEINS_SPLIT_FILES:
        path = folder / name
        index = np.asarray(_read_count_list(path), dtype=np.int64)
        bad = index[(index < 0) | (index >= num_nodes)]
        if bad.size:
            raise CorruptDataError(
                f"{path} lists node id {int(bad[0])} ({bad.size} id(s) in all) outside [0, num_nodes) = "
                f"[0, {num_nodes}) (num-node-list): the split does not belong to this graph; "
                f"replace it with the split of the same ogbn-proteins release and delete {folder / 'processed'}")


@contextlib.contextmanager
def _no_stdin_prompt() -> Iterator[None]:
    """ogb asks 'Will you update the dataset now? (y/N)' when RELEASE_v1.txt is
    absent; answer 'N' (keep the local files) instead of blocking on stdin."""
    import ogb.nodeproppred.dataset_pyg as ogb_module

    # A module global shadows the builtin inside ogb's module only.
    previous = ogb_module.__dict__.get("input")
    ogb_module.input = lambda prompt="": "N"
    try:
        yield
    finally:
        if previous is None:
            del ogb_module.input
        else:
            ogb_module.input = previous


@contextlib.contextmanager
def _ogb_torch_load() -> Iterator[None]:
    """ogb calls torch.load(path) on its own processed file; torch >= 2.6 defaults
    to weights_only=True, which rejects PyG's storage classes. Allow exactly
    those classes, for the duration of the call only."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import (BaseStorage, EdgeStorage, GlobalStorage,
                                              NodeStorage)

    needed = [Data, DataEdgeAttr, DataTensorAttr, BaseStorage, GlobalStorage, NodeStorage,
              EdgeStorage]
    # The context removes its classes on exit, so pass only those not registered
    # already (PyG registers Data globally; removing it would break later loads).
    registered = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals([c for c in needed if c not in registered]):
        yield


class OfflinePygNodePropPredDataset(PygNodePropPredDataset):
    """ogb's `PygNodePropPredDataset` that raises instead of downloading, never
    prompts on stdin, and loads its processed file under torch >= 2.6.

    ogb's own reading and processing code runs unchanged.
    """

    def __init__(self, name: str, root: str | os.PathLike, **kwargs) -> None:
        # weights only: ogb's processed file and PyG's pre_transform.pt / pre_filter.pt checks run no code
        with _no_stdin_prompt(), _ogb_torch_load(), weights_only_loads():
            super().__init__(name=name, root=str(root), **kwargs)

    def get_idx_split(self, split_type: str | None = None) -> dict[str, torch.Tensor]:
        with warnings.catch_warnings():
            # ogb wraps pandas' read-only arrays in tensors; the indices are only read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return super().get_idx_split(split_type)

    def download(self) -> None:  # ogb would fetch a zip from the internet here
        raise MissingDataError(_missing_message(Path(self.root), list(self.raw_file_names)))


def load_ogbn_proteins(root: str | os.PathLike | None = None) -> Data:
    """ogbn-proteins from `root/ogbn_proteins/` (see proteins_dataset_dir) in magnn's layout.

    Raw files missing -> MissingDataError naming the folder and files (no
    download, no prompt). First load: the raw files are checked end to end
    (truncation, row counts) and processed by ogb; later loads read ogb's
    processed file and re-check its shapes against num-node-list/num-edge-list.
    Returns build_proteins_data's Data.
    """
    folder = proteins_dataset_dir(root)
    if not folder.is_dir():
        raise MissingDataError(_missing_message(folder, [*PROTEINS_RAW_FILES, *PROTEINS_SPLIT_FILES]))
    processed = folder / _PROCESSED_FILE
    needs_processing = not processed.is_file()
    num_nodes, num_edges = check_proteins_raw(folder, deep=needs_processing)
    check_proteins_splits(folder, num_nodes)
    release = folder / "RELEASE_v1.txt"
    if not release.exists():
        with contextlib.suppress(OSError):  # read-only folder: the prompt guard answers for us
            release.write_text("ogbn-proteins raw files checked by magnn\n")

    try:
        dataset = OfflinePygNodePropPredDataset(name="ogbn-proteins", root=folder.parent)
        split_idx = dataset.get_idx_split()
    except (MissingDataError, CorruptDataError):
        raise
    except (RuntimeError, EOFError, OSError, ValueError, zlib.error, pickle.UnpicklingError,
            pd.errors.ParserError) as exc:
        if needs_processing:
            raise CorruptDataError(f"ogb could not process the raw files in {folder}: {exc}") from exc
        raise CorruptDataError(
            f"ogb's processed file {processed} is unreadable ({type(exc).__name__}: {exc}); "
            f"delete {processed.parent} to rebuild it from the raw files") from exc
    graph = dataset[0]

    problems = []
    if graph.num_nodes != num_nodes:
        problems.append(f"{graph.num_nodes} nodes, num-node-list says {num_nodes}")
    if graph.edge_index.size(1) != 2 * num_edges:
        problems.append(f"{graph.edge_index.size(1)} directed edges, expected 2 x {num_edges}")
    if graph.edge_attr is None or tuple(graph.edge_attr.shape) != (2 * num_edges, PROTEINS_NUM_EDGE_FEATURES):
        problems.append(f"edge_attr shape {None if graph.edge_attr is None else tuple(graph.edge_attr.shape)}")
    if tuple(graph.y.shape) != (num_nodes, PROTEINS_NUM_TASKS):
        problems.append(f"label shape {tuple(graph.y.shape)}")
    elif not bool(((graph.y == 0) | (graph.y == 1)).all()):
        problems.append("labels other than 0/1")
    if graph.node_species.numel() != num_nodes:
        problems.append(f"{graph.node_species.numel()} species rows")
    if graph.edge_index.numel() and (int(graph.edge_index.min()) < 0 or int(graph.edge_index.max()) >= num_nodes):
        problems.append("edge indices outside [0, num_nodes)")
    owner = torch.full((num_nodes,), -1, dtype=torch.long)
    for position, (name, index) in enumerate(split_idx.items()):
        if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= num_nodes:
            problems.append(f"split '{name}' is empty or indexes outside [0, num_nodes)")
            continue
        if index.unique().numel() != index.numel():
            problems.append(f"split '{name}' lists a node twice")
        taken = owner[index] >= 0
        if bool(taken.any()):  # the masks would silently put these nodes into two splits
            other = list(split_idx)[int(owner[index[taken][0]])]
            problems.append(f"splits '{other}' and '{name}' share {int(taken.sum())} node(s)")
        owner[index] = position
    if problems:
        raise CorruptDataError(
            f"ogbn-proteins in {folder} is inconsistent: {'; '.join(problems)}. Replace the damaged raw "
            f"files and delete {processed.parent} so ogb processes them again")
    return build_proteins_data(num_nodes=num_nodes, edge_index=graph.edge_index, edge_attr=graph.edge_attr,
                               node_species=graph.node_species, y=graph.y, split_idx=split_idx)


def check_node_graph(data, what: str = "this model") -> None:
    """UserError unless `data` is one graph with what ogbn-proteins models read: edge_index and
    float edge features edge_attr [E, 8] (one row per edge), species for every node."""
    from ..core.errors import UserError

    edge_attr = getattr(data, "edge_attr", None)
    num_edges = data.edge_index.shape[1] if getattr(data, "edge_index", None) is not None else None
    if num_edges is None:
        raise UserError(f"the graph has no edge_index; {what} needs one large graph (load it with "
                        "magnn.data.load_dataset('ogbn-proteins', root=...))")
    if edge_attr is None or edge_attr.dim() != 2 or edge_attr.shape[0] != num_edges:
        shape = None if edge_attr is None else tuple(edge_attr.shape)
        raise UserError(f"the graph has no edge features (data.edge_attr is {shape}, expected [{num_edges}, "
                        f"{PROTEINS_NUM_EDGE_FEATURES}]): {what} embeds them; load ogbn-proteins with its "
                        "raw/edge-feat.csv.gz (magnn.data.load_dataset('ogbn-proteins', root=...))")
    if getattr(data, "species", None) is None:
        raise UserError(f"the graph has no data.species (node species ids); {what} embeds them; load "
                        "ogbn-proteins with magnn.data.load_dataset('ogbn-proteins', root=...)")


def evaluate_rocauc(y_true: torch.Tensor | np.ndarray, y_pred: torch.Tensor | np.ndarray,
                    dataset: str = "ogbn-proteins") -> float:
    """Mean ROC-AUC over tasks with OGB's Evaluator.

    dataset "ogbn-proteins": Evaluator("ogbn-proteins"), y [N, 112];
    "tox21": ogb's Evaluator("ogbg-moltox21"), y [G, 12] with NaN = missing
    (tasks lacking a positive or a negative are left out, as OGB does).
    y_pred: scores (logits or probabilities).
    """
    if dataset == "ogbn-proteins":
        from ogb.nodeproppred import Evaluator
        evaluator = Evaluator("ogbn-proteins")
    elif dataset == "tox21":
        from ogb.graphproppred import Evaluator
        evaluator = Evaluator("ogbg-moltox21")
    else:
        raise ValueError(f"evaluate_rocauc supports 'ogbn-proteins' and 'tox21', got {dataset!r}")
    return float(evaluator.eval({"y_true": y_true, "y_pred": y_pred})["rocauc"])
