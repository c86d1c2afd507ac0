"""Every graph statistic against values computed by hand on small graphs written out here."""
import math

import pytest
import torch

from vig_pyg.diagnostics.capture import BlockGraph
from vig_pyg.diagnostics.stats import (
    block_stats, cross_image_edges, dirichlet_energy, edge_lengths, feature_diversity,
    foreground_mask, gini, homophily, in_degree, jaccard, mean_cosine, reach_max,
    self_loop_share, spatial_reach, stats_table)

# 3x3 grid, node = row*3 + col. Edges (neighbour j -> centre i):
#   centre 0: 0, 1, 4      lengths 0, 1, sqrt2
#   centre 4: 4, 0, 8      lengths 0, sqrt2, sqrt2
#   centre 8: 8, 2         lengths 0, 2
EDGES = [(0, 0), (1, 0), (4, 0), (4, 4), (0, 4), (8, 4), (8, 8), (2, 8)]
S2 = math.sqrt(2)


def grid_block(edges=EDGES, x=None, grid=(3, 3), index=0, images=1):
    ei = torch.tensor(edges, dtype=torch.long).t().contiguous()
    return BlockGraph(index, f"b{index}", images, grid, grid, 1, ei, x, x)


def pooled_block(x=None):
    # 4x4 queries, r = 2, keys 2x2 (key 0 = rows/cols 0-1, key 3 = rows/cols 2-3).
    # query 0 = (0,0) -> keys 0, 3; query 15 = (3,3) -> keys 3, 0
    ei = torch.tensor([[0, 3, 3, 0], [0, 0, 15, 15]])
    return BlockGraph(0, "p", 1, (4, 4), (2, 2), 2, ei, x, x)


def test_reach_on_the_3x3_grid():
    lengths = edge_lengths(grid_block())
    assert torch.allclose(lengths.sort().values,
                          torch.tensor([0, 0, 0, 1, S2, S2, S2, 2], dtype=torch.float64))
    reach = spatial_reach(lengths, radius=1.2)
    assert reach["reach_mean"] == pytest.approx((1 + 3 * S2 + 2) / 8)
    assert reach["reach_median"] == pytest.approx((1 + S2) / 2)    # middle two: 1, sqrt2
    assert reach["beyond"] == pytest.approx(4 / 8)                 # sqrt2 x3 and 2
    assert reach_max(lengths) == 2.0                               # centre 8's edge from 2
    assert math.isnan(reach_max(lengths[:0]))


def test_self_loops_degree_and_gini_on_the_3x3_grid():
    block = grid_block()
    assert self_loop_share(block) == pytest.approx(3 / 8)
    assert in_degree(block).tolist() == [2, 1, 1, 0, 2, 0, 0, 0, 2]
    # sum over ordered pairs |d_a - d_b|: 2s x3, 1s x2, 0s x4 ->
    # 2 * (3*2*1 + 3*4*2 + 2*4*1) = 76; G = 76 / (2 * 9 * 8)
    assert gini(in_degree(block)) == pytest.approx(76 / 144)


def test_cross_image_edges():
    # two images of the 3x3 grid (nodes 0-8 and 9-17): 2 -> 9 and 12 -> 4 cross, 10 -> 9 not
    ei = torch.tensor(EDGES + [(2, 9), (12, 4), (10, 9)]).t()
    assert cross_image_edges(BlockGraph(0, "b", 2, (3, 3), (3, 3), 1, ei)) == 2
    assert cross_image_edges(grid_block()) == 0
    # pooled keys, 4x4 queries and 2x2 keys per image: key 4 is image 1's key 0
    ei = torch.tensor([[0, 4, 7, 3], [0, 0, 16, 31]])
    assert cross_image_edges(BlockGraph(0, "p", 2, (4, 4), (2, 2), 2, ei)) == 2  # 4->0, 3->31


def test_one_hub():
    block = grid_block([(4, i) for i in range(9)])
    deg = in_degree(block)
    assert int(deg.max()) == 9
    assert gini(deg) == pytest.approx(8 / 9)             # (n - 1) / n
    assert gini(torch.full((9,), 3)) == 0                # everyone chosen equally


def test_jaccard():
    a, b = grid_block(index=0), grid_block(index=1)
    assert jaccard(b, a) == 1.0                         # two identical blocks
    c = grid_block(EDGES[2:] + [(3, 3), (5, 5)], index=2)  # 6 shared of 8 + 2 new
    assert jaccard(c, a) == pytest.approx(6 / 10)
    assert math.isnan(jaccard(grid_block(grid=(3, 4)), a))  # grids differ
    rows = stats_table([a, b])
    assert math.isnan(rows[0]["jaccard_prev"]) and rows[1]["jaccard_prev"] == 1.0


def test_diversity():
    assert feature_diversity(torch.full((9, 4), 2.5)) == 0
    assert feature_diversity(torch.tensor([[1.0, 0], [-1, 0]])) == pytest.approx(1.0)
    # mean row (2, 1); ||X - 1 mu^T||_F = sqrt2, ||X||_F = sqrt(1 + 1 + 9 + 1)
    assert feature_diversity(torch.tensor([[1.0, 1], [3, 1]])) == pytest.approx(
        math.sqrt(2) / math.sqrt(12))


