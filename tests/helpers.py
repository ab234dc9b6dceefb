"""Random graphs and inputs shared by the operator tests."""
from __future__ import annotations

import math
import os

import pytest
import torch

# backends CI demands (.ci/run sets cpu,triton): for those an unusable backend fails, never skips
REQUIRED_BACKENDS = {name for name in os.environ.get("MAGNN_REQUIRE_BACKENDS", "").split(",") if name}


def random_graph(num_nodes: int, num_edges: int, *, generator=None, isolated=0, self_loops=0, duplicates=0, hub=0,
                 hub_out=0):
    """edge_index [2, E] with the requested special cases mixed in, in a random caller order.

    isolated: the last `isolated` nodes get no incoming edge.
    self_loops / duplicates: that many self loops / repeated edges are appended.
    hub: node 0 gets `hub` extra incoming edges (degree larger than any block).
    hub_out: node 1 gets that many extra outgoing edges (long rows of the reverse CSR).
    """
    receivers = max(num_nodes - isolated, 1)
    src = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    dst = torch.randint(0, receivers, (num_edges,), generator=generator)
    parts = [torch.stack([src, dst])]
    if self_loops:
        nodes = torch.randint(0, receivers, (self_loops,), generator=generator)
        parts.append(torch.stack([nodes, nodes]))
    if duplicates and num_edges:
        pick = torch.randint(0, num_edges, (duplicates,), generator=generator)
        parts.append(parts[0][:, pick])
    if hub:
        parts.append(torch.stack([torch.randint(0, num_nodes, (hub,), generator=generator), torch.zeros(hub, dtype=torch.long)]))
    if hub_out:
        parts.append(torch.stack([torch.ones(hub_out, dtype=torch.long), torch.randint(0, receivers, (hub_out,), generator=generator)]))
    edge_index = torch.cat(parts, dim=1)
    perm = torch.randperm(edge_index.shape[1], generator=generator)  # caller's order is arbitrary
    return edge_index[:, perm]


def random_inputs(num_nodes, edge_index, heads, head_dim, *, dtype=torch.float64, generator=None, bias=None, ebt=None, scale=1.0):
    """(q, k, v, e, bias, ebt_params) with requires_grad set on every float input."""
    num_edges = edge_index.shape[1]

    def rand(*shape):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    q, k, v = (rand(num_nodes, heads, head_dim) for _ in range(3))
    e = rand(num_edges, heads, head_dim)
    bias_tensor = None
    if bias == "edge":
        bias_tensor = rand(num_edges)
    elif bias == "edge_head":
        bias_tensor = rand(num_edges, heads)
    ebt_params = None
    if ebt is not None:
        ebt_params = tuple(rand(heads, head_dim) for _ in range(3))
    return q, k, v, e, bias_tensor, ebt_params


def sink_gate_case(seed, dtype=torch.float64, *, ebt=None, bias=None, scale=1.0, nodes=12, edges=30, heads=2,
                   head_dim=4, isolated=2):
    """A graph with isolated nodes, self loops and duplicate edges, and its inputs for a sink / gate test:
    (edge_index, [q, k, v, e], bias, ebt_params, sink [H], gate [N, H]), sink and gate requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    edge_index = random_graph(nodes, edges, generator=gen, isolated=isolated, self_loops=2, duplicates=3)
    q, k, v, e, b, params = random_inputs(nodes, edge_index, heads, head_dim, dtype=dtype, generator=gen,
                                          bias=bias, ebt=ebt, scale=scale)
    sink = (torch.randn(heads, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    gate = torch.randn(nodes, heads, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    return edge_index, [q, k, v, e], b, params, sink, gate


def assert_compiles_like_eager(function, leaves) -> None:
    """torch.compile(function, fullgraph=True) gives eager's value and gradients with respect to `leaves`."""
    eager = function(*leaves)
    eager_grads = torch.autograd.grad(eager, leaves)
    traced = torch.compile(function, backend="aot_eager", fullgraph=True)(*leaves)
    torch.testing.assert_close(traced, eager)
    for got, want in zip(torch.autograd.grad(traced, leaves), eager_grads):
        torch.testing.assert_close(got, want)


