"""Pictures: the overlay marks exactly the neighbours of the chosen centre."""
import numpy as np
import pytest
import torch

from vig_pyg.diagnostics.capture import BlockGraph
from vig_pyg.diagnostics.plots import (
    check_centres, default_centres, key_box, map_centre, neighbours_of, overlay_array,
    plot_in_degree, plot_overlay, plot_stats_vs_depth)
from vig_pyg.diagnostics.stats import stats_table
from vig_pyg.errors import VigPygError

EDGES = [(0, 0), (1, 0), (4, 0), (4, 4), (0, 4), (8, 4), (8, 8), (2, 8)]


def grid_block():
    return BlockGraph(0, "b", 1, (3, 3), (3, 3), 1, torch.tensor(EDGES).t().contiguous())


def pooled_block():
    return BlockGraph(1, "p", 1, (4, 4), (2, 2), 2, torch.tensor([[0, 3, 3, 0], [0, 0, 15, 15]]))


def marked(out):
    return out.max(axis=2) > 0


def test_overlay_marks_exactly_the_neighbours():
    black = np.zeros((6, 6, 3))          # 3x3 grid of 2x2-pixel patches
    out = overlay_array(black, grid_block(), 0, [(0, 0)])
    expect = np.zeros((6, 6), bool)
    expect[0:2, 0:2] = expect[0:2, 2:4] = expect[2:4, 2:4] = True   # nodes 0, 1, 4
    assert (marked(out) == expect).all()
    out = overlay_array(black, grid_block(), 0, [(2, 2)])           # node 8: 8 and 2
    expect = np.zeros((6, 6), bool)
    expect[4:6, 4:6] = expect[0:2, 4:6] = True
    assert (marked(out) == expect).all()


def test_pooled_keys_mark_their_whole_window():
    black = np.zeros((8, 8, 3))          # 4x4 grid of 2x2 patches, keys 2x2 of 4x4 pixels
    block = pooled_block()
    assert neighbours_of(block, 0, (0, 0)) == [0, 3]
    assert key_box(block, 3, (8, 8)) == (4, 4, 8, 8)
    expect = np.zeros((8, 8), bool)
    expect[0:4, 0:4] = expect[4:8, 4:8] = True
    assert (marked(overlay_array(black, block, 0, [(0, 0)])) == expect).all()
    assert not marked(overlay_array(black, block, 0, [(1, 2)])).any()   # no edges


def test_centres():
    assert default_centres((8, 8)) == [(2, 2), (5, 5), (2, 5)]
    assert default_centres((14, 14), 5) == [(3, 3), (10, 10), (3, 10), (10, 3), (7, 7)]
    assert map_centre((5, 5), (8, 8), (4, 4)) == (2, 2)
    assert map_centre((0, 13), (14, 14), (7, 7)) == (0, 6)
    with pytest.raises(VigPygError, match="outside the 3x3"):
        check_centres([(0, 3)], (3, 3))


def test_plots_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    image = np.random.default_rng(0).random((6, 6, 3))
    blocks = [grid_block(), grid_block()]
    for path in (plot_overlay(image, blocks, 0, [(0, 0), (2, 2)], tmp_path / "o.png"),
                 plot_in_degree(image, blocks, 0, tmp_path / "d.png"),
                 plot_stats_vs_depth({"a": stats_table(blocks), "b": stats_table(blocks)},
                                     tmp_path / "s.png")):
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
