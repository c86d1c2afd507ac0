"""Gradient checkpointing (``ViG.set_grad_checkpointing``, timm's API) against the plain pass.

One forward + backward of a model and of its copy with checkpointing on, from the same
weights, input and generator state: every parameter gradient, every buffer (BatchNorm's
running statistics and batch count, which the recomputation must not update twice) and the
loss are the plain pass's, in float64, exactly (the rerun repeats the same operations on the
same values, so not even rounding may differ). Each block must really run twice (forward
and recomputation) and keep less for backward than the plain pass.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vig_pyg.conv import list_convs
from vig_pyg.graph.builders import list_graph_builders
from vig_pyg.models import create_model
from vig_pyg.models.grapher import builders_for
from vig_pyg.models.vig import ViGBlock

ISO = dict(num_classes=5, channels=24, depth=4, stem_stride=8, k=3, img_size=32)
PYR = dict(num_classes=5, channels=[16, 24, 32, 40], blocks=[2, 1, 2, 1], k=3, img_size=96)


def saved_bytes(fn):
    """Bytes autograd keeps for backward while ``fn()`` runs (each saved tensor's storage,
    counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def one_step(model, x, y, seed):
    """Loss, bytes saved for backward, block forward calls, and the gradients."""
    calls = []
    handles = [m.register_forward_pre_hook(lambda mod, args: calls.append(mod))
               for m in model.modules() if isinstance(m, ViGBlock)]
    torch.manual_seed(seed)
    out, saved = saved_bytes(lambda: model(x))
    loss = F.cross_entropy(out, y)
    loss.backward()
    for h in handles:
        h.remove()
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), saved, len(calls), grads


def assert_same_step(name, seed=0, dtype=torch.float64, batch=3, **kw):
    torch.manual_seed(seed)
    plain = create_model(name, **kw).to(dtype).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    g = torch.Generator().manual_seed(seed + 1)
    size = kw["img_size"]
    x = torch.randn(batch, 3, size, size, generator=g, dtype=dtype)
    y = torch.randint(0, kw["num_classes"], (batch,), generator=g)
    loss_p, saved_p, calls_p, grads_p = one_step(plain, x, y, seed + 2)
    loss_c, saved_c, calls_c, grads_c = one_step(ckpt, x, y, seed + 2)
    blocks = sum(isinstance(m, ViGBlock) for m in plain.modules())
    assert calls_p == blocks and calls_c == 2 * blocks  # each block recomputed once
    assert saved_c < saved_p
    assert torch.equal(loss_c, loss_p)
    assert grads_p.keys() == grads_c.keys()
    for key in grads_p:
        assert grads_c[key] is not None, key
        torch.testing.assert_close(grads_c[key], grads_p[key], rtol=0, atol=0, msg=key)
    buffers_p, buffers_c = dict(plain.named_buffers()), dict(ckpt.named_buffers())
    assert buffers_p.keys() == buffers_c.keys() and buffers_p
    for key in buffers_p:
        assert torch.equal(buffers_c[key], buffers_p[key]), key
    counts = [b for k, b in buffers_c.items() if k.endswith("num_batches_tracked")]
    assert counts and all(int(c) == 1 for c in counts)  # one batch seen, counted once
    return saved_p, saved_c


@pytest.mark.parametrize("name,kw", [("vig_ti", ISO), ("pvig_ti", PYR)])
def test_checkpointed_step_equals_plain_step_in_float64(name, kw):
    saved_p, saved_c = assert_same_step(name, **kw)
    assert saved_c < 0.5 * saved_p  # blocks keep only their inputs


@pytest.mark.parametrize("name,kw", [("vig_ti", ISO), ("pvig_ti", PYR)])
def test_drop_path_and_stochastic_knn_draw_the_same_in_the_recomputation(name, kw):
    assert_same_step(name, drop_path_rate=0.5, stochastic=True, epsilon=0.5, **kw)


def test_compiled_batch_norm_is_not_updated_twice(monkeypatch):
    """float32 maps large enough for the compiled BatchNorm + activation
    (vig_pyg.layers.batch_norm), which updates the running statistics in its own forward:
    the recomputation calls it again, and the statistics still end as the plain step's."""
    from vig_pyg.layers import batch_norm

    calls = []
    apply = batch_norm._BatchNormAct.apply
    monkeypatch.setattr(batch_norm._BatchNormAct, "apply",
                        lambda *a: calls.append(1) or apply(*a))
    assert_same_step("vig_ti", dtype=torch.float32, batch=4,
                     **{**ISO, "depth": 2, "stem_stride": 4, "img_size": 64})
    assert calls and len(calls) % 3 == 0  # plain: n calls; checkpointed: n + n again


def _aggregator_for(builder: str) -> str:
    """The most specific of vig_pyg's own aggregators that runs on ``builder``'s output
    (vihgnn for the hypergraph, cluster_mr for the clusters, gated_mr for the gated axial
    graph, mr for the rest)."""
    fits = [(len(builders_for(c)), c) for c in list_convs()
            if not c.startswith("pyg:") and builder in builders_for(c)]
    return min(fits)[1]


OPTIONS = {"window_knn": {"window": 4}, "axial": {"hop": 2}, "clustered_knn": {"clusters": 3},
           "hypergraph_fcm": {"hyperedges": 4}}


