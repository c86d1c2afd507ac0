"""Kernel launches of ours against the reference on the GPU's code path (the meta device:
no values, so no data-dependent branch can be taken), the issue's bar: at most the
reference's in an inference forward and in a training step, for every ViG aggregator."""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import bench_models as B  # noqa: E402


def test_the_counter_counts_launches_and_not_views_or_host_ops():
    x = torch.randn(4, 3, device="meta")
    counter = B._op_counter()
    with counter:
        y = x.view(3, 4).permute(1, 0)   # two views: dispatched, no kernel
        z = y + 1                        # one kernel
        torch.empty(5, device="meta")    # an allocation: no kernel
        torch.arange(3)                  # on the host: no device kernel
    assert z.shape == (4, 3)
    assert sum(counter.dispatched.values()) == 5
    assert dict(counter.launches) == {"aten.add.Tensor": 1}


@pytest.mark.parametrize("name, conv", [
    ("vig_ti", "mr"), ("vig_ti", "edge"), ("vig_ti", "sage"), ("vig_ti", "gin"),
    ("pvig_ti", "mr"), ("pvig_ti", "edge"), ("pvig_ti", "sage"), ("pvig_ti", "gin")])
def test_ours_launches_at_most_the_reference(name, conv):
    counts = B.count_ops(name, conv)
    for mode in ("infer", "train"):
        ours = sum(counts[mode, "ours"].launches.values())
        ref = sum(counts[mode, "reference"].launches.values())
        assert 0 < ours <= ref, f"{name} {conv} {mode}: {ours} launches, reference {ref}"