def dense_edge_attention(q, k, v, e, edge_index, *, mode="gt", clamp=None, bias=None, ebt=None, ebt_params=None):
    """Per-node loop straight from SPEC §3, in float64: the tests' independent oracle."""
    num_nodes, heads, head_dim = q.shape
    q, k, v, e = (t.double() for t in (q, k, v, e))
    scale = 1.0 / math.sqrt(head_dim)
    src, dst = edge_index
    node_out = torch.zeros(num_nodes, heads, head_dim, dtype=torch.float64)
    edge_out = torch.zeros(e.shape, dtype=torch.float64)
    if ebt is not None:
        kb, eb, vb = (p.double() for p in ebt_params)
    for i in range(num_nodes):
        incoming = (dst == i).nonzero().reshape(-1).tolist()
        logits, messages, scores = [], [], []
        for edge in incoming:
            j = int(src[edge])
            e_ij, v_j = e[edge], v[j]
            if ebt == "edge":
                shift = ((q[i] * kb).sum(-1, keepdim=True) * scale) * eb  # beta_i * e'
            if mode == "gt":
                w = q[i] * k[j] * e_ij * scale
                if ebt == "edge":
                    w = w + shift
                    v_j = v_j + vb
                logit = w.sum(-1)
                message = v_j
                scores.append(w)
            else:
                if ebt == "edge":
                    e_ij = e_ij + shift
                    v_j = v_j + vb
                logit = (q[i] * (k[j] + e_ij)).sum(-1) * scale
                message = v_j + e_ij
                scores.append(None)
            if bias is not None:
                b = bias[edge].double()
                logit = logit + (b if b.dim() else b.expand(heads))
            logits.append(logit)
            messages.append(message)
        if ebt == "slot":
            if mode == "gt":
                logits.append((q[i] * kb * eb).sum(-1) * scale)
                messages.append(vb)
            else:
                logits.append((q[i] * (kb + eb)).sum(-1) * scale)
                messages.append(vb + eb)
        if not logits:
            continue
        stacked = torch.stack(logits)  # [deg(+1), H]
        if clamp is not None:
            stacked = stacked.clamp(-clamp, clamp)
        attention = torch.softmax(stacked, dim=0)
        for position, message in enumerate(messages):
            node_out[i] += attention[position].unsqueeze(-1) * message
        for position, edge in enumerate(incoming):
            if mode == "gt":
                edge_out[edge] = scores[position]
            else:
                edge_out[edge] = attention[position].unsqueeze(-1) * messages[position]
    return node_out, edge_out


def backend_unusable_reason(backend: str, device: torch.device, dtype=torch.float32):
    """None if `backend` runs here on `device` tensors of `dtype`, else why not; fails the test
    instead when MAGNN_REQUIRE_BACKENDS names the backend (a compiled path must not become a skip)."""
    from magnn.functional import BACKENDS

    if backend == "cpu" and device.type != "cpu":
        return "the cpu backend runs on CPU tensors"
    reason = BACKENDS[backend].reason_unavailable(device, dtype)
    if reason is not None and backend in REQUIRED_BACKENDS:
        pytest.fail(f"backend {backend!r} is required (MAGNN_REQUIRE_BACKENDS) but unusable: {reason}")
    return reason


def require_backend(backend: str, device: torch.device, dtype=torch.float32) -> None:
    """Skips the test with the reason when `backend` cannot run here (fails if it is required)."""
    reason = backend_unusable_reason(backend, device, dtype)
    if reason is not None:
        pytest.skip(f"backend {backend!r} unusable here: {reason}")


def spec_keep_hash(seed: int, edge_id: int, head: int) -> int:
    """SPEC §3's keep hash written out on Python ints: an independent oracle for edge_hash."""
    m = 0xFFFFFFFF

    def fmix(x):
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & m
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & m
        return x ^ (x >> 16)

    seed %= 2**64
    edge_id %= 2**64
    s0, s1, e0, e1 = seed & m, seed >> 32, edge_id & m, edge_id >> 32
    x = fmix(s0 ^ ((e0 * 0x9E3779B1) & m))
    x = fmix(x ^ s1 ^ ((e1 * 0x85EBCA77) & m))
    return fmix(x ^ (((head + 1) * 0xC2B2AE3D) & m))
