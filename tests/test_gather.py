"""The compiled neighbour reductions (native/_gather.c, used by conv/functional.py) against a
float64 rule written out here."""
import pytest
import torch
from native_helpers import spy_native

from vig_pyg.conv import functional as Fn
from vig_pyg import fast_paths


def _rule(x, index, k, reduce):
    """float64, target by target: sum or max over its k source rows; for max the last rank
    holding the maximum (ties go to the highest rank)."""
    rows = x.double()[index].view(-1, k, x.size(1))
    if reduce == "sum":
        return rows.sum(1), None
    best = rows.amax(1)
    ranks = torch.arange(k).view(1, k, 1).expand_as(rows)
    rank = torch.where(rows == best.unsqueeze(1), ranks, -1).amax(1)
    return best, rank


@pytest.fixture
def calls(monkeypatch):
    return spy_native(monkeypatch, "vig_gather_reduce", "vig_gather_reduce_backward")


def _graph(g, n_src, n, k):
    return torch.randint(0, n_src, (n * k,), generator=g)


@pytest.mark.parametrize("reduce", ["sum", "max"])
@pytest.mark.parametrize("n,k,c", [(3136, 9, 192), (100, 18, 48), (7, 1, 5), (50, 4, 33)])
def test_matches_the_rule(calls, monkeypatch, reduce, n, k, c):
    g = torch.Generator().manual_seed(n + k + c)
    x = torch.randn(n + 3, c, generator=g)
    index = _graph(g, n + 3, n, k)
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        out, rank = Fn._gather_reduce(x, index, k, reduce, need_rank=reduce == "max")
        ref, ref_rank = _rule(x, index, k, reduce)
        if reduce == "sum":  # float32 additions in rank order: a few ulps of the sum
            assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-5)
        else:  # a max is exact
            assert torch.equal(out.double(), ref) and torch.equal(rank.long(), ref_rank)
    assert calls[0] == 2


def test_ties_go_to_the_highest_rank_and_nan_propagates(calls):
    x = torch.tensor([[1.0, 2.0, 0.0], [1.0, 5.0, float("nan")], [0.5, 5.0, 3.0]])
    index = torch.tensor([0, 1, 2, 2, 1, 0])  # two targets, k = 3
    out, rank = Fn._gather_reduce(x, index, 3, "max", need_rank=True)
    assert torch.equal(out[:, :2], torch.tensor([[1.0, 5.0], [1.0, 5.0]]))
    assert torch.equal(rank[:, :2].long(), torch.tensor([[1, 2], [2, 1]]))
    assert bool(out[:, 2].isnan().all())  # as torch.amax: a NaN neighbour makes the max NaN
    total, _ = Fn._gather_reduce(x, index, 3, "sum", need_rank=False)
    assert torch.equal(total[:, 0], torch.tensor([2.5, 2.5]))
    assert calls[0] == 2


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_gradients_match_float64_autograd(calls, monkeypatch, threads):
    """Forward and the compiled backward: a source row used twice by one target and by
    many targets collects every contribution; the channels split over threads."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 33, generator=g, requires_grad=True)
    index = _graph(g, 40, 30, 5)
    index[1] = index[0]  # a duplicate edge within target 0
    for fn, reduce in ((Fn.gather_max, "max"), (Fn.gather_sum, "sum")):
        x64 = x.detach().double().requires_grad_(True)
        ref = x64[index].view(30, 5, 33)
        ref = ref.amax(1) if reduce == "max" else ref.sum(1)
        w = torch.randn(30, 33, generator=g)
        (fn(x, index, 5) * w).sum().backward()
        (ref * w.double()).sum().backward()
        if reduce == "max":  # on the duplicate's ties the whole gradient goes to one rank
            assert torch.allclose(x.grad.double(), x64.grad, atol=1e-6)
        else:
            assert torch.allclose(x.grad.double(), x64.grad, atol=1e-5)
        x.grad = None
    assert calls == [2, 2]


def test_out_of_range_sources_raise_instead_of_reading_past_the_rows(calls):
    x = torch.randn(10, 8)
    for bad in (10, -1):
        index = torch.tensor([0, 1, bad, 3])
        with pytest.raises(IndexError, match="outside the 10 source nodes"):
            Fn._gather_reduce(x, index, 2, "sum", need_rank=False)


def test_plain_path_where_native_does_not_apply(calls):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 6, generator=g)
    index = _graph(g, 20, 10, 3)
    ref, _ = _rule(x, index, 3, "sum")
    for args in ((x.double(), index), (x, index.int())):  # float64; int32 indices
        out, _ = Fn._gather_reduce(*args, 3, "sum", need_rank=False)
        assert torch.allclose(out.double(), ref, atol=1e-5)
    with fast_paths.disabled("gather"):
        assert torch.allclose(Fn._gather_reduce(x, index, 3, "max", True)[0].double(),
                              _rule(x, index, 3, "max")[0])
    assert calls[0] == 0
