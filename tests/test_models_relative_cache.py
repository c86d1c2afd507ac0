"""Resized relative-position tables: one copy per stage, never a stale or foreign one."""
import torch

from vig_pyg import create_model
from vig_pyg.graph import resize_relative_position
from vig_pyg.models.grapher import Grapher


def small_pyramid():
    torch.manual_seed(0)
    return create_model("pvig_ti", num_classes=5, img_size=128, channels=[16, 32, 48, 64],
                        blocks=[2, 2, 1, 1], k=4).eval()


def graphers(model, stage_channels):
    return [m for m in model.modules() if isinstance(m, Grapher)
            and m.fc1[0].in_channels == stage_channels]


def test_blocks_of_a_stage_share_one_resized_table():
    model = small_pyramid()
    g0, g1 = graphers(model, 16)
    n, m = 40 * 40, 10 * 10  # a 160 px input: 40x40 nodes, 4x4-pooled keys
    a, b = g0._relative_pos(n, m), g1._relative_pos(n, m)
    assert a is b  # one tensor, not two
    assert torch.equal(a, resize_relative_position(g0.relative_pos, n, m))


def test_an_edited_table_gets_its_own_resize():
    model = small_pyramid()
    g0, g1 = graphers(model, 16)
    n, m = 40 * 40, 10 * 10
    shared = g0._relative_pos(n, m)
    with torch.no_grad():
        g1.relative_pos.mul_(2.0)  # e.g. a checkpoint with other values
    own = g1._relative_pos(n, m)
    assert own is not shared
    assert torch.equal(own, resize_relative_position(g1.relative_pos, n, m))
    assert torch.equal(g0._relative_pos(n, m), shared)


def test_sharing_leaves_the_logits_bit_identical():
    model = small_pyramid()
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        shared = model(x)
        for g in model.modules():  # every Grapher with a cache of its own, as before
            if isinstance(g, Grapher):
                g._rel_cache = {}
        alone = model(x)
    assert torch.equal(shared, alone)
