"""Full-batch attention over a proteins-like graph (magnn's synthetic ogbn-proteins stand-in:
8 edge features, skewed degrees), with the edge projection formed inside the operator.

    python examples/proteins_like_full_batch.py --nodes 2000 --edges 20000
"""
import argparse

import torch

import magnn
from magnn.data import synthetic_proteins_graph
from magnn.layers import TransformerConv


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20000)
    parser.add_argument("--edges", type=int, default=400000, help="undirected edges")
    args = parser.parse_args()
    data = synthetic_proteins_graph(args.nodes, args.edges, seed=0)
    edge_attr = data.edge_attr.float()
    x = torch.randn(data.num_nodes, 8)
    graph = magnn.Graph(data.edge_index, data.num_nodes).prepare()  # validated and sorted once
    torch.manual_seed(0)
    conv = TransformerConv(8, 16, heads=4, edge_dim=edge_attr.shape[1])  # 8 < 64: in-operator projection
    with magnn.stats.collect(conv) as stats:
        out = conv(x, graph, edge_attr)
    out.square().mean().backward()
    print(f"{data.num_nodes} nodes, {graph.num_edges} edges: out {list(out.shape)}, "
          f"max ratio {stats[''].max_ratio():.2f}")


if __name__ == "__main__":
    main()
