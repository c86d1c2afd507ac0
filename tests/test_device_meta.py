"""Off the CPU a training step reads no tensor value back to the host: every zoo model with
every built-in aggregator, and every graph builder, runs forward + cross-entropy + backward
on the ``meta`` device, whose tensors hold no values, so that any read (``.item()``,
``bool(t)``, ``int(t)``, ``torch.equal``, ``nonzero``, ``bincount``, boolean indexing)
raises. The models are built on meta directly (``with torch.device("meta"):``), so no
weight is initialised on the CPU. The code takes the branches any non-CPU device takes
(``x.is_cpu`` is the distinction), so what passes here does not synchronise on CUDA."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from vig_pyg.conv.gated_max_relative import GatedMRConv
from vig_pyg.graph.builders import list_graph_builders
from vig_pyg.models import create_model
from vig_pyg.models.factory import model_config
from vig_pyg.models.grapher import builders_for
from vig_pyg.models.zoo import ZOO

ZOO_MODELS = ["vig_ti", "vig_s", "vig_b", "pvig_ti", "pvig_s", "pvig_m", "pvig_b"]
AGGREGATORS = ["mr", "edge", "sage", "gin"]
#: aggregators that need a particular builder's output: run on the first that gives it
PAIRED = ["gated_mr", "cluster_mr", "vihgnn"]
HYPERGRAPH_AGGREGATORS = ["vihgnn", "pyg:HypergraphConv"]


def train_step_on_meta(name: str, **options) -> torch.nn.Module:
    with torch.device("meta"):
        model = create_model(name, **options)
    model.train()
    x = torch.randn(2, 3, 224, 224, device="meta")
    target = torch.zeros(2, dtype=torch.long, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = F.cross_entropy(model(x), target)
    loss.backward()
    return model


def test_meta_tensors_refuse_every_read():
    # what makes the tests below fail on a read back to the host
    t = torch.ones(4, device="meta")
    for read in (lambda: bool(t.any()), lambda: t.sum().item(), lambda: torch.nonzero(t),
                 lambda: torch.equal(t, t), lambda: t[t > 0],
                 lambda: torch.bincount(t.long())):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


def test_the_zoo_list_is_complete():
    assert sorted(ZOO_MODELS) == sorted(ZOO)


@pytest.mark.parametrize("name", ["vig_ti", "pvig_ti"])
def test_schedules_do_not_depend_on_the_default_device(name):
    # k, dilation and drop path come from torch.linspace: computed on the CPU, then read
    def schedule():
        cfg = model_config(name, drop_path_rate=0.1)
        return [(s.k, s.dilation, s.drop_path) for s in cfg.block_specs()]

    with torch.device("meta"):
        on_meta = schedule()
    assert on_meta == schedule() and len({p for _, _, p in on_meta}) > 1


def zoo_cases():
    # every model under mr, every aggregator on the two tiny ones; the rest of the cross
    # product (the same code at other widths and depths, about 30 s) is slow
    for name in ZOO_MODELS:
        for conv in AGGREGATORS + PAIRED:
            tiny = name in ("vig_ti", "pvig_ti")
            yield pytest.param(name, conv, marks=() if tiny or conv == "mr" else pytest.mark.slow)


@pytest.mark.parametrize("name,conv", list(zoo_cases()))
def test_zoo_model_trains_without_a_read(name, conv):
    graph = builders_for(conv)[0] if conv in PAIRED else "knn"
    model = train_step_on_meta(name, conv=conv, graph=graph)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def builder_cases():
    for graph in list_graph_builders():
        if graph == "knn":
            continue  # the zoo test above runs it under every aggregator
        convs = HYPERGRAPH_AGGREGATORS if graph == "hypergraph_fcm" else ["mr"]
        for conv in convs:
            for name in ("vig_ti", "pvig_ti"):
                if not (conv == "vihgnn" and graph in builders_for("vihgnn")[:1]):
                    yield name, graph, conv   # vihgnn on its builder ran above


@pytest.mark.parametrize("name,graph,conv", list(builder_cases()))
def test_graph_builder_trains_without_a_read(name, graph, conv):
    train_step_on_meta(name, conv=conv, graph=graph)


@pytest.mark.parametrize("conv", AGGREGATORS)
def test_smaller_windows_train_without_a_read(conv):
    # 5 x 5 windows on vig_ti's 14 x 14 grid: windows of 25, 20 and 16 nodes, fewer than
    # the late blocks' k = 17, 18, so a variable degree (the padded table off the CPU)
    train_step_on_meta("vig_ti", conv=conv, graph="window_knn", graph_options={"window": 5})


def test_global_attention_runs_as_one_attention_per_image(monkeypatch):
    # the complete graph is known from the builder's mark, not from its values
    seen = []
    complete = GatedMRConv._complete

    def spy(edge_index, n, d):
        seen.append(complete(edge_index, n, d))
        return seen[-1]

    monkeypatch.setattr(GatedMRConv, "_complete", staticmethod(spy))
    train_step_on_meta("pvig_ti", conv="gated_mr", graph="gated_axial",
                       graph_options=[{}, {}, {}, {"global_attention": True}])
    assert seen and all(seen)   # every block of the last stage
