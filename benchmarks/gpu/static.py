#!/usr/bin/env python3
"""Compile-only performance model of the Triton edge-attention kernels on an H100 (sm_90).

    python benchmarks/gpu/static.py [--workloads molecules,proteins-600k,proteins-full]
                                    [--dtype bf16] [--heads 8] [--head-dim 8] [--json OUT.json]

No GPU runs. Every figure this prints is an ESTIMATE read from the compiler's output:

1. Capture. The launch wrappers (magnn_kernels.edge_attention_fwd / _bwd) are called on
   meta tensors of the workload's full size ([E, H, D] edges take no memory) and a real CPU
   CSR row pointer built from the workload's degrees; `JITFunction.run` is replaced by a
   recorder, so every launch they would make is captured with its grid, its constexprs and
   Triton's own argument specialisation for sm_90 (divisibility, alignment), none executed.
   The device is taken to have H100_SXM["sms"] multiprocessors.
2. Compile. Each captured variant is compiled by triton.compile for GPUTarget("cuda", 90, 32)
   (Triton's bundled ptxas); cuobjdump gives registers, spills (local memory) and shared
   memory, nvdisasm the SASS.
3. Read. The tile loops are the innermost loops of the SASS (backward branches) that load
   from global memory; their instruction mix is counted (global loads / stores by width,
   atomics and reductions, barriers, shuffles, shared-memory traffic). The loads and stores of
   [E, H, D] edge tensors are found by source line (a `..._ptr + eid_off` access). Code that a
   forward branch skips and that holds a source line marked `# static-model: rare` (the |A|
   window's anchoring on a program's first tile, the atomics for values outside the
   histogram windows) is off the common path: counted apart (tile_loop_rare_instructions), not
   in the tile's instructions.
4. Estimate. The estimate is the largest of three times: issue-bound time = warp instructions / (SMs x 4 schedulers x clock), where a
   launch's warp instructions are tiles x warps x (tile-loop instructions) + work items x warps
   x (the rest of the kernel), tiles counted from the real row plan (ceil(degree / BLOCK_E)
   per row or chunk). It assumes one instruction issued per scheduler per cycle and every
   latency hidden: a lower bound, optimistic when occupancy is low. The roofline time is the
   fewest bytes the pass must move (each tensor read or written once) / HBM bandwidth; the
   stream time counts instead the [E, H, D] bytes the compiled tile loops really move (every
   edge load and store by its width, per tile, per thread: a tensor read by two passes counts
   twice) with the minimal bytes of everything else.
   Occupancy: resident CTAs per SM from registers (allocated per warp in units of 256),
   shared memory and the warp / CTA limits below.

The constants are stated in H100_SXM and written into the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels, never the interpreter

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

SCHEMA = 1
LABEL = "ESTIMATES from compiled sm_90 code (triton.compile + ptxas, no GPU ran): not measurements"
# H100 SXM5 (80 GB): the figures the model uses
H100_SXM = dict(
    sms=132, schedulers_per_sm=4, clock_hz=1.755e9,  # sustained SM clock under load (boost 1.98 GHz)
    hbm_bytes_per_s=3.35e12, regs_per_sm=65536, regs_per_scheduler=16384, reg_alloc_unit_per_warp=256,
    max_warps_per_sm=64, max_ctas_per_sm=32, smem_per_sm=228 * 1024, smem_per_cta_max=227 * 1024,
    smem_reserved_per_cta=1024, warp_size=32,
)
TARGET = GPUTarget("cuda", 90, 32)
WORKLOADS = ("molecules", "proteins-600k", "proteins-full")
PROTEINS_FULL = (132_534, 79_122_504)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (name, direction, mode, statistics, need_edge_out[, F]): F > 0 is the in-operator edge projection
# (SPEC §3): e formed in the kernels from raw features a [E, F] (ogbn-proteins: F = 8), no [E, H, D]
# e input nor gradient; in the backward need_edge_out stands for an edge_out gradient
PROJ_FEATURES = 8
CASES = (
    ("gt fwd", "fwd", "gt", False, True),
    ("gt fwd +stats", "fwd", "gt", True, True),
    ("gt fwd no edge_out", "fwd", "gt", False, False),
    ("additive fwd", "fwd", "additive", False, True),
    ("additive fwd no edge_out", "fwd", "additive", False, False),
    ("additive fwd +stats", "fwd", "additive", True, True),
    ("gt bwd", "bwd", "gt", False, True),
    ("additive bwd", "bwd", "additive", False, True),
    ("gt fwd proj F=8", "fwd", "gt", False, True, PROJ_FEATURES),
    ("gt fwd proj F=8 no edge_out", "fwd", "gt", False, False, PROJ_FEATURES),
    ("gt bwd proj F=8", "bwd", "gt", False, True, PROJ_FEATURES),
    ("gt bwd proj F=8 no grad_edge", "bwd", "gt", False, False, PROJ_FEATURES),
)


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


# ---------------------------------------------------------------------------
# workloads: degrees only (the model scales by E and N)
# ---------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    in_degree: np.ndarray  # int64 [N] edges into each node (dst CSR rows)
    out_degree: np.ndarray  # int64 [N] edges out of each node (src CSR rows)
    note: str

    @property
    def num_nodes(self) -> int:
        return int(self.in_degree.shape[0])

    @property
    def num_edges(self) -> int:
        return int(self.in_degree.sum())


def _proteins_degrees(num_nodes: int, num_edges: int) -> np.ndarray:
    """magnn.data.synthetic's expected degrees (lognormal, sigma 1, 3% leaves) rounded to sum E."""
    from magnn.data.synthetic import _expected_degrees, _rng

    expected = _expected_degrees(num_nodes, num_edges // 2, _rng(0, 0), 1.0, 0.03)
    degree = np.maximum(np.floor(expected * num_edges / expected.sum()), 1).astype(np.int64)
    short = num_edges - int(degree.sum())
    order = np.argsort(-(expected - degree))
    degree[order[: abs(short)]] += 1 if short > 0 else -1
    assert degree.sum() == num_edges and degree.min() >= 0
    return degree


def workload(name: str) -> Workload:
    if name == "molecules":
        from torch_geometric.loader import DataLoader

        from magnn.data import load_zinc

        batch = next(iter(DataLoader(load_zinc(source="bundled")["train"], batch_size=128)))
        src, dst = batch.edge_index
        n = batch.num_nodes
        return Workload(name, np.bincount(dst.numpy(), minlength=n), np.bincount(src.numpy(), minlength=n),
                        "the first 128 molecules of the bundled ZINC train split")
    if name == "proteins-600k":
        degree = _proteins_degrees(20_000, 600_000)
        return Workload(name, degree, degree, "20,000 nodes, 600,000 edges: synthetic proteins degrees")
    if name == "proteins-full":
        degree = _proteins_degrees(*PROTEINS_FULL)
        return Workload(name, degree, degree, "ogbn-proteins size, 132,534 nodes, 79,122,504 edges: synthetic degrees")
    raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")


def _rowptr(degree: np.ndarray) -> torch.Tensor:
    rowptr = torch.zeros(degree.shape[0] + 1, dtype=torch.long)
    torch.cumsum(torch.from_numpy(degree.astype(np.int64)), 0, out=rowptr[1:])
    return rowptr


# ---------------------------------------------------------------------------
# capture
# ---------------------------------------------------------------------------


@dataclass
class Launch:
    kernel: JITFunction
    grid: tuple
    kwargs: dict
    signature: dict
    constexprs: dict
    attrs: dict
    options: object

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def constexpr_values(self) -> dict:
        names = [p.name for p in self.kernel.params]
        return {names[path[0]]: value for path, value in self.constexprs.items() if len(path) == 1}

    def key(self) -> str:
        return json.dumps([self.name, sorted((str(k), str(v)) for k, v in self.constexprs.items()),
                           sorted(self.signature.items()), sorted((str(k), str(v)) for k, v in self.attrs.items()),
                           self.options.num_warps, self.options.num_stages], sort_keys=True)


class capture_launches:
    """Record the launches made inside the block instead of running them (and take the device
    to have `sms` multiprocessors); each is specialised as Triton's JIT does for sm_90."""

    def __init__(self, sms: int = H100_SXM["sms"]):
        self.sms = sms
        self.launches: list[Launch] = []

    def __enter__(self):
        from magnn_kernels import utils

        self._utils = utils
        self._saved = (JITFunction.run, utils.sm_count, utils.INTERPRETED)
        backend = make_backend(TARGET)
        launches = self.launches

        def run(kernel, *args, grid, warmup, **kwargs):
            kwargs.setdefault("debug", False)
            binder = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound_args, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization,
                                                                      options)
            launch = Launch(kernel, tuple(grid), dict(bound_args), signature, constexprs, attrs, options)
            if warmup:  # the wrapper asks for the build (to size its grid): compile it, launch nothing
                compiled = compile_launch(launch)
                return SimpleNamespace(n_regs=compiled.regs, metadata=SimpleNamespace(
                    shared=compiled.shared, num_warps=compiled.num_warps))
            launches.append(launch)
            return None

        JITFunction.run = run
        utils.sm_count = lambda device: self.sms
        utils.INTERPRETED = False
        return self

    def __exit__(self, *exc):
        JITFunction.run, self._utils.sm_count, self._utils.INTERPRETED = self._saved
        return False


