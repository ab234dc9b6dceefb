"""Full-batch training on an ogbn-proteins-sized graph: memory plan, measured peaks, step time.

    python benchmarks/proteins_fullbatch.py --plan                  # predicted peak per model at real size
    python benchmarks/proteins_fullbatch.py --validate --json out.json   # plan vs measured CPU peaks, 3 sizes
    python benchmarks/proteins_fullbatch.py --measure --device cuda --model gt --dtype bf16 \\
        [--checkpointing] [--no-fused] [--nodes N --degree D] --json PATH
    python benchmarks/proteins_fullbatch.py --model gt --device cuda --dtype bf16   # time + stats overhead
    python benchmarks/proteins_fullbatch.py --real /tmp/proteins-full --phase load|detect|step --model gt \
        --json PATH     # the real-size synthetic folder through ogb's loader, on CPU (fp32, cpu backend)

The graph is `magnn.data.synthetic_proteins_graph` (heavy-tailed degrees; the
real size is N = 132,534 nodes and 79,122,504 directed edges, mean in-degree
597). The model is the `paper` ogbn-proteins preset (3 layers, 8 heads,
hidden 64 for GT and 88 for GraphiT/SAN, species-only node input, one shared
Linear(8, hidden) edge embedding for every layer). A step is forward with
`magnn.stats.collect` on every layer, BCE on the train nodes, backward and
an Adam update.

The memory plan (`plan_step`) counts the tensors one step holds at its peak,
by kind: node (node inputs and activations), edge (edge inputs, the CSR
built in forward, edge tensors alive only around one kernel call),
saved-for-backward (the [E, hidden] tensors autograd keeps), optimizer
(parameters, gradients, Adam moments) and statistics (the per-edge rows the
kernels reduce in). Its edge terms follow the fused kernels (cpu/triton
backends): they never materialise [E, H, D] intermediates beyond the layer's
edge projection e_l, edge_out (forward only) and de (backward only).
`fused_edge_projection=True` (magnn.models) folds the shared edge Linear into
each layer's projection, so the [E, hidden] shared embedding, and its
gradient, never exist.

In-kernel projection (issue 24; `in_kernel=True`, the default with fused): the
layers hand the raw [E, 8] features and one composed [hidden, 8] matrix to the
operator, which forms e_l per edge inside the kernels (cpu today; triton after
its kernel restructure, until then it forms e_l unfused, which is the
`in_kernel=False` row). Then no [E, hidden] tensor exists at all in a step of
the paper models (they drop every layer's edge_out): the edge terms are the
inputs, the CSR, the kernels' per-edge scratch (forward: logits [E, H] fp32 +
endpoints [E, 2] int64; backward: [E, 2, H] fp32) and the statistics' rows;
under bf16 autocast each layer keeps a bf16 copy of the raw features for its
backward.

`--real ROOT --phase P`: one model, one phase, in this process (run it under
`/usr/bin/time -v`, one model at a time): `load` (ogb's loader on the folder
that `magnn.data.write_ogb_proteins_raw` wrote; the first load processes it),
`detect` (full-batch forward in eval mode under `magnn.stats.collect`:
statistics on every layer, no autograd) or `step` (one full-batch training
step: forward with statistics, BCE on the train nodes, backward, Adam). It
prints the phase's time, the process's peak RSS (VmHWM) and the RSS before
the phase, beside the plan's prediction (`plan_detect` / `plan_step`).

CPU measurement: each configuration runs in a fresh subprocess with
MALLOC_MMAP_THRESHOLD_=65536 (large blocks are mmapped and returned to the
OS on free, so the resident set follows the live tensors); after one warm-up
step (Adam's moments exist from then on) the kernel's peak-RSS mark is reset
(/proc/self/clear_refs) and one more step runs. "measured step increment" is
the peak RSS of that step minus the RSS just before it, which the plan
predicts as its peak minus what exists before a step (inputs, parameters,
optimizer). On CUDA, torch.cuda.max_memory_allocated gives the peak directly.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from procstatus import status_kib  # benchmarks/procstatus.py, beside this script

REAL_NODES = 132_534
REAL_EDGES = 79_122_504  # directed
HIDDEN = {"gt": 64, "graphit": 88, "san": 88}
HEADS, LAYERS, TASKS, EDGE_FEATURES = 8, 3, 112, 8
GIB = 2 ** 30
# CPU validation sizes: proteins-like heavy-tailed degrees, scaled down so one measured step
# stays under ~6 GB on a machine shared by six engineers (the real mean in-degree is 597)
VALIDATION_SIZES = ((5_000, 100), (10_000, 100), (20_000, 60))


# -- the plan ---------------------------------------------------------------------------

def parameter_count(model: str, hidden: int, layers: int = LAYERS, species: int = 8) -> int:
    """Parameters of the paper preset (counted from the architecture, see magnn.models)."""
    d = hidden
    attention = 4 * (d * d)  # q, k, v, e projections (no bias without EBT)
    if model == "san":
        attention += 3 * d * d  # the fake-edge q2, k2, e2 (idle with real edges only)
    node_stream = (d * d + d) + 2 * d + (d * 2 * d + 2 * d) + (2 * d * d + d) + 2 * d  # O_h, BN, FFN, BN
    head = (d * (d // 2) + d // 2) + ((d // 2) * (d // 4) + d // 4) + ((d // 4) * TASKS + TASKS)
    return species * d + (EDGE_FEATURES * d + d) + layers * (attention + node_stream) + head


def plan_step(model: str, nodes: int = REAL_NODES, edges: int = REAL_EDGES, *, hidden: int | None = None,
              heads: int = HEADS, layers: int = LAYERS, dtype: str = "bf16", checkpointing: bool = False,
              fused: bool = False, stats: bool = True, in_kernel: bool | None = None) -> dict:
    """Predicted peak bytes of one full-batch training step, by kind (see the module docstring).
    in_kernel (default: = fused): the edge projection runs inside the operator (issue 24)."""
    in_kernel = fused if in_kernel is None else in_kernel
    if in_kernel and not fused:
        raise ValueError("the in-kernel projection needs fused=True (one [hidden, 8] matrix per layer)")
    if in_kernel:
        return _plan_step_in_kernel(model, nodes, edges, hidden=hidden, heads=heads, layers=layers, dtype=dtype,
                                    checkpointing=checkpointing, stats=stats)
    N, E, H, L = nodes, edges, heads, layers
    D = hidden or HIDDEN[model]
    b = 2 if dtype == "bf16" else 4  # activation bytes (parameters stay fp32)
    dropout = model in ("graphit", "san")
    ede = b * D * E  # one [E, hidden] activation
    P = parameter_count(model, D, L)

    # before the step: inputs, parameters, optimizer
    node_inputs = N * (EDGE_FEATURES * 4 + 8 + TASKS * 4 + 3)  # x, species, y, three masks
    edge_inputs = E * (2 * 8 + EDGE_FEATURES * 4)  # edge_index int64, edge_attr fp32
    optimizer = 4 * P * 4  # parameters, gradients, Adam's two moments (fp32)
    # built in forward: the CSR and its reverse (perm, col, rev_perm, rev_col: int64 per edge)
    csr = 4 * 8 * E + 2 * 8 * (N + 1)
    # node activations saved per layer: q, k, v, node_out, O_h, FFN (2 x 2D), dropout masks in bf16/fp32
    # plus BatchNorm's fp32 inputs/outputs under autocast
    node_layer = N * D * (10 * b + (16 if b == 2 else 8) + (2 if dropout else 0))
    head_tensors = N * TASKS * 4 * 4  # logits, sigmoid, grads
    cast = E * EDGE_FEATURES * 2 if b == 2 else 0  # autocast's bf16 copy of edge_attr for a Linear
    # one kernel call's transients: forward logits [E, H] fp32 + endpoints [E, 2] int64;
    # backward edge gradient scratch [E, 2, H] fp32 + endpoints
    fwd_scratch = E * (4 * H + 16)
    bwd_scratch = E * (8 * H + 16)
    stats_rows = (E * (4 + 4 + 16)) if stats else 0  # row_ratio, row_max_abs, histogram bin ids

    shared = 0 if fused else ede  # the shared edge embedding e0 (alive the whole step)
    casts = (L * cast) if fused else cast  # fused: each layer's projection casts the raw features
    if not checkpointing:
        saved_edges = shared + L * ede + casts
        saved_nodes = L * node_layer
        # forward peak: the last layer's call (edge_out + scratch + statistics)
        forward_transient = ede + fwd_scratch + stats_rows
        # backward peak: the last layer's kernel backward, de and its scratch beside every saved
        # tensor; autograd frees that layer's e_l before lin_e's backward sends de on to e0 (unfused),
        # so e0's incoming and accumulated gradients take the room of the freed e_l
        backward_transient = ede + bwd_scratch
    else:
        # only layer inputs are kept; one layer at a time is recomputed in backward
        saved_edges = shared + casts
        saved_nodes = L * N * D * b + node_layer
        forward_transient = 2 * ede + fwd_scratch + stats_rows  # e_l and edge_out of the running layer
        # a lower layer's backward: its recomputed e_l, de and scratch, and (unfused) e0's
        # accumulated gradient from the layers above
        backward_transient = ede + ede + (ede if not fused else 0) + bwd_scratch
    transient = max(forward_transient, backward_transient)
    at_forward = forward_transient >= backward_transient
    parts = {
        "node": node_inputs + head_tensors,
        "edge": edge_inputs + csr + (transient - (stats_rows if at_forward else 0)),
        "saved_for_backward": saved_edges + saved_nodes,
        "optimizer": optimizer,
        "statistics": stats_rows if at_forward else 0,
    }
    total = sum(parts.values())
    before_step = node_inputs + edge_inputs + optimizer
    return {"model": model, "nodes": N, "edges": E, "hidden": D, "heads": H, "layers": L, "dtype": dtype,
            "checkpointing": checkpointing, "fused_edge_projection": fused, "parameters": P,
            "parts_bytes": parts, "peak_bytes": total, "step_increment_bytes": total - before_step,
            "peak_at": "forward" if at_forward else "backward"}


def _common_terms(model, nodes, edges, hidden, heads, layers, dtype):
    N, E, H, L = nodes, edges, heads, layers
    D = hidden or HIDDEN[model]
    b = 2 if dtype == "bf16" else 4
    P = parameter_count(model, D, L)
    return dict(
        N=N, E=E, H=H, L=L, D=D, b=b, P=P,
        node_inputs=N * (EDGE_FEATURES * 4 + 8 + TASKS * 4 + 3),
        edge_inputs=E * (2 * 8 + EDGE_FEATURES * 4),  # edge_index, edge_attr fp32 (edge_type is a stride-0 view)
        optimizer=4 * P * 4,
        fwd_scratch=E * (4 * H + 8),    # C++ forward: logits [E, H] fp32 + endpoints [E, 2] int32
        # the C++ kernels' statistics rows: row_ratio, row_max_abs (fp32) and EdgeStats' massive-row mask
        stats_rows=E * (4 + 4 + 1),
        raw_copy=E * EDGE_FEATURES * 2 if b == 2 else 0,  # a layer's bf16 copy of the raw features
    )


def _plan_step_in_kernel(model, nodes, edges, *, hidden, heads, layers, dtype, checkpointing, stats) -> dict:
    """plan_step with the edge projection inside the operator: no [E, hidden] tensor in the step."""
    t = _common_terms(model, nodes, edges, hidden, heads, layers, dtype)
    N, E, H, L, D, b = t["N"], t["E"], t["H"], t["L"], t["D"], t["b"]
    dropout = model in ("graphit", "san")
    csr = 4 * 8 * E + 2 * 8 * (N + 1)
    node_layer = N * D * (10 * b + (16 if b == 2 else 8) + (2 if dropout else 0))
    head_tensors = N * TASKS * 4 * 4
    stats_rows = t["stats_rows"] if stats else 0
    bwd_scratch = E * 8 * H  # C++ backward: a and dl per (edge, head), [E, 2, H] fp32
    if not checkpointing:
        saved_edges = L * t["raw_copy"]
        saved_nodes = L * node_layer
    else:
        saved_edges = 0
        saved_nodes = L * N * D * b + node_layer
    forward_transient = t["fwd_scratch"] + stats_rows + t["raw_copy"]
    backward_transient = bwd_scratch + (t["raw_copy"] if checkpointing else 0)
    at_forward = forward_transient >= backward_transient
    transient = max(forward_transient, backward_transient)
    parts = {
        "node": t["node_inputs"] + head_tensors,
        "edge": t["edge_inputs"] + csr + (transient - (stats_rows if at_forward else 0)),
        "saved_for_backward": saved_edges + saved_nodes,
        "optimizer": t["optimizer"],
        "statistics": stats_rows if at_forward else 0,
    }
    total = sum(parts.values())
    before_step = t["node_inputs"] + t["edge_inputs"] + t["optimizer"]
    return {"model": model, "nodes": N, "edges": E, "hidden": D, "heads": H, "layers": L, "dtype": dtype,
            "checkpointing": checkpointing, "fused_edge_projection": True, "in_kernel_projection": True,
            "parameters": t["P"], "parts_bytes": parts, "peak_bytes": total,
            "step_increment_bytes": total - before_step, "peak_at": "forward" if at_forward else "backward"}


def plan_detect(model: str, nodes: int = REAL_NODES, edges: int = REAL_EDGES, *, hidden: int | None = None,
                heads: int = HEADS, layers: int = LAYERS, dtype: str = "fp32") -> dict:
    """Predicted peak bytes of full-batch detection (eval forward, statistics on every layer, no
    autograd) with the in-kernel projection: inputs, the forward CSR (rowptr, col, perm; no reverse
    CSR without autograd), one layer's node activations, one kernel call's scratch and the
    statistics' rows (each layer's [E] ratios are folded into its collector and dropped)."""
    t = _common_terms(model, nodes, edges, hidden, heads, layers, dtype)
    N, E, D, b = t["N"], t["E"], t["D"], t["b"]
    csr = 2 * 8 * E + 8 * (N + 1)
    node_layer = N * D * 10 * b
    parts = {"node": t["node_inputs"] + node_layer, "edge": t["edge_inputs"] + csr + t["fwd_scratch"] + t["raw_copy"],
             "statistics": t["stats_rows"], "parameters": t["P"] * 4}
    total = sum(parts.values())
    before = t["node_inputs"] + t["edge_inputs"] + t["P"] * 4
    return {"model": model, "nodes": N, "edges": E, "hidden": D, "dtype": dtype, "parts_bytes": parts,
            "peak_bytes": total, "increment_bytes": total - before}


def print_plan(limit_gb: float = 80.0) -> list[dict]:
    rows = []
    print(f"Predicted peak of one full-batch training step at real size (N = {REAL_NODES:,}, E = {REAL_EDGES:,}, "
          f"8 heads, 3 layers, bf16 autocast, statistics on), GiB")
    header = (f"{'model':8s} {'hidden':>6s} {'e-proj':>12s} {'ckpt':>5s} | {'node':>6s} {'edge':>6s} "
              f"{'saved':>6s} {'optim':>6s} {'stats':>6s} | {'peak':>6s}  fits {limit_gb:g} GB")
    print(header)
    print("-" * len(header))
    for model in ("gt", "graphit", "san"):
        for fused, in_kernel in ((False, False), (True, False), (True, True)):
            for checkpointing in (False, True):
                row = plan_step(model, checkpointing=checkpointing, fused=fused, in_kernel=in_kernel)
                parts = row["parts_bytes"]
                fits = row["peak_bytes"] <= limit_gb * 1e9
                row["fits_80GB"] = fits
                rows.append(row)
                label = "in-kernel" if in_kernel else ("yes" if fused else "no")
                print(f"{model:8s} {row['hidden']:6d} {label:>12s} {'yes' if checkpointing else 'no':>5s} | "
                      + " ".join(f"{parts[k] / GIB:6.1f}" for k in ("node", "edge", "saved_for_backward",
                                                                    "optimizer", "statistics"))
                      + f" | {row['peak_bytes'] / GIB:6.1f}  {'yes' if fits else 'NO'}")
    for model in ("gt", "graphit", "san"):
        if not any(r["fits_80GB"] for r in rows if r["model"] == model):
            raise SystemExit(f"no configuration of {model} fits in {limit_gb:g} GB")
    return rows


# -- measuring one step -------------------------------------------------------------------

def measure_step(model_name: str, device: str, dtype: str, checkpointing: bool, fused: bool, nodes: int,
                 degree: int, backend: str = "auto", steps: int = 1, stats: bool = True) -> dict:
    """One configuration, in this process: warm-up step, then `steps` measured steps."""
    import gc

    import torch

    from magnn.data import proteins_info, synthetic_proteins_graph
    from magnn.models import build_model
    from magnn.stats import collect

    dev = torch.device(device)
    began = time.perf_counter()
    data = synthetic_proteins_graph(num_nodes=nodes, num_edges_undirected=nodes * degree // 2, seed=0)
    build_seconds = time.perf_counter() - began
    info = proteins_info(int(data.species.max()) + 1)
    torch.manual_seed(0)
    model = build_model(model_name, info, preset="paper", backend=backend, checkpoint=checkpointing,
                        fused_edge_projection=fused).to(dev)
    data = data.to(dev)
    mask = data.train_mask
    optimizer = torch.optim.Adam(model.parameters(), lr=7e-4)
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(with_stats: bool) -> float:
        model.train()
        sync()
        start = time.perf_counter()
        with collect(model) if with_stats else _nothing(), autocast:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data)[mask].float(), data.y[mask])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync()
        return time.perf_counter() - start

    step(stats)  # warm-up: Adam's moments, kernel compilation, allocator growth
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the peak resident set mark
        before = status_kib("VmRSS") * 1024
    times = [step(stats) for _ in range(steps)]
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = status_kib("VmHWM") * 1024
    other = [step(not stats) for _ in range(steps)] if dev.type == "cuda" else []
    result = {
        "model": model_name, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "nodes": data.num_nodes, "directed_edges": int(data.edge_index.shape[1]),
        "degree": degree, "dtype": dtype, "checkpointing": checkpointing, "fused_edge_projection": fused,
        "backend": backend, "graph_build_seconds": round(build_seconds, 1),
        "step_seconds_median": statistics.median(times), "measured_peak_bytes": peak,
        "measured_before_step_bytes": before, "measured_step_increment_bytes": peak - before,
    }
    if other:  # stats overhead on CUDA: the same step without statistics
        result["step_seconds_without_stats_median"] = statistics.median(other)
        result["stats_overhead"] = statistics.median(times) / statistics.median(other) - 1.0
    # cpu and triton (what "auto" picks on CUDA) form each layer's edge projection inside the kernels
    in_kernel = fused and backend in ("cpu", "triton", "auto")
    result["in_kernel_projection"] = in_kernel
    predicted = plan_step(model_name, data.num_nodes, int(data.edge_index.shape[1]), dtype=dtype,
                          checkpointing=checkpointing, fused=fused, stats=stats,
                          in_kernel=in_kernel)
    result["plan"] = predicted
    key = "peak_bytes" if dev.type == "cuda" else "step_increment_bytes"
    result["plan_error"] = predicted[key] / result[f"measured_{'peak' if dev.type == 'cuda' else 'step_increment'}_bytes"] - 1
    return result


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def measure_in_subprocess(**kwargs) -> dict:
    """measure_step in a fresh interpreter (its own resident set), large blocks mmapped."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    code = ("import json, sys; sys.path.insert(0, %r); import proteins_fullbatch as p; "
            "print('RESULT ' + json.dumps(p.measure_step(**json.loads(sys.argv[1]))))") % os.path.dirname(__file__)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"measurement failed ({kwargs}): {done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def validate(models=("gt", "graphit", "san"), sizes=VALIDATION_SIZES, configs=((False, False), (True, True)),
             backend: str = "cpu", tolerance: float = 0.15) -> list[dict]:
    """Plan vs measured CPU step increments (fp32) at `sizes`; prints one line each."""
    rows = []
    for model in models:
        for nodes, degree in sizes:
            for checkpointing, fused in configs:
                result = measure_in_subprocess(model_name=model, device="cpu", dtype="fp32", checkpointing=checkpointing,
                                               fused=fused, nodes=nodes, degree=degree, backend=backend)
                rows.append(result)
                print(f"{model:8s} N={nodes:6d} E={result['directed_edges']:9d} ckpt={checkpointing!s:5s} "
                      f"fused={fused!s:5s} measured {result['measured_step_increment_bytes'] / GIB:6.3f} GiB  "
                      f"plan {result['plan']['step_increment_bytes'] / GIB:6.3f} GiB  error {result['plan_error']:+.1%}"
                      + ("" if abs(result["plan_error"]) <= tolerance else "  OUTSIDE 15%"), flush=True)
    return rows


