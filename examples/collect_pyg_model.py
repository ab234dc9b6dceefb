"""Massive-activation statistics of every attention layer of a PyG model with
`magnn.stats.collect`: magnn's layers report from the kernels, PyG's (GATConv here)
from their messages.

    python examples/collect_pyg_model.py --nodes 300
"""
import argparse

import torch
from torch_geometric.nn import GATConv

import magnn
from magnn.layers import TransformerConv


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1 = TransformerConv(16, 8, heads=4, edge_dim=4)
        self.attn2 = TransformerConv(32, 8, heads=4, edge_dim=4)
        self.gat = GATConv(32, 8, heads=2, add_self_loops=False)

    def forward(self, x, edge_index, edge_attr):
        x = self.attn1(x, edge_index, edge_attr).relu()
        x = self.attn2(x, edge_index, edge_attr).relu()
        return self.gat(x, edge_index)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(args.nodes, 16)
    edge_index = torch.randint(0, args.nodes, (2, 10 * args.nodes))
    edge_attr = torch.randn(edge_index.shape[1], 4)
    with magnn.stats.collect(model) as stats, torch.no_grad():
        model(x, edge_index, edge_attr)
    for name, layer_stats in stats.items():
        print(f"{name}: calls {layer_stats.calls}, max ratio {layer_stats.max_ratio():.2f}")


if __name__ == "__main__":
    main()