def capture_case(work: Workload, direction: str, mode: str, stats: bool, need_edge_out: bool,
                 dtype: torch.dtype, heads: int, head_dim: int, features: int = 0) -> list[Launch]:
    """The launches one pass makes on this workload (meta tensors, real CSR row pointers); features
    F > 0: the in-operator projection (a [E, F], W^T [F, H*D] and b [H*D] in fp32)."""
    from magnn_kernels.edge_attention_bwd import edge_attention_backward
    from magnn_kernels.edge_attention_fwd import edge_attention_forward

    n, num_edges = work.num_nodes, work.num_edges
    meta = torch.device("meta")
    rowptr, rev_rowptr = _rowptr(work.in_degree), _rowptr(work.out_degree)
    col, perm, rev_col, rev_perm = (torch.empty(num_edges, dtype=torch.long, device=meta) for _ in range(4))
    q, k, v, node_out = (torch.empty(n, heads, head_dim, dtype=dtype, device=meta) for _ in range(4))
    e = torch.empty(num_edges, heads, head_dim, dtype=dtype, device=meta)
    proj = None
    if features:
        proj = (torch.empty(features, heads * head_dim, dtype=torch.float32, device=meta),
                torch.empty(heads * head_dim, dtype=torch.float32, device=meta))
    edge_in = torch.empty(num_edges, features, dtype=dtype, device=meta) if features else e
    with capture_launches() as cap:
        if direction == "fwd":
            edge_attention_forward(q, k, v, edge_in, rowptr, col, perm, None, None, None, None, mode, "none", None,
                                   0.0, 0, 7 if stats else -1, need_edge_out, proj=proj)
        else:
            lse = torch.empty(n, 2, heads, dtype=torch.float32, device=meta)
            grad_edge = torch.empty_like(e) if need_edge_out or not features else None
            edge_attention_backward(node_out, grad_edge, None, q, k, v, edge_in, lse, node_out, rowptr, col,
                                    perm, rev_rowptr, rev_col, rev_perm, None, None, None, None, mode, "none",
                                    None, 0.0, 0, **({"proj": proj} if features else {}))
    return cap.launches