# -- real size: the ogb folder, one model and one phase per process ---------------------------

def run_real(root: str, model_name: str, phase: str, backend: str = "cpu") -> dict:
    """One phase (load | detect | step) at the size of the folder under `root` (fp32, CPU)."""
    import gc

    import torch

    from magnn.data import load_dataset
    from magnn.models import build_model
    from magnn.stats import collect

    result = {"phase": phase, "model": model_name, "backend": backend, "threads": torch.get_num_threads(),
              "torch": torch.__version__}
    first_load = not os.path.isdir(os.path.join(root, "ogbn_proteins", "processed"))
    began = time.perf_counter()
    splits, info = load_dataset("ogbn-proteins", root=root)
    result["load_seconds"] = round(time.perf_counter() - began, 1)
    result["first_load"] = first_load
    result["load_peak_rss_bytes"] = status_kib("VmHWM") * 1024
    data = splits["train"]
    result["nodes"], result["directed_edges"] = int(data.num_nodes), int(data.edge_index.shape[1])
    if phase == "load":
        result["split_sizes"] = {name: int(getattr(data, f"{name}_mask").sum()) for name in ("train", "val", "test")}
        result["edge_features"] = int(data.edge_attr.shape[1])
        result["tasks"] = int(data.y.shape[1])
        result["species"] = int(data.species.unique().numel()) if hasattr(data, "species") else None
        degree = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
        result["in_degree"] = {"max": int(degree.max()), "median": float(degree.float().median()),
                               "mean": float(degree.float().mean()), "min": int(degree.min()),
                               "p99": float(torch.quantile(degree.float(), 0.99))}
        return result
    torch.manual_seed(0)
    model = build_model(model_name, info, preset="paper", backend=backend, fused_edge_projection=True)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # the phase's own peak from here
    before = status_kib("VmRSS") * 1024
    began = time.perf_counter()
    if phase == "detect":
        model.eval()
        with torch.no_grad(), collect(model) as stats:
            out = model(data)
        result["layers_with_statistics"] = len(stats)
        result["edge_rows_per_layer"] = sorted({int(s.rows) for s in stats.values()})
        result["max_ratio_per_layer"] = {name: s.max_ratio() for name, s in stats.items()}
    else:
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=7e-4)
        mask = data.train_mask
        with collect(model):
            out = model(data)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out[mask].float(), data.y[mask].float())
        result["forward_seconds"] = round(time.perf_counter() - began, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        result["loss"] = float(loss)
    result["seconds"] = round(time.perf_counter() - began, 1)
    result["output_shape"] = list(out.shape)
    peak = status_kib("VmHWM") * 1024
    result.update(peak_rss_bytes=peak, rss_before_bytes=before, increment_bytes=peak - before)
    E, N = result["directed_edges"], result["nodes"]
    if phase == "detect":
        plan = plan_detect(model_name, N, E, dtype="fp32")
        result["plan_increment_bytes"] = plan["increment_bytes"]
    else:
        plan = plan_step(model_name, N, E, dtype="fp32", fused=True, in_kernel=True)
        result["plan_increment_bytes"] = plan["step_increment_bytes"]
    result["plan"] = plan
    result["plan_error"] = result["plan_increment_bytes"] / result["increment_bytes"] - 1
    return result


# -- command line ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", help="print the memory plan at real size")
    mode.add_argument("--measure", action="store_true", help="measure one configuration's step (peak memory, time)")
    mode.add_argument("--validate", action="store_true", help="plan vs measured CPU peaks at three sizes")
    parser.add_argument("--model", choices=("gt", "graphit", "san"), default="gt")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing per layer")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                        help="fused_edge_projection=True (no [E, hidden] shared embedding; the default: GraphiT and "
                             "SAN need it, or --checkpointing, to fit 80 GB)")
    parser.add_argument("--nodes", type=int, default=REAL_NODES)
    parser.add_argument("--degree", type=int, default=round(REAL_EDGES / REAL_NODES),
                        help="mean directed in-degree (real: 597)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--json", default=None)
    parser.add_argument("--real", default=None, metavar="ROOT",
                        help="the folder write_ogb_proteins_raw wrote (ROOT/ogbn_proteins): run --phase on it")
    parser.add_argument("--phase", choices=("load", "detect", "step"), default="load")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.real:
        result = run_real(args.real, args.model, args.phase, backend=args.backend if args.backend != "auto" else "cpu")
        print(json.dumps({k: v for k, v in result.items() if k != "plan"}))
    elif args.plan:
        result = print_plan()
    elif args.validate:
        result = validate(models=(args.model,) if "--model" in (argv or sys.argv) else ("gt", "graphit", "san"),
                          backend=args.backend if args.backend != "auto" else "cpu")
    else:
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = measure_step(args.model, device, args.dtype, args.checkpointing, args.fused, args.nodes,
                              args.degree, backend=args.backend, steps=args.steps)
        print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
