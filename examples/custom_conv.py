"""A new Grapher aggregator in a few lines: mean-relative aggregation.

    m_i = mean_j (x_j - x_i),   x'_i = grouped projection of [x_0, m_0, x_1, m_1, ...]

i.e. ViG's max-relative convolution with the max replaced by a mean. Registered under
"meanrel", it can be used anywhere a conv name is accepted, here in a small vig_ti.

    .venv/bin/python examples/custom_conv.py
"""
import torch
from torch_geometric.nn import MessagePassing

import vig_pyg
from vig_pyg import PatchGraph, knn_edges
from vig_pyg.conv import GroupedProjection, build_conv, register_conv


# ---------------------------------------------------------------- the layer (22 lines)
@register_conv("meanrel")
class MeanRelativeConv(MessagePassing):
    """x'_i = h([x_i interleaved with mean_j (x_j - x_i)]), h: grouped 1x1 conv+BN+act."""

    def __init__(self, in_channels, out_channels=None, groups=4, act="gelu", bias=True):
        super().__init__(aggr="mean")
        out_channels = out_channels or 2 * in_channels
        self.nn = GroupedProjection(2 * in_channels, out_channels, groups, act, bias)

    def reset_parameters(self):
        self.nn.reset_parameters()

    def forward(self, x, edge_index):
        x_src, x_dst = x if isinstance(x, (tuple, list)) else (x, x)
        m = self.propagate(edge_index, x=(x_src, x_dst), size=(len(x_src), len(x_dst)))
        return self.nn(torch.stack([x_dst, m], dim=2).flatten(1))  # interleave channels

    def message(self, x_i, x_j):
        return x_j - x_i


def main(steps: int = 8) -> float:
    torch.manual_seed(0)
    # 1. the layer on its own: feature map -> patch graph -> kNN edges -> conv -> map
    fmap = torch.randn(2, 16, 6, 6)
    graph = PatchGraph.from_feature_map(fmap)
    edge_index = knn_edges(fmap, k=5)
    conv = build_conv("meanrel", 16)
    out = graph.to_feature_map(conv(graph.x, edge_index))
    print(f"meanrel on {graph.num_nodes} nodes: {tuple(fmap.shape)} -> {tuple(out.shape)}")

    # 2. inside a (small) vig_ti, trained for a few steps on random images
    model = vig_pyg.create_model("vig_ti", num_classes=4, conv="meanrel", channels=32,
                                 depth=2, img_size=32, stem_stride=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    for step in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}")
    return loss.item()


if __name__ == "__main__":
    main()
