"""Synthetic ogbn-proteins-shaped graphs, in memory or written in ogb's exact raw layout.

The real ogbn-proteins cannot be shipped (39.5M edges) and cannot be fetched
here, so tests and benchmarks use graphs of the same shape:

- undirected edges without duplicates or self loops, a heavy-tailed degree
  distribution (Chung–Lu sampling from log-normal expected degrees capped at
  12x the mean, plus a share of degree-1 leaves; every node has degree >= 1
  when there are at least as many edges as nodes): at full scale, hubs of
  degree several thousand next to degree-1 nodes;
- 8 edge features in [0, 1] with three decimals, mostly zero per channel like
  STRING evidence scores, at least one non-zero channel per edge;
- 8 species (NCBI taxonomy ids of the kind ogbn-proteins stores), nodes grouped
  by species; species split: 6 species train, 1 valid, 1 test (about 65/16/19 %,
  as in ogbn-proteins);
- 112 binary labels that depend on the node's mean edge features, degree and
  species plus noise, so a model has something to learn.

`write_ogb_proteins_raw` and `synthetic_proteins_graph` draw the same graph for
the same arguments: the files, read back through `ogb` and
`magnn.data.load_ogbn_proteins`, give exactly the Data that
`synthetic_proteins_graph` returns.
"""
from __future__ import annotations

import gzip
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch_geometric.data import Data

from .proteins import PROTEINS_NUM_TASKS, build_proteins_data

__all__ = [
    "PROTEINS_FULL_NUM_NODES",
    "PROTEINS_FULL_NUM_EDGES",
    "SPECIES_TAXIDS",
    "write_ogb_proteins_raw",
    "synthetic_proteins_graph",
]

PROTEINS_FULL_NUM_NODES = 132_534
PROTEINS_FULL_NUM_EDGES = 39_561_252  # undirected

# Eight model organisms (Arabidopsis, yeast, worm, fly, zebrafish, human, mouse, E. coli).
SPECIES_TAXIDS = (3702, 4932, 6239, 7227, 7955, 9606, 10090, 511145)
# Train species first, then the valid and the test species (ogbn-proteins: 86,619/21,236/24,679 nodes).
_SPECIES_SHARE = np.array([0.14, 0.12, 0.10, 0.11, 0.09, 0.094, 0.160, 0.186])
_VALID_SPECIES, _TEST_SPECIES = 6, 7

_NUM_EDGE_FEATURES = 8
# Chance that an edge has evidence in each channel (STRING-like: most channels empty).
_CHANNEL_DENSITY = np.array([0.85, 0.30, 0.15, 0.55, 0.10, 0.40, 0.05, 0.25])
# Edge features are generated in fixed blocks with one RNG stream per block, so the
# in-memory and the on-disk paths produce identical values whatever they batch by.
_FEATURE_BLOCK = 1 << 20


@dataclass
class _Structure:
    num_nodes: int
    edges: np.ndarray          # [m, 2] int64, lo < hi, sorted
    species: np.ndarray        # [N] int64 class 0..7
    seed: int


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _check_sizes(num_nodes: int, num_edges: int) -> None:
    if num_nodes < 8:
        raise ValueError(f"num_nodes must be >= 8 (one per species), got {num_nodes}")
    max_edges = num_nodes * (num_nodes - 1) // 2
    if not 1 <= num_edges <= max_edges:
        raise ValueError(f"num_edges_undirected must be in [1, {max_edges}] for {num_nodes} nodes, "
                         f"got {num_edges}")


def _expected_degrees(num_nodes: int, num_edges: int, rng: np.random.Generator,
                      degree_sigma: float, leaf_fraction: float) -> np.ndarray:
    mean_degree = 2.0 * num_edges / num_nodes
    cap = max(1.0, min(num_nodes - 1.0, 12.0 * mean_degree))
    weights = rng.lognormal(0.0, degree_sigma, num_nodes)
    leaves = rng.random(num_nodes) < leaf_fraction
    # Rescale the non-leaf weights so that, after capping, degrees sum to ~2m.
    target = 2.0 * num_edges - leaves.sum()
    scale = target / max(weights[~leaves].sum(), 1e-12)
    for _ in range(20):
        capped = np.clip(weights[~leaves] * scale, 1.0, cap)
        total = capped.sum()
        if abs(total - target) <= 1e-6 * target or total <= 0:
            break
        scale *= target / total
    degrees = np.ones(num_nodes)
    degrees[~leaves] = np.clip(weights[~leaves] * scale, 1.0, cap)
    return degrees