def test_dirichlet_energy():
    block = grid_block()
    assert dirichlet_energy(torch.full((9, 3), 7.0), block) == 0
    x = torch.arange(9.0).view(9, 1)     # x_i = i
    # squared differences over the 8 edges: 0 1 16 0 16 16 0 36 = 85; mean x^2 = 204 / 9
    assert dirichlet_energy(x, block) == pytest.approx((85 / 8) / (204 / 9))


def test_mean_cosine():
    assert mean_cosine(torch.full((5, 3), -2.0)) == pytest.approx(1.0)
    # pairs: (a,b) 0, (a,c) 1/sqrt2, (b,c) 1/sqrt2
    x = torch.tensor([[1.0, 0], [0, 1], [1, 1]])
    assert mean_cosine(x) == pytest.approx(math.sqrt(2) / 3)


def test_homophily():
    mask = torch.zeros(1, 6, 6, dtype=torch.long)
    mask[:, :, :2] = 1                  # the left column of 2x2 patches: nodes 0, 3, 6
    # same label: (0,0) (4,4) (8,4) (8,8) (2,8); different: (1,0) (4,0) (0,4)
    assert homophily(grid_block(), mask) == pytest.approx(5 / 8)
    mask[:, 0:2, 2:4] = -1              # node 1 unknown: edge (1,0) no longer counts
    assert homophily(grid_block(), mask) == pytest.approx(5 / 7)


def test_foreground_mask_labels_ink_with_the_class():
    images = torch.zeros(2, 3, 2, 2)
    images[0, :, 0, 0] = 1.0
    mask = foreground_mask(images, torch.tensor([7, 3]))
    assert mask.tolist() == [[[8, 0], [0, 0]], [[0, 0], [0, 0]]]


def test_pooled_keys_map_to_their_centres():
    block = pooled_block()
    # key 0 centre (0.5, 0.5), key 3 centre (2.5, 2.5) on the 4x4 query grid
    expected = [math.sqrt(0.5), math.sqrt(12.5), math.sqrt(0.5), math.sqrt(12.5)]
    assert torch.allclose(edge_lengths(block), torch.tensor(expected, dtype=torch.float64))
    assert self_loop_share(block) == pytest.approx(0.5)   # 0 in key 0, 15 in key 3
    assert in_degree(block).tolist() == [2, 0, 0, 2]
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[:, :4, :4] = 1                                    # key 0's window, node 0
    assert homophily(block, mask) == pytest.approx(0.5)
    # x_i = i; key 0 = mean(0, 1, 4, 5) = 2.5, key 3 = mean(10, 11, 14, 15) = 12.5
    x = torch.arange(16.0).view(16, 1)
    sq = [2.5 ** 2, 12.5 ** 2, 2.5 ** 2, 12.5 ** 2]
    assert dirichlet_energy(x, block) == pytest.approx((sum(sq) / 4) / (1240 / 16))


def test_block_rows_per_image():
    # two images of the 3x3 graph: image 1 carries only the hub graph
    e0 = torch.tensor(EDGES).t()
    e1 = torch.tensor([(4, i) for i in range(9)]).t() + 9
    x = torch.cat([torch.full((9, 2), 1.0), torch.randn(9, 2)])
    block = BlockGraph(0, "b", 2, (3, 3), (3, 3), 1, torch.cat([e0, e1], 1), x, x)
    rows = stats_table([block], radius=1.2)
    assert [r["image"] for r in rows] == ["all", 0, 1]
    assert rows[1]["self_loops"] == pytest.approx(3 / 8)
    assert rows[2]["self_loops"] == pytest.approx(1 / 9)
    assert rows[0]["self_loops"] == pytest.approx(4 / 17)
    assert rows[1]["diversity_in"] == 0 and rows[2]["indeg_max"] == 9
    assert rows[0]["diversity_in"] == pytest.approx(
        (0 + feature_diversity(x[9:])) / 2)           # per image, averaged
    assert block_stats(block)["edges"] == 17


def test_per_image_rows_compare_each_image_with_itself_in_the_previous_block():
    e0 = torch.tensor(EDGES).t()
    e1 = torch.tensor([(4, i) for i in range(9)]).t() + 9
    a = BlockGraph(0, "a", 2, (3, 3), (3, 3), 1, torch.cat([e1, e0], 1))   # any edge order
    b = BlockGraph(1, "b", 2, (3, 3), (3, 3), 1, torch.cat([e0, e1[:, :3]], 1))
    rows = [r for r in stats_table([a, b]) if r["block"] == 1]
    assert [r["image"] for r in rows] == ["all", 0, 1]
    assert rows[1]["jaccard_prev"] == 1.0                     # image 0: the same 8 edges
    assert rows[2]["jaccard_prev"] == pytest.approx(3 / 9)    # image 1: 3 of the hub's 9
    assert rows[0]["jaccard_prev"] == pytest.approx(11 / 17)
    assert [one.edge_index.shape[1] for one in a.images()] == [8, 9]
