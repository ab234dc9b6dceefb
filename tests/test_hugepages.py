"""magnn.core.hugepages: the huge-page edge projection is F.linear, value for value and
gradient for gradient, and the advice reaches the kernel where Linux offers it."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from magnn.core import hugepages

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def big_inputs(rows=40_000, features=24, out=64, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(out, features, generator=gen, dtype=dtype).requires_grad_()
    return x, weight


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_linear_equals_f_linear_bitwise(dtype):
    x, weight = big_inputs(dtype=dtype)
    assert x.shape[0] * weight.shape[0] * x.element_size() >= hugepages.MIN_BYTES
    grad = torch.randn(x.shape[0], weight.shape[0], dtype=dtype, generator=torch.Generator().manual_seed(1))
    ours = hugepages.linear(x, weight)
    assert ours.grad_fn is not None and "HugePageLinear" in type(ours.grad_fn).__name__
    want = F.linear(x, weight)
    assert torch.equal(ours, want)
    got_grads = torch.autograd.grad(ours, (x, weight), grad)
    want_grads = torch.autograd.grad(want, (x, weight), grad)
    for got, expected in zip(got_grads, want_grads):
        assert torch.equal(got, expected)


def test_linear_falls_back_where_it_would_differ():
    x, weight = big_inputs()
    bias = torch.randn(weight.shape[0])
    for args in ((x, weight, bias), (x[:10], weight), (x.double(), weight)):
        if args[0].dtype != args[1].dtype:
            with pytest.raises(RuntimeError):  # F.linear's own error for mixed dtypes
                hugepages.linear(*args)
            continue
        out = hugepages.linear(*args)
        assert "HugePageLinear" not in type(out.grad_fn).__name__
        assert torch.equal(out, F.linear(*args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = hugepages.linear(x, weight)
        assert out.dtype == torch.bfloat16  # autocast applied, as F.linear would
    only_x = hugepages.linear(x, weight.detach())
    (grad_x,) = torch.autograd.grad(only_x.sum(), (x,))
    assert torch.equal(grad_x, torch.autograd.grad(F.linear(x, weight.detach()).sum(), (x,))[0])


def test_linear_runs_under_torch_func_transforms():
    x, weight = big_inputs()
    x, weight = x.detach(), weight.detach()
    grad = torch.func.grad(lambda w: hugepages.linear(x, w).square().sum())(weight)
    assert torch.equal(grad, torch.func.grad(lambda w: F.linear(x, w).square().sum())(weight))
    stacked = x.view(2, -1, x.shape[1])
    batched = torch.vmap(lambda rows: hugepages.linear(rows, weight))(stacked)
    assert torch.equal(batched, torch.vmap(lambda rows: F.linear(rows, weight))(stacked))


def test_project_keeps_module_hooks_and_subclasses():
    x, _ = big_inputs()
    linear = nn.Linear(x.shape[1], 64, bias=False)
    plain = hugepages.project(linear, x)
    assert "HugePageLinear" in type(plain.grad_fn).__name__
    seen = []
    handle = linear.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    hooked = hugepages.project(linear, x)
    handle.remove()
    assert seen == [torch.Size([x.shape[0], 64])] and torch.equal(hooked, plain)

    class Scaled(nn.Linear):
        def forward(self, inputs):
            return 2 * super().forward(inputs)

    scaled = Scaled(x.shape[1], 64, bias=False)
    scaled.load_state_dict(linear.state_dict())
    assert torch.equal(hugepages.project(scaled, x), 2 * plain)
    with_bias = nn.Linear(x.shape[1], 64)
    assert torch.equal(hugepages.project(with_bias, x), with_bias(x))


def vma_flags(address: int) -> dict:
    """The /proc/self/smaps fields of the mapping that holds `address`."""
    fields, inside = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
            if inside:
                fields = {}
        elif inside and ":" in head:
            fields[head.rstrip(":")] = line.split(":", 1)[1].strip()
    return fields


@pytest.mark.skipif(not THP_SETTING.exists() or "[never]" in THP_SETTING.read_text(),
                    reason="transparent huge pages are off or absent on this machine")
def test_advice_marks_the_mapping_huge_page_eligible():
    tensor = torch.empty(8 * hugepages.HUGE_PAGE // 4, dtype=torch.float32)
    assert hugepages.advise_huge_pages(tensor)
    middle = tensor.data_ptr() + tensor.nbytes // 2
    flags = vma_flags(middle)
    assert "hg" in flags.get("VmFlags", "").split(), flags  # the kernel recorded MADV_HUGEPAGE
    tensor.fill_(1.0)
    assert float(tensor.sum()) == tensor.numel()
    assert not hugepages.advise_huge_pages(torch.empty(16))  # too small: nothing asked


THP_ON = THP_SETTING.exists() and "[never]" not in THP_SETTING.read_text()


@pytest.mark.skipif(not THP_ON, reason="transparent huge pages are off or absent on this machine")
def test_cpu_backend_advises_its_edge_tensors_and_the_switch_turns_it_off(monkeypatch):
    """edge_out (forward) and de (backward) of the C++ backend lie in huge-page advised memory;
    MAGNN_NO_HUGEPAGES=1 stops the advice there and in `linear`, and changes no value."""
    import magnn
    from magnn.backends import cpu as cpu_backend
    from magnn.functional import edge_attention

    cpu_backend.build()
    gen = torch.Generator().manual_seed(3)
    # [E, H, D] float32: 41 MB, above glibc's largest mmap threshold (32 MB), so every such tensor
    # is a fresh mapping, never memory an earlier (advised) tensor left behind
    num_nodes, num_edges, heads, dim = 2_000, 160_000, 8, 8
    graph = magnn.Graph(torch.randint(0, num_nodes, (2, num_edges), generator=gen), num_nodes)
    q, k, v = (torch.randn(num_nodes, heads, dim, generator=gen) for _ in range(3))
    e = torch.randn(num_edges, heads, dim, generator=gen).requires_grad_()

    def step():
        node_out, edge_out = edge_attention(q, k, v, e, graph, backend="cpu")
        (de,) = torch.autograd.grad([node_out, edge_out], (e,), [torch.ones_like(node_out), torch.ones_like(edge_out)])
        advised = ["hg" in vma_flags(t.data_ptr() + t.nbytes // 2).get("VmFlags", "").split() for t in (edge_out, de)]
        return edge_out.detach(), de, advised

    edge_out, de, advised = step()
    assert advised == [True, True]
    monkeypatch.setenv("MAGNN_NO_HUGEPAGES", "1")
    edge_out_off, de_off, advised_off = step()
    assert advised_off == [False, False]
    assert torch.equal(edge_out, edge_out_off) and torch.equal(de, de_off)
    x, weight = big_inputs()
    assert not hugepages.advise_huge_pages(torch.empty(8 * hugepages.HUGE_PAGE // 4))
    assert "HugePageLinear" not in type(hugepages.linear(x, weight).grad_fn).__name__
