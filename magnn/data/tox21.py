"""TOX21 (MoleculeNet): SMILES CSV -> OGB smiles2graph features, scaffold split, cached.

Featurisation is OGB's `smiles2graph` (RDKit) for every model, so node and edge
encoders are OGB's AtomEncoder/BondEncoder vocabularies. The paper's GT run
used DGL-LifeSci featurisers and a random split; magnn uses one featurisation
and the scaffold split for all models (SPEC §10).
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from tqdm import tqdm

from ..core.errors import missing_extra

try:  # the study's extras
    import pandas as pd
    from ogb.utils import smiles2graph
    from ogb.utils.features import allowable_features
    from rdkit import Chem, rdBase
    from rdkit.Chem.Scaffolds import MurckoScaffold
except ImportError as _error:
    raise missing_extra(_error, "magnn.data (TOX21 featurisation)") from _error

from ._files import (CorruptDataError, MissingDataError, bundled_path, default_root, sha256_file,
                     weights_only_loads)
from .info import DatasetInfo

__all__ = [
    "TOX21",
    "TOX21_TASKS",
    "BOND_TYPE_NAMES",
    "TOX21_INFO",
    "murcko_scaffold",
    "scaffold_split",
]

logger = logging.getLogger(__name__)

TOX21_TASKS = (
    "NR-AR", "NR-AR-LBD", "NR-AhR", "NR-Aromatase", "NR-ER", "NR-ER-LBD",
    "NR-PPAR-gamma", "SR-ARE", "SR-ATAD5", "SR-HSE", "SR-MMP", "SR-p53",
)

# edge_type = OGB bond feature 0, an index into this list.
BOND_TYPE_NAMES = tuple(str(b) for b in allowable_features["possible_bond_type_list"])

TOX21_INFO = DatasetInfo(
    name="tox21",
    task="graph_multilabel",
    num_tasks=len(TOX21_TASKS),
    node_features="ogb_atom",
    edge_features="ogb_bond",
    edge_type_names=BOND_TYPE_NAMES,
)

# Bump when the processed format or featurisation changes, so old caches are not reused.
_PROCESSED_VERSION = "v1"


def murcko_scaffold(smiles_or_mol: str | Chem.Mol, include_chirality: bool = True) -> str:
    """Bemis–Murcko scaffold SMILES (RDKit), as MoleculeNet/OGB compute it."""
    if isinstance(smiles_or_mol, str):
        return MurckoScaffold.MurckoScaffoldSmiles(smiles=smiles_or_mol, includeChirality=include_chirality)
    return MurckoScaffold.MurckoScaffoldSmiles(mol=smiles_or_mol, includeChirality=include_chirality)


def _split_scaffold_sets(scaffolds: Sequence[str], frac_train: float, frac_valid: float) -> dict[str, torch.Tensor]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, scaffold in enumerate(scaffolds):
        groups[scaffold].append(index)
    # Largest scaffold sets first; ties broken by the set's last index (MoleculeNet
    # convention), which makes the order a pure function of the input order.
    ordered = sorted(groups.values(), key=lambda members: (len(members), members[-1]), reverse=True)
    n = len(scaffolds)
    train_cutoff = frac_train * n
    valid_cutoff = (frac_train + frac_valid) * n
    train: list[int] = []
    valid: list[int] = []
    test: list[int] = []
    for members in ordered:
        if len(train) + len(members) > train_cutoff:
            if len(train) + len(valid) + len(members) > valid_cutoff:
                test.extend(members)
            else:
                valid.extend(members)
        else:
            train.extend(members)
    return {name: torch.tensor(sorted(idx), dtype=torch.long)
            for name, idx in (("train", train), ("val", valid), ("test", test))}


def scaffold_split(smiles: Sequence[str], frac_train: float = 0.8, frac_valid: float = 0.1) -> dict[str, torch.Tensor]:
    """Deterministic scaffold split (MoleculeNet/OGB style) of a list of SMILES.

    Molecules are grouped by Murcko scaffold; groups, largest first, fill
    train up to frac_train, then valid up to frac_train + frac_valid, and the
    rest go to test. Returns sorted index tensors under "train", "val", "test".
    """
    if not (0 < frac_train and 0 <= frac_valid and frac_train + frac_valid <= 1):
        raise ValueError(f"bad split fractions train={frac_train}, valid={frac_valid}")
    return _split_scaffold_sets([murcko_scaffold(s) for s in smiles], frac_train, frac_valid)


def _read_tox21_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise CorruptDataError(
            f"cannot read TOX21 CSV {path} ({type(exc).__name__}: {exc}); "
            "the file is truncated or not a MoleculeNet tox21.csv") from exc
    missing = [c for c in (*TOX21_TASKS, "smiles") if c not in frame.columns]
    if missing:
        raise CorruptDataError(
            f"TOX21 CSV {path} lacks columns {missing}; expected the MoleculeNet layout "
            f"{','.join(TOX21_TASKS)},mol_id,smiles")
    labels = frame[list(TOX21_TASKS)]
    try:
        values = labels.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"TOX21 CSV {path}: non-numeric label values ({exc})") from exc
    bad = ~np.isnan(values) & ~np.isin(values, (0.0, 1.0))  # inf, -inf, 2, 0.5 ...
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        mol_id = f", mol_id {frame['mol_id'].iloc[row]}" if "mol_id" in frame.columns else ""
        raise CorruptDataError(
            f"TOX21 CSV {path}: row {row + 1} (line {row + 2}{mol_id}), column {TOX21_TASKS[column]}: label "
            f"{labels.iloc[row, column]!r} is not 0, 1 or empty (empty = not measured); "
            f"{int(bad.sum())} such label(s) in all. Fix them, or leave them empty")
    return frame


def _check_cached_labels(y: torch.Tensor, folder: str) -> None:
    """The cache's labels must be 0, 1 or NaN (missing), like the CSV's: an edited or stale cache with
    an inf would otherwise reach training as 'training diverged'."""
    if y is None or y.numel() == 0:
        return
    bad = ~torch.isnan(y) & (y != 0) & (y != 1)
    if bool(bad.any()):
        graph, column = (int(i) for i in bad.nonzero()[0])
        raise CorruptDataError(
            f"processed TOX21 cache in {folder}: graph {graph} has label {float(y[graph, column])} for task "
            f"{TOX21_TASKS[column]}, not 0, 1 or missing; delete {folder} (it is rebuilt from the CSV) "
            "or pass force_reload=True")


CSV_NAMES_IN_ROOT = ("tox21.csv", "tox21.csv.gz")


def csv_in_root(root: Path) -> Path | None:
    """A user's own MoleculeNet tox21 CSV directly in the data root (tox21.csv, else tox21.csv.gz), if any."""
    for name in CSV_NAMES_IN_ROOT:
        if (root / name).is_file():
            return root / name
    return None