def _pair_keys(a: np.ndarray, b: np.ndarray, num_nodes: int) -> np.ndarray:
    # One int64 per undirected pair (lo, hi): sorting and dropping repeats dedupes edges.
    lo = np.minimum(a, b).astype(np.int64)
    hi = np.maximum(a, b).astype(np.int64)
    lo *= num_nodes
    lo += hi
    return lo


def _drop_repeats(sorted_keys: np.ndarray) -> np.ndarray:
    keep = np.empty(len(sorted_keys), dtype=bool)
    keep[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=keep[1:])
    return sorted_keys[keep]


def _merge_unique(sorted_a: np.ndarray, sorted_b: np.ndarray) -> np.ndarray:
    # Timsort ("stable") merges two sorted runs in linear time.
    return _drop_repeats(np.sort(np.concatenate([sorted_a, sorted_b]), kind="stable"))


class _AliasSampler:
    """Walker/Vose alias table: O(1) draws from a discrete distribution.

    An inverse-CDF searchsorted costs a binary search per draw, which dominates
    at 80M draws; here each draw is one uniform index, one coin and one gather.
    """

    def __init__(self, weights: np.ndarray) -> None:
        n = len(weights)
        scaled = weights * (n / weights.sum())
        self.threshold = np.ones(n)
        self.alias = np.arange(n, dtype=np.int64)
        small = [i for i in np.flatnonzero(scaled < 1.0)]
        large = [i for i in np.flatnonzero(scaled >= 1.0)]
        scaled = scaled.tolist()
        while small and large:
            s, l = small.pop(), large.pop()
            self.threshold[s] = scaled[s]
            self.alias[s] = l
            scaled[l] += scaled[s] - 1.0
            (small if scaled[l] < 1.0 else large).append(l)
        self.n = n

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        index = rng.integers(0, self.n, count)
        coin = rng.random(count)
        return np.where(coin < self.threshold[index], index, self.alias[index])


def _sample_edges(num_nodes: int, num_edges: int, rng: np.random.Generator,
                  degree_sigma: float, leaf_fraction: float) -> np.ndarray:
    sampler = _AliasSampler(_expected_degrees(num_nodes, num_edges, rng, degree_sigma, leaf_fraction))

    # Stage 1: one edge per node to a degree-weighted partner, so no node is isolated.
    nodes = np.arange(num_nodes, dtype=np.int64)
    partner = sampler.draw(rng, num_nodes)
    partner = np.where(partner == nodes, (nodes + 1) % num_nodes, partner)
    protected = _drop_repeats(np.sort(_pair_keys(nodes, partner, num_nodes)))
    if len(protected) >= num_edges:
        keep = np.sort(rng.choice(len(protected), num_edges, replace=False))
        return protected[keep]

    # Stage 2: Chung–Lu: both endpoints drawn proportional to the expected degree;
    # duplicates and self loops are dropped and the shortfall is drawn again.
    keys = protected
    for _ in range(50):
        need = num_edges - len(keys)
        if need <= 0:
            break
        count = int(need * 1.05) + 64
        a, b = sampler.draw(rng, count), sampler.draw(rng, count)
        fresh = a != b
        new_keys = _pair_keys(a[fresh], b[fresh], num_nodes)
        del a, b, fresh
        new_keys.sort()
        keys = _merge_unique(keys, _drop_repeats(new_keys))
        del new_keys
    if len(keys) < num_edges:
        # Nearly complete graph: the weighted sampler stalls, fill from the complement.
        total_pairs = num_nodes * (num_nodes - 1) // 2
        if total_pairs > 50_000_000:
            raise RuntimeError(f"could not draw {num_edges} distinct edges on {num_nodes} nodes")
        lo, hi = np.triu_indices(num_nodes, k=1)
        complement = np.setdiff1d(lo.astype(np.int64) * num_nodes + hi, keys, assume_unique=True)
        extra = np.sort(rng.choice(complement, num_edges - len(keys), replace=False))
        keys = _merge_unique(keys, extra)
    excess = len(keys) - num_edges
    if excess > 0:
        # Drop surplus stage-2 edges only, keeping every node's guaranteed edge.
        position = np.searchsorted(keys, protected)
        droppable = np.ones(len(keys), dtype=bool)
        droppable[position] = False
        candidates = np.flatnonzero(droppable)
        drop = candidates[rng.choice(len(candidates), excess, replace=False)] if excess < len(candidates) \
            else candidates
        keep = np.ones(len(keys), dtype=bool)
        keep[drop] = False
        keys = keys[keep]
    return keys


# ogbn-proteins' species split: train, valid, test node counts
PROTEINS_SPLIT_SIZES = {"train": 86_619, "valid": 21_236, "test": 24_679}


