"""Capture: logits bit-identical, hooks gone afterwards, graphs and features as the blocks saw
them (checked by rebuilding the edges and re-running the graph convolution)."""
import torch
import torch.nn.functional as F

from vig_pyg import create_model
from vig_pyg.diagnostics import GraphCapture, capture, graphers
from vig_pyg.graph import knn_edges


def small_vig(**kw):
    torch.manual_seed(0)
    return create_model("vig_ti", num_classes=10, img_size=32, channels=32, depth=3,
                        stem_stride=4, **kw).eval()


def small_pvig():
    torch.manual_seed(0)
    return create_model("pvig_ti", num_classes=10, img_size=128, channels=(16, 32, 48, 64),
                        blocks=(1, 1, 1, 1)).eval()


def hooks(model):
    return sum(len(g._forward_pre_hooks) + len(g.graph_conv._forward_hooks)
               for _, g in graphers(model))


def test_logits_bit_identical_and_nothing_kept():
    model = small_vig()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with GraphCapture(model) as cap:
            during = model(x)
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    assert len(cap.blocks) == 3 and hooks(model) == 0
    result = capture(model, x)
    assert torch.equal(result.logits, before) and not model.training


def test_captured_graph_and_features_are_the_blocks():
    model = small_vig()
    x = torch.randn(2, 3, 32, 32)
    blocks = capture(model, x).blocks
    for block, (name, grapher) in zip(blocks, graphers(model)):
        assert block.name == name and block.grid == (8, 8) and block.reduce_ratio == 1
        fmap = block.x_in.view(2, 8, 8, -1).permute(0, 3, 1, 2)
        with torch.no_grad():
            h = grapher.fc1(fmap.contiguous(memory_format=torch.channels_last))
            edges = knn_edges(h, grapher.k, dilation=grapher.dilation)
            assert torch.equal(block.edge_index, edges)
            nodes = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
            assert torch.allclose(block.x_conv, grapher.graph_conv(nodes, edges), atol=1e-5)
        assert block.edge_index.shape[1] == 2 * 64 * grapher.k


def test_pooled_keys_are_captured_on_their_grid():
    model = small_pvig()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        plain = model(x)
    result = capture(model, x)
    assert torch.equal(result.logits, plain)
    grids = [(b.grid, b.key_grid, b.reduce_ratio) for b in result.blocks]
    assert grids == [((32, 32), (8, 8), 4), ((16, 16), (8, 8), 2), ((8, 8), (8, 8), 1),
                     ((4, 4), (4, 4), 1)]
    first = result.blocks[0]
    assert int(first.edge_index[0].max()) < 2 * 64 and first.x_in.shape == (2 * 1024, 16)
    # the pooled keys of block 0 are the 4x4 averages of fc1's map: recompute the graph
    grapher = graphers(model)[0][1]
    fmap = first.x_in.view(2, 32, 32, 16).permute(0, 3, 1, 2)
    with torch.no_grad():
        h = grapher.fc1(fmap.contiguous(memory_format=torch.channels_last))
        edges = knn_edges(h, grapher.k, dilation=grapher.dilation, keys=F.avg_pool2d(h, 4, 4),
                          relative_pos=grapher.relative_pos)
    assert torch.equal(first.edge_index, edges)
