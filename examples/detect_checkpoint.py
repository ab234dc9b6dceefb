"""MA detection on a saved checkpoint with `magnn.detect.run`: a PyG model is trained briefly,
saved, loaded back and compared with its re-initialised base (detect.json and figures in --out).

    python examples/detect_checkpoint.py --out /tmp/detect_example --graphs 8
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch_geometric.data import Data

import magnn.detect
from magnn.layers import TransformerConv


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = TransformerConv(8, 8, heads=2, edge_dim=3)
        self.conv2 = TransformerConv(16, 1, heads=1, edge_dim=3)

    def forward(self, x, edge_index, edge_attr):
        return self.conv2(self.conv1(x, edge_index, edge_attr).relu(), edge_index, edge_attr)


def graphs(count, generator):
    for _ in range(count):
        n = 12
        edge_index = torch.randint(0, n, (2, 40), generator=generator)
        yield Data(x=torch.randn(n, 8, generator=generator), edge_index=edge_index,
                   edge_attr=torch.randn(40, 3, generator=generator), y=torch.randn(n, 1, generator=generator))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("detect_example"))
    parser.add_argument("--graphs", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = list(graphs(args.graphs, torch.Generator().manual_seed(1)))
    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for graph in data:
        optimizer.zero_grad()
        F.mse_loss(model(graph.x, graph.edge_index, graph.edge_attr), graph.y).backward()
        optimizer.step()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "checkpoint.pt")
    trained = Model()
    trained.load_state_dict(torch.load(args.out / "checkpoint.pt", weights_only=True))
    result = magnn.detect.run(trained, data, base="reset", out=args.out,
                              forward=lambda m, b: m(b.x, b.edge_index, b.edge_attr))
    print("\n".join(result.summary()))


if __name__ == "__main__":
    main()