def _full_scale_species_counts(drawn: np.ndarray) -> np.ndarray:
    """Species sizes at ogbn-proteins' node count: the valid and test species get its valid and
    test sizes, the six train species share its train size in the drawn proportions (the draw
    itself is kept, so the random stream after it is the same as at any other size)."""
    train = drawn[:_VALID_SPECIES].astype(np.float64)
    shares = np.floor(train / train.sum() * PROTEINS_SPLIT_SIZES["train"]).astype(np.int64)
    shares[0] += PROTEINS_SPLIT_SIZES["train"] - shares.sum()
    return np.concatenate([shares, [PROTEINS_SPLIT_SIZES["valid"], PROTEINS_SPLIT_SIZES["test"]]]).astype(np.int64)


def _structure(num_nodes: int, num_edges: int, seed: int, degree_sigma: float,
               leaf_fraction: float) -> _Structure:
    _check_sizes(num_nodes, num_edges)
    rng = _rng(seed, 0)
    counts = np.ones(8, dtype=np.int64) + rng.multinomial(num_nodes - 8, _SPECIES_SHARE / _SPECIES_SHARE.sum())
    if num_nodes == PROTEINS_FULL_NUM_NODES:  # full scale: ogbn-proteins' own split sizes, exactly
        counts = _full_scale_species_counts(counts)
    species = np.repeat(np.arange(8, dtype=np.int64), counts)
    keys = _sample_edges(num_nodes, num_edges, rng, degree_sigma, leaf_fraction)
    edges = np.empty((len(keys), 2), dtype=np.int64)
    np.floor_divide(keys, num_nodes, out=edges[:, 0])
    np.remainder(keys, num_nodes, out=edges[:, 1])
    return _Structure(num_nodes, edges, species, seed)


def _feature_blocks(structure: _Structure) -> Iterator[tuple[slice, np.ndarray]]:
    """Edge features as integer thousandths, [rows, 8] int16, block by block."""
    num_edges = len(structure.edges)
    for block, start in enumerate(range(0, num_edges, _FEATURE_BLOCK)):
        stop = min(start + _FEATURE_BLOCK, num_edges)
        rng = _rng(structure.seed, 1, block)
        rows = stop - start
        active = rng.random((rows, _NUM_EDGE_FEATURES), dtype=np.float32) < _CHANNEL_DENSITY
        # Every edge carries some evidence: force the densest channel where none is set.
        active[~active.any(axis=1), 0] = True
        # Squared uniforms: mostly weak scores, a few strong ones (like STRING evidence).
        strength = rng.random((rows, _NUM_EDGE_FEATURES), dtype=np.float32)
        strength *= strength
        scores = np.clip(np.rint(strength * 1000), 1, 1000).astype(np.int16)
        scores[~active] = 0
        yield slice(start, stop), scores


def _labels(structure: _Structure, feature_sum: np.ndarray, degree: np.ndarray) -> np.ndarray:
    rng = _rng(structure.seed, 2)
    num_nodes = structure.num_nodes
    mean_feature = feature_sum / np.maximum(degree, 1)[:, None]
    signals = np.concatenate([mean_feature, np.log1p(degree)[:, None]], axis=1)
    signals = (signals - signals.mean(0)) / (signals.std(0) + 1e-9)
    weights = rng.normal(0.0, 1.0, (signals.shape[1], PROTEINS_NUM_TASKS)) / np.sqrt(signals.shape[1])
    species_effect = rng.normal(0.0, 0.7, (8, PROTEINS_NUM_TASKS))
    logits = signals @ weights + species_effect[structure.species] + rng.normal(0.0, 1.0, (num_nodes, PROTEINS_NUM_TASKS))
    positive_rate = rng.uniform(0.02, 0.5, PROTEINS_NUM_TASKS)
    # Per-task threshold at the (1 - rate) quantile of that task's logits.
    order_stat = np.floor((1.0 - positive_rate) * (num_nodes - 1)).astype(np.int64)
    thresholds = np.sort(logits, axis=0)[order_stat, np.arange(PROTEINS_NUM_TASKS)]
    return (logits > thresholds).astype(np.int8)


def _split(structure: _Structure) -> dict[str, np.ndarray]:
    species = structure.species
    return {
        "train": np.flatnonzero(species < _VALID_SPECIES),
        "valid": np.flatnonzero(species == _VALID_SPECIES),
        "test": np.flatnonzero(species == _TEST_SPECIES),
    }


