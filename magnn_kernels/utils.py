"""Launch helpers of the edge-attention kernels: tiles, row-split plans, grids, devices, buffers.

Host code only (no @triton.jit here). The tunables are module globals read at
every launch, so tests shrink them (monkeypatch this module) to reach the
multi-block and split-row paths on small graphs.

Work decomposition
  Every pass walks a CSR (the dst-sorted one for the forward and for dq, the
  src-sorted reverse one for dk, dv, de). A row no longer than `row_split`
  edges is one work item handled by one program, which loops over the row in
  tiles of BLOCK_E edges x H heads x D channels (all heads together, so an
  edge's H*D values are one contiguous load and the per-edge statistics see
  the whole row). Longer rows (hubs) are cut into chunks; each chunk writes
  partial results and a small combine kernel merges the chunks of a node in a
  fixed order, so nothing needs a floating-point atomic and results are
  deterministic. `RowPlan` lists both kinds of work items.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
from triton import knobs

from magnn.core.binning import num_bins
from magnn.core.dropout import dropout_threshold, keep_scale, split_seed
from magnn.core.errors import UserError

# Tunables.
MAX_BLOCK_E = 64  # edges per tile (upper bound; shrunk so a tile holds <= TILE_ELEMENTS values)
TILE_ELEMENTS = 1024  # values per tile: ~8 per thread at 4 warps keeps registers near 110 (ptxas, sm_90)
ROW_SPLIT: Optional[int] = None  # edges per work item for long rows; None: chosen from E and the device
HIST_WINDOW = 2048  # register-histogram bins per program

# What triton.jit decides when it decorates the kernels (at their import, right after this module's):
# under TRITON_INTERPRET=1 they run as Python on CPU (or CUDA) tensors.
INTERPRETED = bool(knobs.runtime.interpret)


# ---------------------------------------------------------------------------
# tiles and grids
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    """Block sizes of one launch: BLOCK_E edges x BLOCK_H heads x BLOCK_D channels, and its warps."""

    block_e: int
    block_h: int
    block_d: int
    num_warps: int
    heads: int = 0  # HEADS constexpr: H when the shape is specialised, else 0 (H, D runtime)
    head_dim: int = 0  # HEAD_DIM constexpr

    def launch_args(self) -> dict:
        """HEADS, HEAD_DIM, BLOCK_E, BLOCK_H, BLOCK_D and num_warps, as keyword arguments of a launch."""
        return dict(HEADS=self.heads, HEAD_DIM=self.head_dim, BLOCK_E=self.block_e, BLOCK_H=self.block_h,
                    BLOCK_D=self.block_d, num_warps=self.num_warps)


# Shapes compiled with H and D as constexprs (every other shape takes the generic kernels, where
# they are runtime integers): channels per head and heads of the common models. A compile-time
# D == BLOCK_D makes an edge's H*D values one contiguous, aligned run (128-bit loads and stores).
SHAPE_HEAD_DIMS = (8, 16, 32, 64)
SHAPE_HEADS = (1, 2, 4, 8, 16)


def tiles(heads: int, head_dim: int) -> Tiles:
    block_h = triton.next_power_of_2(heads)
    block_d = triton.next_power_of_2(head_dim)
    per_edge = block_h * block_d
    block_e = max(1, min(MAX_BLOCK_E, TILE_ELEMENTS // per_edge))
    block_e = 1 << (block_e.bit_length() - 1)  # a power of two
    specialised = head_dim in SHAPE_HEAD_DIMS and heads in SHAPE_HEADS
    return Tiles(block_e, block_h, block_d, 8 if block_e * per_edge >= 4096 else 4,
                 heads if specialised else 0, head_dim if specialised else 0)


def short_row_tiles(tile: Tiles, longest: int) -> Tiles:
    """`tile` with BLOCK_E cut to the longest row (a power of two) when every row is shorter than a
    tile, and as many warps as the smaller tile fills (256 values per warp, as `tiles`): a molecule batch's
    rows of 1-4 edges then fill half their tile's lanes or more, not an eighth."""
    if longest >= tile.block_e:
        return tile
    block_e = triton.next_power_of_2(max(longest, 1))
    warps = max(1, min(tile.num_warps, block_e * tile.block_h * tile.block_d // 256))
    return replace(tile, block_e=block_e, num_warps=warps)


def max_degree(rowptr: torch.Tensor) -> int:
    """The longest row of a CSR (one device sync, cached per CSR tensor like its row plan)."""
    return cached_plan(rowptr, "max_degree",
                       lambda: int((rowptr[1:] - rowptr[:-1]).max()) if rowptr.numel() > 1 else 0)


def sm_count(device: torch.device) -> int:
    if device.type == "cuda" and not INTERPRETED:
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# An SM's limits (H100 / sm_90 values; the device's own where torch reports them)
SM_LIMITS = dict(regs=65536, reg_unit_per_warp=256, schedulers=4, max_warps=64, max_ctas=32, shared=228 * 1024,
                 shared_reserved_per_cta=1024)


def resident_ctas(regs: int, shared: int, num_warps: int, limits: Optional[dict] = None) -> int:
    """CTAs of a kernel that fit on one SM at once: registers (allocated per warp in units of
    reg_unit_per_warp, a scheduler's quarter of the file each), shared memory, warps and CTAs."""
    lim = dict(SM_LIMITS, **(limits or {}))
    unit = lim["reg_unit_per_warp"]
    per_warp = max(unit, -(-regs * 32 // unit) * unit)
    warps = (lim["regs"] // lim["schedulers"] // per_warp) * lim["schedulers"]
    by_smem = lim["max_ctas"] if shared == 0 else lim["shared"] // (shared + lim["shared_reserved_per_cta"])
    return max(1, min(warps // num_warps, lim["max_warps"] // num_warps, by_smem, lim["max_ctas"]))


def _device_limits(device: torch.device) -> dict:
    props = torch.cuda.get_device_properties(device)
    limits = {}
    for key, attr in (("regs", "regs_per_multiprocessor"), ("shared", "shared_memory_per_multiprocessor")):
        value = getattr(props, attr, None)
        if value:
            limits[key] = int(value)
    threads = getattr(props, "max_threads_per_multi_processor", None)
    if threads:
        limits["max_warps"] = int(threads) // 32
    return limits


_RESIDENT: dict = {}


def kernel_ctas_per_sm(kernel, launch_kwargs: dict, device: torch.device) -> int:
    """Resident CTAs per SM of the build of `kernel` these arguments select (compiled without a
    launch by kernel.warmup; cached per constexprs and argument dtypes)."""
    key = (kernel, str(device)) + tuple(
        (name, repr(value) if not isinstance(value, torch.Tensor) else str(value.dtype))
        for name, value in sorted(launch_kwargs.items()) if name.isupper() or name == "num_warps"
        or isinstance(value, torch.Tensor))
    ctas = _RESIDENT.get(key)
    if ctas is None:
        ctas = 8  # what the grid assumed before the build could be asked
        try:
            compiled = kernel.warmup(grid=(1,), **launch_kwargs)
            init = getattr(compiled, "_init_handles", None)
            if init is not None:
                init()
            limits = _device_limits(device) if device.type == "cuda" else {}
            ctas = resident_ctas(int(compiled.n_regs), int(compiled.metadata.shared),
                                 int(compiled.metadata.num_warps), limits)
        except Exception:  # noqa: BLE001 - a grid size is never worth failing a launch for
            pass
        _RESIDENT[key] = ctas
    return ctas


def grid(items: int, persistent: bool, device: torch.device, kernel=None, launch_kwargs=None) -> tuple[int]:
    """One program per item, or a persistent grid (stats: one histogram flush per program) of as
    many programs as fit on the device at once: the build's resident CTAs per SM (from its
    registers and shared memory) x SMs."""
    if INTERPRETED:
        programs = min(items, 4)  # several items per program, so every test runs the persistent loop
    elif persistent:
        per_sm = kernel_ctas_per_sm(kernel, launch_kwargs, device) if kernel is not None else 8
        programs = min(items, sm_count(device) * per_sm)
    else:
        programs = items
    return (max(programs, 1),)


def device_ctx(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ---------------------------------------------------------------------------
# row-split plans
# ---------------------------------------------------------------------------


def row_split(num_edges: int, device: torch.device, tile: Tiles) -> int:
    """Edges per work item: rows longer than this are cut into chunks."""
    if ROW_SPLIT is not None:
        return max(1, int(ROW_SPLIT))
    # a row longer than ~1/(32 x programs in flight) of the work would hold up the tail
    return max(32 * tile.block_e, num_edges // (sm_count(device) * 32))


@dataclass
class RowPlan:
    """Work items over one CSR: whole rows (by degree, longest first) and chunks of long rows."""

    whole_nodes: torch.Tensor  # int64 [W]
    chunk_node: torch.Tensor  # int64 [C]
    chunk_start: torch.Tensor  # int64 [C]: first sorted edge of the chunk
    chunk_end: torch.Tensor  # int64 [C]: one past its last
    split_nodes: torch.Tensor  # int64 [S]
    split_ptr: torch.Tensor  # int64 [S+1]: chunks of split_nodes[s] are split_ptr[s]:split_ptr[s+1]

    @property
    def num_whole(self) -> int:
        return self.whole_nodes.shape[0]

    @property
    def num_chunks(self) -> int:
        return self.chunk_node.shape[0]

    @property
    def num_split(self) -> int:
        return self.split_nodes.shape[0]

    def whole_items(self) -> dict:
        """The work-item pointers of the whole rows (start / end are read from rowptr instead)."""
        return dict(item_node_ptr=self.whole_nodes, item_start_ptr=self.whole_nodes, item_end_ptr=self.whole_nodes,
                    num_items=self.num_whole)

    def chunk_items(self) -> dict:
        return dict(item_node_ptr=self.chunk_node, item_start_ptr=self.chunk_start, item_end_ptr=self.chunk_end,
                    num_items=self.num_chunks)


def _build_plan(rowptr: torch.Tensor, chunk: int) -> RowPlan:
    degree = rowptr[1:] - rowptr[:-1]
    split = degree > chunk
    whole_nodes = torch.nonzero(~split).reshape(-1)
    # longest rows first: the scheduler starts them early, so they do not form the tail
    whole_nodes = whole_nodes[torch.argsort(degree[whole_nodes], descending=True, stable=True)]
    split_nodes = torch.nonzero(split).reshape(-1)
    pieces = (degree[split_nodes] + chunk - 1) // chunk
    split_ptr = torch.zeros(split_nodes.shape[0] + 1, dtype=torch.long, device=rowptr.device)
    torch.cumsum(pieces, 0, out=split_ptr[1:])
    num_chunks = int(split_ptr[-1])
    chunk_node = torch.repeat_interleave(split_nodes, pieces, output_size=num_chunks)
    first = torch.repeat_interleave(split_ptr[:-1], pieces, output_size=num_chunks)
    local = torch.arange(num_chunks, device=rowptr.device) - first
    chunk_start = rowptr[chunk_node] + local * chunk
    chunk_end = torch.minimum(chunk_start + chunk, rowptr[chunk_node + 1])
    return RowPlan(whole_nodes, chunk_node, chunk_start, chunk_end, split_nodes, split_ptr)


# id(rowptr) -> (weak reference to it, {(version, chunk): RowPlan}): the plans of every CSR tensor
# still alive (a Graph's cached rowptr lives as long as the graph), dropped when it is collected
_PLANS_BY_CSR: dict[int, tuple] = {}


def _forget_plans(key: int) -> None:
    _PLANS_BY_CSR.pop(key, None)


def cached_plan(rowptr: torch.Tensor, key, build):
    """build(), cached per CSR tensor and key for as long as the tensor lives: building a plan syncs
    with the device, so a graph seen before (its cached rowptr) never plans, or syncs, again,
    however many graphs came between. In-place edits bump the tensor's version, part of the key."""
    entry = _PLANS_BY_CSR.get(id(rowptr))
    if entry is None or entry[0]() is not rowptr:
        try:
            entry = (weakref.ref(rowptr), {})
        except TypeError:  # not weak-referenceable: no caching
            return build()
        _PLANS_BY_CSR[id(rowptr)] = entry
        weakref.finalize(rowptr, _forget_plans, id(rowptr))
    plans = entry[1]
    key = (rowptr._version, key)
    if key not in plans:
        plans[key] = build()
    return plans[key]


def row_plan(rowptr: torch.Tensor, chunk: int) -> RowPlan:
    """The work items of a CSR (cached per CSR tensor: `cached_plan`)."""
    return cached_plan(rowptr, chunk, lambda: _build_plan(rowptr, chunk))


# ---------------------------------------------------------------------------
# attention dropout
# ---------------------------------------------------------------------------


def _int32_bits(word: int) -> int:
    """A uint32 word as the int32 with the same bits (a stable i32 kernel argument)."""
    word &= 0xFFFFFFFF
    return word - (1 << 32) if word >= 1 << 31 else word


def dropout_args(dropout: float, seed: int) -> dict:
    """The dropout arguments of a launch: DROPOUT, seed_lo, seed_hi, drop_threshold, keep_scale
    (magnn.core.dropout's words, threshold and 1 / (1 - p)).

    dropout == 0 turns it off (the seed is ignored); the seed is taken mod 2**64."""
    if not 0.0 <= dropout < 1.0:  # also rejects NaN
        raise UserError(f"attention dropout must be in [0, 1), got {dropout}; pass dropout=0.0 to turn it off")
    if dropout == 0.0:
        return dict(DROPOUT=False, seed_lo=0, seed_hi=0, drop_threshold=0, keep_scale=1.0)
    seed_lo, seed_hi = split_seed(seed)
    return dict(DROPOUT=True, seed_lo=_int32_bits(seed_lo), seed_hi=_int32_bits(seed_hi),
                drop_threshold=_int32_bits(dropout_threshold(dropout)), keep_scale=keep_scale(dropout))


# ---------------------------------------------------------------------------
# statistics layout
# ---------------------------------------------------------------------------


def hist_layout(mantissa_bits: int) -> tuple[int, int]:
    """(window, ratio window base): the ratio window starts 11/16 of its width below 1.0."""
    bins = num_bins(mantissa_bits)
    window = min(bins, HIST_WINDOW)
    base = (127 << mantissa_bits) - (window * 11) // 16
    return window, min(max(base, 0), bins - window)


def low_bit(dtype: torch.dtype) -> int:
    """Low float32 bits that a value stored in `dtype` always has zero (the median search skips them)."""
    return {torch.bfloat16: 16, torch.float16: 13}.get(dtype, 0)


# ---------------------------------------------------------------------------
# buffers
# ---------------------------------------------------------------------------


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer that the kernels must write in full is allocated here (tests poison it)."""
    return torch.empty(shape, dtype=dtype, device=device)


def or_placeholder(tensor: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    """`tensor`, or for an absent optional one a stand-in pointer that the kernel never
    dereferences (the HAS_* / EBT / STATS flag that guards its loads and stores is off)."""
    return placeholder if tensor is None else tensor


def projection_args(proj, placeholder: torch.Tensor) -> dict:
    """w_ptr, b_ptr, EDGE_FEATURES and HAS_EDGE_BIAS of a launch: proj = (W^T [F, H*D] fp32, b [H*D]
    fp32 or None) for the in-operator edge projection, or None (e is given: EDGE_FEATURES 0)."""
    if proj is None:
        return dict(w_ptr=placeholder, b_ptr=placeholder, EDGE_FEATURES=0, HAS_EDGE_BIAS=False)
    w_t, b = proj
    return dict(w_ptr=w_t, b_ptr=or_placeholder(b, placeholder), EDGE_FEATURES=w_t.shape[0],
                HAS_EDGE_BIAS=b is not None)