@pytest.mark.parametrize("graph", list_graph_builders())
def test_every_graph_builder_is_exact_under_checkpointing(graph):
    """Builders with per-stage shared state (static_knn's stage input and ranking) and the
    random ones (drawn in training) included; isotropic and pyramid."""
    options = OPTIONS.get(graph)
    conv = _aggregator_for(graph)
    assert_same_step("vig_ti", graph=graph, graph_options=options, conv=conv, **ISO)
    if graph == "window_knn":
        options = [{"window": 8}, {"window": 4}, {"window": 2}, {"window": 2}]
    assert_same_step("pvig_ti", graph=graph, graph_options=options, conv=conv, **PYR)


def test_static_knn_stage_state_is_released_after_backward():
    """The recomputation hands blocks the stage input they saw, and puts the stage's
    state back as it found it: nothing of the step is left for the next one."""
    torch.manual_seed(0)
    model = create_model("vig_ti", graph="static_knn", **ISO).train()
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    states = {id(b.stage_state): b.stage_state for b in model.modules()
              if isinstance(b, ViGBlock)}
    assert len(states) == 1
    assert set(next(iter(states.values()))) == {"max_kd"}


def test_checkpointing_only_in_training_with_gradients():
    torch.manual_seed(0)
    model = create_model("vig_ti", **ISO)
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    for mode, grad in ((True, False), (False, True)):
        model.train(mode)
        calls = []
        handles = [m.register_forward_pre_hook(lambda mod, args: calls.append(1))
                   for m in model.modules() if isinstance(m, ViGBlock)]
        with torch.set_grad_enabled(grad):
            out = model(x)
        if out.requires_grad:
            out.sum().backward()
        for h in handles:
            h.remove()
        assert len(calls) == ISO["depth"], (mode, grad)  # no recomputation
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def test_forward_intermediates_are_checkpointed_too():
    torch.manual_seed(0)
    plain = create_model("pvig_ti", **PYR).double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(1)
        maps, saved = saved_bytes(lambda: model.forward_intermediates(x, intermediates_only=True))
        sum(m.square().mean() for m in maps).backward()
        grads.append(({k: p.grad for k, p in model.named_parameters() if p.grad is not None},
                      saved))
    (gp, saved_p), (gc, saved_c) = grads
    assert saved_c < saved_p and gp.keys() == gc.keys() and gp
    for key in gp:
        assert torch.equal(gc[key], gp[key]), key


def test_timm_calls_it():
    """timm's create_model passes grad_checkpointing through to the model's switch."""
    import timm

    model = timm.create_model("vig_ti", pretrained=False, num_classes=5, img_size=32,
                              channels=24, depth=2, stem_stride=8, k=3)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing


# A ViG small enough for a test run (tests/test_train_run.py's), with drop path, the
# stochastic kNN and mixup drawing from the generators the recomputation must replay.
TINY_RUN = ["model.channels=32", "model.depth=2", "model.stem_stride=8", "model.k=4",
            "model.drop_path_rate=0.2", "model.stochastic=true", "data.batch_size=32",
            "log.progress=false", "train.epochs=1", "train.max_steps=3",
            "sched.warmup_epochs=0", "train.device=cpu", "train.threads=1",
            "log.tensorboard=false"]


def test_trainer_grad_checkpointing_trains_as_the_plain_run(tmp_path):
    """train.grad_checkpointing=true: the model's blocks are checkpointed, and three
    optimizer steps end in the plain run's weights, BatchNorm statistics and losses,
    bit for bit (the same float32 operations on the same values, the same draws)."""
    from vig_pyg.train.training import fit_run

    runs = {}
    for on in (False, True):
        summary, run = fit_run(None, TINY_RUN + [f"train.grad_checkpointing={str(on).lower()}"],
                               output=str(tmp_path / str(on)))
        assert run.model.grad_checkpointing is on
        assert summary["global_step"] == 3
        runs[on] = (summary, run.model.state_dict())
    (plain, plain_state), (ckpt, ckpt_state) = runs[False], runs[True]
    assert plain_state.keys() == ckpt_state.keys()
    for key in plain_state:
        assert torch.equal(plain_state[key], ckpt_state[key]), key
    metrics = [(tmp_path / str(on) / "metrics.csv").read_text().splitlines()[1].split(",")
               for on in (False, True)]
    header = (tmp_path / "False" / "metrics.csv").read_text().splitlines()[0].split(",")
    loss = header.index("train_loss")
    assert metrics[0][loss] == metrics[1][loss]
    assert plain["loss"] == ckpt["loss"] and plain["top1"] == ckpt["top1"]


@pytest.mark.slow  # two torch.compile runs on the CPU: about a minute
@pytest.mark.parametrize("graph", ["knn", "static_knn"])
def test_compiled_checkpointed_step_equals_eager_plain_step(graph):
    """Under torch.compile the compiler recomputes (knn: one graph, no break) or the block
    is checkpointed eagerly behind a graph break (static_knn's stage state): gradients equal
    the eager plain step's to float64 rounding (the compiled kernels sum in another order),
    BatchNorm statistics too, and every batch is counted once."""
    torch.manual_seed(0)
    kw = {**ISO, "depth": 2}
    plain = create_model("vig_ti", graph=graph, **kw).double().train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 5, (4,))
    F.cross_entropy(plain(x), y).backward()
    torch._dynamo.reset()
    F.cross_entropy(torch.compile(ckpt)(x), y).backward()
    scale = max(p.grad.abs().max() for p in plain.parameters() if p.grad is not None)
    for (key, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-12 * scale, msg=key)
    for (key, a), b in zip(plain.named_buffers(), ckpt.buffers()):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12, msg=key)