def _accumulate(structure: _Structure, block: slice, values: np.ndarray,
                feature_sum: np.ndarray) -> None:
    # Sum of incident edge features per node (each undirected edge counts for both ends).
    lo = structure.edges[block, 0]
    hi = structure.edges[block, 1]
    for channel in range(_NUM_EDGE_FEATURES):
        weights = values[:, channel].astype(np.float64)
        feature_sum[:, channel] += np.bincount(lo, weights, minlength=structure.num_nodes)
        feature_sum[:, channel] += np.bincount(hi, weights, minlength=structure.num_nodes)


def _node_degree(structure: _Structure) -> np.ndarray:
    return (np.bincount(structure.edges[:, 0], minlength=structure.num_nodes)
            + np.bincount(structure.edges[:, 1], minlength=structure.num_nodes)).astype(np.float64)


# ---------------------------------------------------------------- CSV formatting
# np.savetxt/pandas format row by row in Python; these build the bytes with
# array arithmetic so 40M-row files take seconds per block instead of minutes.

def _csv_int_rows(matrix: np.ndarray) -> bytes:
    """Non-negative integer matrix [R, C] -> 'a,b,...\\n' rows, no padding."""
    rows, cols = matrix.shape
    if rows == 0:
        return b""
    matrix = matrix.astype(np.int64, copy=False)
    width = max(1, len(str(int(matrix.max()))))
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    chars = np.empty((rows, cols, width + 1), dtype=np.uint8)
    scaled = matrix[:, :, None] // powers
    chars[:, :, :width] = scaled % 10 + 48
    # Blank out leading zeros (positions above the number's magnitude), keep the last digit.
    leading = (scaled == 0) & (powers > 1)
    chars[:, :, :width][leading] = 0
    chars[:, :, width] = ord(",")
    chars[:, -1, width] = ord("\n")
    flat = chars.reshape(-1)
    return flat[flat != 0].tobytes()


_THOUSANDTHS_TEXT = np.array([list(f"{v // 1000}.{v % 1000:03d},".encode()) for v in range(1001)],
                             dtype=np.uint8)


def _csv_thousandths_rows(values: np.ndarray) -> bytes:
    """Integer thousandths [R, C] in 0..1000 -> 'd.ddd,...\\n' (always a float literal)."""
    chars = _THOUSANDTHS_TEXT[values]          # [R, C, 6] by table lookup
    chars[:, -1, 5] = ord("\n")
    return chars.tobytes()


class _GzipCsvWriter:
    """gzip writer that compresses in a background thread.

    zlib releases the GIL, so compressing block k overlaps with formatting
    block k+1; at most one block waits, which bounds the memory used.
    """

    def __init__(self, path: Path, compresslevel: int) -> None:
        self._file = open(path, "wb")
        self._gzip = gzip.GzipFile(filename="", mode="wb", compresslevel=compresslevel, mtime=0,
                                   fileobj=self._file)
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = None

    def write(self, data: bytes) -> None:
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pool.submit(self._gzip.write, data)

    def __enter__(self) -> "_GzipCsvWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if self._pending is not None:
                self._pending.result()
        finally:
            self._pool.shutdown()
            self._gzip.close()
            self._file.close()


def _write_int_csv(path: Path, matrix: np.ndarray, compresslevel: int, rows_per_write: int = 1 << 20) -> None:
    with _GzipCsvWriter(path, compresslevel) as out:
        for start in range(0, len(matrix), rows_per_write):
            out.write(_csv_int_rows(matrix[start:start + rows_per_write]))