def _check_split(split, num_graphs: int, folder: str) -> None:
    """The cached split must be three disjoint index sets inside [0, num_graphs): a stale or
    edited cache would otherwise raise deep inside indexing, or silently leak test molecules
    into training."""
    fix = f"delete {folder} (it is rebuilt from the CSV) or pass force_reload=True"
    if not isinstance(split, dict) or set(split) != {"train", "val", "test"}:
        keys = sorted(split) if isinstance(split, dict) else type(split).__name__
        raise CorruptDataError(f"processed TOX21 cache in {folder}: the split holds {keys}, "
                               f"not train/val/test; {fix}")
    owner: dict[int, str] = {}
    for name in ("train", "val", "test"):
        index = split[name]
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise CorruptDataError(f"processed TOX21 cache in {folder}: split '{name}' is not a 1-D integer tensor; {fix}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_graphs):
            raise CorruptDataError(f"processed TOX21 cache in {folder}: split '{name}' has indices outside "
                                   f"[0, {num_graphs}) (the cache holds {num_graphs} graphs); {fix}")
        if index.unique().numel() != index.numel():
            raise CorruptDataError(f"processed TOX21 cache in {folder}: split '{name}' lists a molecule twice; {fix}")
        for i in index.tolist():
            other = owner.setdefault(i, name)
            if other != name:
                raise CorruptDataError(f"processed TOX21 cache in {folder}: splits overlap ('{other}' and '{name}' "
                                       f"share molecule {i}); {fix}")


class TOX21(InMemoryDataset):
    """MoleculeNet TOX21 as PyG graphs, featurised once and cached.

    Args:
        root: cache root; processed files go to `root/tox21/processed/<version>-<csv sha256>/`
            (default: `magnn.data.default_root()`, i.e. ~/.cache/magnn).
        csv_path: a MoleculeNet tox21 CSV (.csv or .csv.gz: columns NR-AR ... SR-p53 with 0, 1 or
            empty, mol_id optional, smiles); default: `root/tox21.csv` (or `tox21.csv.gz`) when the
            root holds one, else the bundled copy. The cache is keyed by the CSV's sha256.
        transform, pre_transform, pre_filter, force_reload: as in PyG's InMemoryDataset.
        allow_pickle: read the processed cache with plain pickle (code in it runs); default (and
            without MAGNN_ALLOW_PICKLE=1): tensors and plain data only, anything else is refused.

    Each graph: `x` long [N, 9] (OGB atom features), `edge_index` long [2, E]
    (both directions), `edge_attr` long [E, 3] (OGB bond features),
    `edge_type` long [E] (bond type, index into BOND_TYPE_NAMES), `y` float
    [1, 12] (NaN = missing label), `smiles`, `mol_id` (str).

    Attributes: `split_idx` (scaffold split: "train"/"val"/"test" index
    tensors), `num_skipped` and `skipped_mol_ids` (SMILES RDKit cannot
    parse; they are left out and logged), `info` (DatasetInfo).
    """

    info = TOX21_INFO
    tasks = TOX21_TASKS

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        csv_path: str | os.PathLike | None = None,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        pre_filter: Callable | None = None,
        force_reload: bool = False,
        *,
        allow_pickle: bool | None = None,
    ) -> None:
        root = Path(root).expanduser() if root is not None else default_root()
        if csv_path is None:
            csv_path = csv_in_root(root)
            if csv_path is not None:
                logger.info("TOX21: using %s (found in the data root) instead of the bundled CSV", csv_path)
        if csv_path is None:
            self.csv_path = bundled_path("tox21.csv.gz")
        else:
            self.csv_path = Path(csv_path).expanduser()
            if not self.csv_path.is_file():
                raise MissingDataError(
                    f"TOX21 CSV not found: {self.csv_path}. Pass csv_path=None to use the bundled "
                    "MoleculeNet tox21.csv.gz, or point it at a MoleculeNet-format tox21 CSV")
        self.csv_sha256 = sha256_file(self.csv_path)
        with weights_only_loads(allow_pickle):  # PyG's pre_transform.pt check and the cache: no code runs
            super().__init__(str(root / "tox21"), transform, pre_transform, pre_filter,
                             force_reload=force_reload)
            data_path, split_path, meta_path = self.processed_paths
            try:
                self.load(data_path)
                split = torch.load(split_path, weights_only=True)
                with open(meta_path) as f:
                    meta = json.load(f)
            except CorruptDataError:  # UntrustedFileError: says itself what to do
                raise
            except Exception as exc:  # any unreadable cache file means the same fix
                raise CorruptDataError(
                    f"processed TOX21 cache in {self.processed_dir} is unreadable ({exc}); delete that "
                    "folder or pass force_reload=True") from exc
        _check_split(split, len(self), self.processed_dir)
        _check_cached_labels(getattr(self._data, "y", None), self.processed_dir)
        self.split_idx: dict[str, torch.Tensor] = split
        self.num_skipped: int = meta["num_skipped"]
        self.skipped_mol_ids: list[str] = meta["skipped_mol_ids"]
        if self.num_skipped and not force_reload:
            logger.info("TOX21 (cached): %d molecules were skipped because RDKit cannot parse their SMILES",
                        self.num_skipped)

    @property
    def processed_dir(self) -> str:
        return os.path.join(self.root, "processed", f"{_PROCESSED_VERSION}-{self.csv_sha256[:16]}")

    @property
    def processed_file_names(self) -> list[str]:
        # meta.json is written last, so its presence means the cache is complete.
        return ["data.pt", "scaffold_split.pt", "meta.json"]

    def process(self) -> None:
        frame = _read_tox21_csv(self.csv_path)
        labels = frame[list(TOX21_TASKS)].to_numpy(dtype=np.float32)
        mol_ids = (frame["mol_id"].astype(str).tolist() if "mol_id" in frame.columns
                   else [f"row{i}" for i in range(len(frame))])
        smiles_column = frame["smiles"].tolist()

        data_list: list[Data] = []
        scaffolds: list[str] = []
        skipped: list[str] = []
        # RDKit prints a parse error per bad SMILES; one summary warning is enough.
        with rdBase.BlockLogs():
            for row, smiles in enumerate(tqdm(smiles_column, desc="Featurising TOX21", unit="mol")):
                mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) else None
                if mol is None or mol.GetNumAtoms() == 0:
                    skipped.append(mol_ids[row])
                    continue
                graph = smiles2graph(smiles)
                edge_attr = torch.from_numpy(graph["edge_feat"])
                data = Data(
                    x=torch.from_numpy(graph["node_feat"]),
                    edge_index=torch.from_numpy(graph["edge_index"]),
                    edge_attr=edge_attr,
                    edge_type=edge_attr[:, 0].clone(),
                    y=torch.from_numpy(labels[row]).view(1, -1),
                    smiles=smiles,
                    mol_id=mol_ids[row],
                    num_nodes=int(graph["num_nodes"]),
                )
                if self.pre_filter is not None and not self.pre_filter(data):
                    continue
                if self.pre_transform is not None:
                    data = self.pre_transform(data)
                data_list.append(data)
                scaffolds.append(murcko_scaffold(mol))
        if skipped:
            logger.warning(
                "TOX21: skipped %d of %d molecules whose SMILES RDKit cannot parse (mol_id: %s)",
                len(skipped), len(smiles_column), ", ".join(skipped))
        if not data_list:
            raise CorruptDataError(f"TOX21 CSV {self.csv_path} contains no parsable molecule")

        split = _split_scaffold_sets(scaffolds, 0.8, 0.1)
        data_path, split_path, meta_path = self.processed_paths
        # Temp files + rename: an interrupted run never leaves a cache that looks complete.
        self.save(data_list, data_path + ".tmp")
        os.replace(data_path + ".tmp", data_path)
        torch.save(split, split_path + ".tmp")
        os.replace(split_path + ".tmp", split_path)
        meta = {
            "csv_sha256": self.csv_sha256,
            "num_rows": len(smiles_column),
            "num_graphs": len(data_list),
            "num_skipped": len(skipped),
            "skipped_mol_ids": skipped,
            "rdkit_version": rdBase.rdkitVersion,
        }
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(meta_path + ".tmp", meta_path)
