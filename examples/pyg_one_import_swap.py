"""A PyG node-classification script where one import is swapped: magnn's TransformerConv
runs the attention on its fused kernels; everything else is plain PyG.

    python examples/pyg_one_import_swap.py --nodes 200 --epochs 20
"""
import argparse

import torch
import torch.nn.functional as F

# from torch_geometric.nn import TransformerConv
from magnn.layers import TransformerConv


class Net(torch.nn.Module):
    def __init__(self, in_channels, hidden, classes, edge_dim):
        super().__init__()
        self.conv1 = TransformerConv(in_channels, hidden, heads=2, edge_dim=edge_dim)
        self.conv2 = TransformerConv(2 * hidden, classes, heads=1, edge_dim=edge_dim)

    def forward(self, x, edge_index, edge_attr):
        x = F.elu(self.conv1(x, edge_index, edge_attr))
        return self.conv2(x, edge_index, edge_attr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.nodes, 16)
    y = (x[:, 0] > 0).long()  # a learnable label
    edge_index = torch.randint(0, args.nodes, (2, 8 * args.nodes))
    edge_attr = torch.randn(edge_index.shape[1], 4)
    model = Net(16, 32, 2, edge_dim=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(args.epochs):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x, edge_index, edge_attr), y)
        loss.backward()
        optimizer.step()
    accuracy = (model(x, edge_index, edge_attr).argmax(-1) == y).float().mean().item()
    print(f"final loss {loss.item():.4f}, train accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