def write_ogb_proteins_raw(
    root: str | os.PathLike,
    num_nodes: int = PROTEINS_FULL_NUM_NODES,
    num_edges_undirected: int = PROTEINS_FULL_NUM_EDGES,
    seed: int = 0,
    *,
    degree_sigma: float = 1.0,
    leaf_fraction: float = 0.03,
    compresslevel: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic graph as `root/ogbn_proteins/` in ogb's raw layout; return that folder.

    Files (headerless gzip CSV, as ogb's `read_csv_graph_raw` expects):
    `raw/edge.csv.gz` (m rows "src,dst", each undirected edge once; ogb adds
    the inverse), `raw/edge-feat.csv.gz` (m rows of 8 floats in [0, 1]),
    `raw/node_species.csv.gz` (N rows, taxonomy id), `raw/node-label.csv.gz`
    (N rows of 112 0/1), `raw/num-node-list.csv.gz` (N),
    `raw/num-edge-list.csv.gz` (m), `split/species/{train,valid,test}.csv.gz`
    (node indices) and `RELEASE_v1.txt` (so ogb does not ask to re-download).

    `PygNodePropPredDataset(name="ogbn-proteins", root=root)` and
    `magnn.data.load_ogbn_proteins(root)` read it. Full scale (the default
    sizes) needs a few GB of memory and writes about 0.5 GB; compresslevel 1
    keeps gzip from dominating the time. An existing folder is replaced only
    with overwrite=True (its ogb processed cache is removed with it).
    """
    folder = Path(root).expanduser() / "ogbn_proteins"
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"{folder} exists; pass overwrite=True to replace it")
        shutil.rmtree(folder)
    raw = folder / "raw"
    split_dir = folder / "split" / "species"
    raw.mkdir(parents=True)
    split_dir.mkdir(parents=True)

    structure = _structure(num_nodes, num_edges_undirected, seed, degree_sigma, leaf_fraction)
    num_edges = len(structure.edges)

    _write_int_csv(raw / "edge.csv.gz", structure.edges, compresslevel)

    feature_sum = np.zeros((num_nodes, _NUM_EDGE_FEATURES))
    with _GzipCsvWriter(raw / "edge-feat.csv.gz", compresslevel) as out:
        for block, values in _feature_blocks(structure):
            out.write(_csv_thousandths_rows(values))
            _accumulate(structure, block, values, feature_sum)

    labels = _labels(structure, feature_sum / 1000.0, _node_degree(structure))
    _write_int_csv(raw / "node-label.csv.gz", labels, compresslevel)
    taxids = np.asarray(SPECIES_TAXIDS, dtype=np.int64)[structure.species]
    _write_int_csv(raw / "node_species.csv.gz", taxids[:, None], compresslevel)
    _write_int_csv(raw / "num-node-list.csv.gz", np.array([[num_nodes]]), compresslevel)
    _write_int_csv(raw / "num-edge-list.csv.gz", np.array([[num_edges]]), compresslevel)
    for name, index in _split(structure).items():
        _write_int_csv(split_dir / f"{name}.csv.gz", index[:, None], compresslevel)
    # Written last: its presence tells ogb (and magnn) that the folder is complete.
    (folder / "RELEASE_v1.txt").write_text(
        f"magnn synthetic ogbn-proteins-shaped graph: {num_nodes} nodes, {num_edges} undirected "
        f"edges, seed {seed}\n")
    return folder


def synthetic_proteins_graph(
    num_nodes: int = PROTEINS_FULL_NUM_NODES,
    num_edges_undirected: int = PROTEINS_FULL_NUM_EDGES,
    seed: int = 0,
    *,
    degree_sigma: float = 1.0,
    leaf_fraction: float = 0.03,
) -> Data:
    """The graph `write_ogb_proteins_raw` writes for the same arguments, as an in-memory Data.

    Same layout as `magnn.data.load_ogbn_proteins`: edges in both directions
    (ogb's interleaved order), x float [N, 8], species long [N], y float
    [N, 112], edge_attr float [E, 8], edge_type zeros [E], masks. Full scale
    holds 79M directed edges: about 4 GB (edge_index + edge_attr).
    """
    structure = _structure(num_nodes, num_edges_undirected, seed, degree_sigma, leaf_fraction)
    num_edges = len(structure.edges)
    feature_sum = np.zeros((num_nodes, _NUM_EDGE_FEATURES))
    edge_attr = torch.empty((2 * num_edges, _NUM_EDGE_FEATURES), dtype=torch.float32)
    for block, values in _feature_blocks(structure):
        _accumulate(structure, block, values, feature_sum)
        # Same float32 values ogb gets by parsing the 3-decimal text.
        as_float = torch.from_numpy((values / 1000.0).astype(np.float32))
        edge_attr[2 * block.start:2 * block.stop:2] = as_float
        edge_attr[2 * block.start + 1:2 * block.stop:2] = as_float
    labels = _labels(structure, feature_sum / 1000.0, _node_degree(structure))

    edges = torch.from_numpy(structure.edges)
    edge_index = torch.empty((2, 2 * num_edges), dtype=torch.long)
    edge_index[0, 0::2] = edges[:, 0]
    edge_index[1, 0::2] = edges[:, 1]
    edge_index[0, 1::2] = edges[:, 1]
    edge_index[1, 1::2] = edges[:, 0]
    taxids = torch.tensor(SPECIES_TAXIDS, dtype=torch.long)[torch.from_numpy(structure.species)]
    split = {name: torch.from_numpy(index) for name, index in _split(structure).items()}
    return build_proteins_data(
        num_nodes=num_nodes, edge_index=edge_index, edge_attr=edge_attr, node_species=taxids,
        y=torch.from_numpy(labels), split_idx=split)