# ---------------------------------------------------------------------------
# compile and read
# ---------------------------------------------------------------------------

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)')
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")
_EDGE_ACCESS = re.compile(r"tl\.(load|store)\(\s*\w+_ptr \+ eid_off")
_RARE = re.compile(r"#\s*static-model: rare")


def _source_lines(pattern: re.Pattern) -> set[tuple[str, int]]:
    """(file name, line) of the kernels' source lines that match."""
    lines = set()
    for path in (REPO / "magnn_kernels").glob("edge_attention*.py"):
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(text):
                lines.add((path.name, number))
    return lines


def _edge_lines() -> set[tuple[str, int]]:
    """Every [E, H, D] edge-tensor access (a `..._ptr + eid_off` load or store)."""
    return _source_lines(_EDGE_ACCESS)


@dataclass
class Instr:
    addr: int
    op: str
    line: Optional[tuple[str, int]]
    text: str
    rare: bool = False  # inside a branch over a block marked rare in the source


@dataclass
class Compiled:
    name: str
    regs: int
    spill_bytes: int  # local memory per thread (spills and stack)
    shared: int
    num_warps: int
    instructions: list[Instr]
    loops: list[tuple[int, int]] = field(default_factory=list)  # tile loops (start, end) instruction indices


def parse_sass(text: str) -> tuple[list[Instr], list[tuple[int, int]]]:
    """Instructions (with their source line) and the tile loops: the innermost backward-branch
    loops that contain a global load."""
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    line = None
    branches = []
    for raw in text.splitlines():
        found = _LINE.search(raw)
        if found:
            line = (os.path.basename(found.group(1)), int(found.group(2)))
            continue
        label = _LABEL.match(raw)
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        ins = _INSTR.search(raw)
        if ins:
            op = ins.group(3)
            if op in ("BRA", "JMP") or op.startswith("BRA."):
                tgt = _TARGET.search(raw)
                if tgt:
                    branches.append((len(instrs), tgt.group(1)))
            instrs.append(Instr(int(ins.group(1), 16), op, line, raw.strip()))
    loops = []
    for at, label in branches:
        start = labels.get(label)
        if start is not None and start <= at:
            loops.append((start, at))
    # a forward branch over code of a block the kernel source marks `# static-model: rare` (taken
    # on few tiles, e.g. a first-tile setup or an overflow path): that code is off the common path
    rare_lines = _source_lines(_RARE)
    for at, label in branches:
        end = labels.get(label)
        region = instrs[at + 1:end] if end is not None and end > at else []
        # (a branch over a whole tile, e.g. a loop guard, loads: never rare)
        if any(i.line in rare_lines for i in region) and not any(i.op.startswith("LDG") for i in region):
            for i in region:
                i.rare = True
    def has_load(lo, hi):
        return any(i.op.startswith("LDG") for i in instrs[lo:hi + 1])
    tile_loops = []
    for lo, hi in set(loops):
        if not has_load(lo, hi):
            continue
        nested = any((a, b) != (lo, hi) and lo <= a and b <= hi and has_load(a, b) for a, b in loops)
        if not nested:
            tile_loops.append((lo, hi))
    return instrs, sorted(tile_loops)


