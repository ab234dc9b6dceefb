"""What the benchmarks compare magnn's gt-mode edge attention with: the code a PyG user writes
(gather, `torch_geometric.utils.softmax`, scatter) and the same with torch-scatter. Both return
(node_out [N, H, D], the per-channel scores [E, H, D]), like `edge_attention(mode="gt")` without
statistics."""
import math


def pyg_gt_attention(q, k, v, e, edge_index, num_nodes):
    """What a PyG user writes for gt-mode attention: gather, utils.softmax, scatter."""
    from torch_geometric.utils import scatter, softmax

    src, dst = edge_index
    score = q[dst] * k[src] * e / math.sqrt(q.shape[-1])
    attention = softmax(score.sum(-1), dst, num_nodes=num_nodes)
    node_out = scatter(attention.unsqueeze(-1) * v[src], dst, dim=0, dim_size=num_nodes, reduce="sum")
    return node_out, score


def torch_scatter_gt_attention(q, k, v, e, edge_index, num_nodes):
    """The same with torch-scatter's fused scatter_softmax (where torch-scatter is installed)."""
    from torch_scatter import scatter_add, scatter_softmax

    src, dst = edge_index
    score = q[dst] * k[src] * e / math.sqrt(q.shape[-1])
    attention = scatter_softmax(score.sum(-1), dst, dim=0, dim_size=num_nodes)
    return scatter_add(attention.unsqueeze(-1) * v[src], dst, dim=0, dim_size=num_nodes), score