_CACHE: dict[str, Compiled] = {}


def compile_launch(launch: Launch) -> Compiled:
    key = launch.key()
    if key in _CACHE:
        return _CACHE[key]
    kernel = triton.compile(ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs),
                            target=TARGET, options=launch.options.__dict__)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", "-g", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    regs = int(re.search(r"REG:(\d+)", usage).group(1))
    local = int(re.search(r"LOCAL:(\d+)", usage).group(1)) + int(re.search(r"STACK:(\d+)", usage).group(1))
    instrs, loops = parse_sass(sass)
    compiled = Compiled(launch.name, regs, local, int(kernel.metadata.shared), int(kernel.metadata.num_warps),
                        instrs, loops)
    _CACHE[key] = compiled
    return compiled


def occupancy(regs: int, shared: int, num_warps: int, hw: dict = H100_SXM) -> dict:
    """Resident CTAs per SM and the share of the SM's warp slots they fill (the arithmetic of
    magnn_kernels.utils.resident_ctas, which sizes the persistent grids, with these limits)."""
    unit = hw["reg_alloc_unit_per_warp"]
    per_warp = max(unit, math.ceil(regs * hw["warp_size"] / unit) * unit)
    warps_by_regs = (hw["regs_per_scheduler"] // per_warp) * hw["schedulers_per_sm"]
    by_regs = warps_by_regs // num_warps
    by_warps = hw["max_warps_per_sm"] // num_warps
    by_smem = hw["max_ctas_per_sm"] if shared == 0 else hw["smem_per_sm"] // (shared + hw["smem_reserved_per_cta"])
    ctas = max(0, min(by_regs, by_warps, by_smem, hw["max_ctas_per_sm"]))
    limiter = min((by_regs, "registers"), (by_smem, "shared memory"), (by_warps, "warps"))[1]
    return dict(ctas_per_sm=ctas, warps_per_sm=ctas * num_warps, occupancy=ctas * num_warps / hw["max_warps_per_sm"],
                limited_by=limiter)


def instruction_mix(instrs: list[Instr], edge_lines: set) -> dict:
    mix: dict[str, int] = {}
    edge = {"loads": {}, "stores": {}}
    for ins in instrs:
        op = ins.op
        if op.startswith(("LDG", "STG", "ATOMG", "ATOM", "RED", "BAR", "SHFL", "LDS", "STS", "ATOMS")):
            mix[op] = mix.get(op, 0) + 1
        if ins.line in edge_lines and op.startswith(("LDG", "STG")):
            side = edge["loads"] if op.startswith("LDG") else edge["stores"]
            side[op] = side.get(op, 0) + 1
    families = dict(
        instructions=len(instrs),
        global_loads=sum(v for k, v in mix.items() if k.startswith("LDG")),
        global_stores=sum(v for k, v in mix.items() if k.startswith("STG")),
        atomics=sum(v for k, v in mix.items() if k.startswith(("ATOM", "RED")) and not k.startswith("ATOMS")),
        shared_atomics=sum(v for k, v in mix.items() if k.startswith("ATOMS")),
        shared_loads=sum(v for k, v in mix.items() if k.startswith("LDS")),
        shared_stores=sum(v for k, v in mix.items() if k.startswith("STS")),
        barriers=sum(v for k, v in mix.items() if k.startswith("BAR")),
        shuffles=sum(v for k, v in mix.items() if k.startswith("SHFL")),
    )
    return dict(families, by_opcode=dict(sorted(mix.items())), edge_access=edge)


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


def _work(launch: Launch) -> dict:
    """Work items and edge tiles of a launch, from its (real) row plan."""
    kw = launch.kwargs
    cx = launch.constexpr_values()
    block_e = cx.get("BLOCK_E")
    if "pack_nodes_ptr" in kw:  # short rows packed ROWS x SLOTS to a tile: one tile per group
        nodes = kw["pack_nodes_ptr"]
        nodes = nodes[nodes >= 0]
        edges = int((kw["rowptr_ptr"][nodes + 1] - kw["rowptr_ptr"][nodes]).sum())
        groups = int(kw["num_groups"])
        lanes = groups * cx["ROWS"] * cx["SLOTS"]
        return dict(items=groups, tiles=groups, edges=edges, lanes=lanes, lanes_busy=edges / max(lanes, 1))
    if "item_node_ptr" in kw and block_e:
        items = int(kw["num_items"])
        if cx.get("PARTIAL"):
            length = kw["item_end_ptr"] - kw["item_start_ptr"]
        else:
            rowptr = kw.get("rowptr_ptr") if "rowptr_ptr" in kw else kw["rev_rowptr_ptr"]
            nodes = kw["item_node_ptr"]
            length = rowptr[nodes + 1] - rowptr[nodes]
        tiles = int(((length + block_e - 1) // block_e).sum())
        edges = int(length.sum())
        return dict(items=items, tiles=tiles, edges=edges, lanes=tiles * block_e,
                    lanes_busy=edges / max(tiles * block_e, 1))
    # merge / segment-sum kernels: one program per split row, a loop over its chunks
    seg = kw.get("seg_ptr_ptr")
    chunks = int(seg[-1]) if seg is not None and seg.device.type == "cpu" and seg.numel() else 0
    return dict(items=int(launch.grid[0]), tiles=chunks, edges=0, lanes=0, lanes_busy=None)


def access_bytes(op: str) -> int:
    """Bytes one thread moves with a global load / store opcode (LDG.E.128: 16, LDG.E.U16: 2, ...)."""
    for suffix, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in op:
            return size
    return 4


def model_launch(launch: Launch, hw: dict = H100_SXM) -> dict:
    compiled = compile_launch(launch)
    work = _work(launch)
    in_loops = [i for lo, hi in compiled.loops for i in compiled.instructions[lo:hi + 1]]
    loop_instr_list = [i for i in in_loops if not i.rare]  # the common path of a tile
    rest = len(compiled.instructions) - len(in_loops)
    warps = compiled.num_warps
    warp_instr = warps * (work["tiles"] * len(loop_instr_list) + work["items"] * rest)
    issue_s = warp_instr / (hw["sms"] * hw["schedulers_per_sm"] * hw["clock_hz"])
    occ = occupancy(compiled.regs, compiled.shared, warps, hw)
    # the [E, H, D] bytes the tile loops stream (every edge load / store of a tile, each thread)
    per_tile = sum(access_bytes(i.op) for i in loop_instr_list if i.line in _EDGE_LINES and i.op.startswith(("LDG", "STG")))
    edge_bytes = work["tiles"] * per_tile * warps * hw["warp_size"]
    cx = launch.constexpr_values()
    return dict(
        kernel=compiled.name, grid=list(launch.grid), num_warps=warps,
        constexprs={k: (v if isinstance(v, (int, float, bool, str)) else str(v)) for k, v in cx.items()},
        regs=compiled.regs, spill_bytes=compiled.spill_bytes, shared_bytes=compiled.shared, **occ,
        persistent_ctas_per_sm=launch.grid[0] / hw["sms"] if work["items"] > launch.grid[0] else None,
        tile_loops=len(compiled.loops), tile_loop=instruction_mix(loop_instr_list, _EDGE_LINES),
        tile_loop_rare_instructions=len(in_loops) - len(loop_instr_list),
        kernel_instructions=len(compiled.instructions), **work,
        warp_instructions=warp_instr, issue_ms=issue_s * 1e3, edge_stream_bytes=edge_bytes,
    )


def min_bytes(work: Workload, direction: str, mode: str, stats: bool, need_edge_out: bool, itemsize: int,
              heads: int, head_dim: int, features: int = 0) -> int:
    """Fewest bytes the pass moves: each tensor read or written once (with the projection, F > 0: the
    raw features a [E, F] in place of e, no de; the backward's grad_edge only with need_edge_out)."""
    n, num_edges, c = work.num_nodes, work.num_edges, heads * head_dim
    if features:
        csr = 2 * num_edges * 8 + (n + 1) * 8
        lse = n * 2 * heads * 4
        if direction == "fwd":
            total = (4 * n * c + num_edges * (features + c * int(need_edge_out))) * itemsize + lse + csr
            return total + (num_edges * 12 if stats else 0)
        return (8 * n * c + num_edges * (features + c * int(need_edge_out))) * itemsize + lse + 2 * csr
    csr = 2 * num_edges * 8 + (n + 1) * 8  # col, perm, rowptr (int64)
    lse = n * 2 * heads * 4
    if direction == "fwd":
        total = (4 * n * c + num_edges * c * (1 + int(need_edge_out))) * itemsize + lse + csr
        if stats:
            total += num_edges * 12  # row_ratio, row_max (fp32), row_argc (int32)
        return total
    # backward: q, k, v, node_out, grad_node, dq, dk, dv; e, grad_edge, de; lse; both CSRs
    return (8 * n * c + 3 * num_edges * c) * itemsize + lse + 2 * csr


def min_edge_bytes(work: Workload, direction: str, need_edge_out: bool, itemsize: int, channels: int,
                   features: int = 0) -> int:
    """The [E, H, D] part of min_bytes: e (+ edge_out) forward; e, grad_edge, de backward. With the
    projection (F > 0) only edge_out / grad_edge (with need_edge_out) are [E, H, D] tensors."""
    streams = (1 + int(need_edge_out)) if direction == "fwd" else 3
    if features:
        streams = int(need_edge_out)
    return streams * work.num_edges * channels * itemsize


def model(workloads: list[str], dtype: str = "bf16", heads: int = 8, head_dim: int = 8,
          cases=CASES) -> dict:
    hw = H100_SXM
    out = dict(schema=SCHEMA, label=LABEL, constants=hw, target="sm_90", triton=triton.__version__,
               torch=torch.__version__, dtype=dtype, heads=heads, head_dim=head_dim, workloads={})
    for name in workloads:
        work = workload(name)
        rows = {}
        for case, direction, mode, stats, need_edge_out, *proj in cases:
            features = proj[0] if proj else 0
            launches = capture_case(work, direction, mode, stats, need_edge_out, DTYPES[dtype], heads, head_dim,
                                    features)
            modelled = [model_launch(launch, hw) for launch in launches]
            issue_ms = sum(m["issue_ms"] for m in modelled)
            itemsize = DTYPES[dtype].itemsize
            nbytes = min_bytes(work, direction, mode, stats, need_edge_out, itemsize, heads, head_dim, features)
            roofline_ms = nbytes / hw["hbm_bytes_per_s"] * 1e3
            # the bytes the code streams: its edge-tensor traffic (from the SASS) in place of the
            # minimal edge traffic, the rest (nodes, CSR, statistics rows) as in the minimum
            min_edge = min_edge_bytes(work, direction, need_edge_out, itemsize, heads * head_dim, features)
            streamed = nbytes - min_edge + sum(m["edge_stream_bytes"] for m in modelled)
            stream_ms = streamed / hw["hbm_bytes_per_s"] * 1e3
            estimate = max(issue_ms, stream_ms, roofline_ms)
            # the share of tile lanes that hold an edge, over every launch that walks edge tiles
            tiled = [m for m in modelled if m["lanes"]]
            lanes_busy = (sum(m["edges"] for m in tiled) / sum(m["lanes"] for m in tiled)) if tiled else None
            rows[case] = dict(direction=direction, mode=mode, stats=stats, need_edge_out=need_edge_out,
                              edge_features=features,
                              launches=modelled, issue_ms=issue_ms, min_bytes=nbytes, roofline_ms=roofline_ms,
                              streamed_bytes=streamed, stream_ms=stream_ms, estimate_ms=estimate, lanes_busy=lanes_busy,
                              roofline_share_at_best=roofline_ms / estimate)
        out["workloads"][name] = dict(num_nodes=work.num_nodes, num_edges=work.num_edges, note=work.note,
                                      cases=rows)
    return out


_EDGE_LINES = _edge_lines()


def table(result: dict) -> str:
    lines = [f"# {result['label']}", f"# H100 SXM constants: {json.dumps(result['constants'])}",
             f"# dtype {result['dtype']}, H = {result['heads']}, D = {result['head_dim']}, triton {result['triton']}",
             "| workload | case | kernel (main launch) | regs | spill B | smem B | occ | loop instr | edge LDG / STG "
             "| atom | BAR | SHFL | lanes busy | issue ms | stream ms | roofline ms | share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for wname, w in result["workloads"].items():
        for case, row in w["cases"].items():
            main = max(row["launches"], key=lambda m: m["issue_ms"]) if row["launches"] else None
            if main is None:
                continue
            loop = main["tile_loop"]
            edge = loop["edge_access"]
            ldg = ",".join(f"{k}x{v}" for k, v in sorted(edge["loads"].items())) or "-"
            stg = ",".join(f"{k}x{v}" for k, v in sorted(edge["stores"].items())) or "-"
            busy = "-" if row.get("lanes_busy") is None else f"{row['lanes_busy']:.0%}"
            lines.append(
                f"| {wname} | {case} | {main['kernel'].strip('_')} | {main['regs']} | {main['spill_bytes']} "
                f"| {main['shared_bytes']} | {main['occupancy']:.0%} | {loop['instructions']} | {ldg} / {stg} "
                f"| {loop['atomics']} | {loop['barriers']} | {loop['shuffles']} | {busy} | {row['issue_ms']:.3g} "
                f"| {row['stream_ms']:.3g} | {row['roofline_ms']:.3g} | {row['roofline_share_at_best']:.0%} |")
    return "\n".join(lines)


def summary(result: dict) -> dict:
    """The times of every workload and case (no launch details), with what they were made from."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        commit = None
    keep = ("issue_ms", "stream_ms", "roofline_ms", "estimate_ms", "min_bytes", "lanes_busy")
    return dict(schema=SCHEMA, label=result["label"], commit=commit, triton=result["triton"],
                constants=result["constants"], dtype=result["dtype"], heads=result["heads"],
                head_dim=result["head_dim"],
                workloads={name: {case: {k: (round(row[k], 4) if isinstance(row[k], float) else row[k]) for k in keep}
                                  for case, row in w["cases"].items()}
                           for name, w in result["workloads"].items()})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu/static.py", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=8)
    parser.add_argument("--cases", default=None, help="comma-separated subset of the case names")
    parser.add_argument("--json", default=None, help="write the full model here")
    parser.add_argument("--summary", default=None,
                        help="write per workload and case only the times here (benchmarks/gpu/static_estimates.json "
                             "is what the GPU check prints beside its measurements)")
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cases = CASES
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",")]
        cases = tuple(c for c in CASES if c[0] in wanted)
    result = model(args.workloads, args.dtype, args.heads, args.head_dim, cases)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary(result), indent=1) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
