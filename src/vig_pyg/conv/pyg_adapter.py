r"""PyTorch Geometric convolutions as Grapher aggregators: ``build_conv("pyg:GATConv", C)``.

A PyG convolution ``in -> out`` is wrapped as ``conv -> BatchNorm1d -> activation`` (like
the ViG layers, whose grouped projection ends in BatchNorm + activation), so any of them
can replace ``"mr"`` in a Grapher: ``create_model("vig_ti", conv="pyg:GATv2Conv")``.

Registered recipes (``list_convs()`` shows them), with the constructor arguments they set:

==========================  ===========================================================  =========
name                        conv built for ``in -> out``                                 bipartite
==========================  ===========================================================  =========
``pyg:GATConv``             ``GATConv(in, out // heads, heads, add_self_loops=False)``   yes
``pyg:GATv2Conv``           ``GATv2Conv(in, out // heads, heads, add_self_loops=False)`` yes
``pyg:TransformerConv``     ``TransformerConv(in, out // heads, heads)``                 yes
``pyg:GCNConv``             ``GCNConv(in, out, add_self_loops=False)``                   no
``pyg:SAGEConv``            ``SAGEConv(in, out)`` (``aggr="mean"``; pass ``aggr="max"``) yes
``pyg:GraphConv``           ``GraphConv(in, out)``                                       yes
``pyg:ResGatedGraphConv``   ``ResGatedGraphConv(in, out)``                               yes
``pyg:GENConv``             ``GENConv(in, out)``                                         yes
``pyg:GINConv``             ``GINConv(Linear(in, out) -> act -> Linear(out, out),``      yes
                            ``train_eps=True)``
``pyg:EdgeConv``            ``EdgeConv(Linear(2 in, out) -> act -> Linear(out, out),``   yes
                            ``aggr="max")`` (as ``SplitEdgeConv``, see below)
``pyg:HypergraphConv``      ``HypergraphConv(in, out)`` on a hypergraph builder's        no
                            incidence (``hypergraph_fcm``)
==========================  ===========================================================  =========

Edge attributes: on a builder that returns them (``gated_axial``'s local/long kind), a PyG
class whose constructor takes ``edge_dim`` (GATConv, GATv2Conv, TransformerConv, GENConv)
is built with the builder's width and given ``edge_attr``; the others ignore them.

``heads`` defaults to 1 and must divide ``out``. Self-loops are not added by default: a kNN
graph already links every node to itself. Extra keyword arguments go to the PyG
constructor; ``act`` is the activation after the BatchNorm; ``groups`` is accepted and
ignored (PyG convolutions are dense). Any other class of :mod:`torch_geometric.nn.conv`
with an ``(in_channels, out_channels)`` constructor works as ``"pyg:<ClassName>"`` too,
unregistered.

Speed (same parameters and results as PyG's evaluation, up to rounding):

- a max, min or softmax (fixed temperature) aggregation is a
  :class:`~vig_pyg.conv.fast_aggregation.FastAggregation`: on the Grapher's fixed-degree
  graphs (``k`` edges per target, grouped by target in order) it reduces a dense
  ``[N, k, ...]`` view of the messages (:mod:`vig_pyg.conv.fast_aggregation`); sums and
  means stay PyG's scatter, which measured as fast;
- ``pyg:EdgeConv`` is a :class:`~vig_pyg.conv.split_edge_conv.SplitEdgeConv`, an ``EdgeConv``
  that applies the first ``Linear`` of its MLP per node instead of per edge (any graph).

The messages otherwise (attention, its softmax, MLPs) are PyG's code. Inside
``with vig_pyg.fast_paths.disabled("pyg_aggregation", "split_edge_conv"):`` every adapter
runs PyG's own path.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional, Tuple, Union

import torch.nn.functional as F
import torch_geometric.nn.conv as pyg_conv
from torch import Tensor, nn

from ..layers.activation import make_activation
from .fast_aggregation import wrap_aggregation
from .registry import register_conv, register_prefix
from .split_edge_conv import SplitEdgeConv

PYG_PREFIX = "pyg:"

__all__ = ["PYG_PREFIX", "PyGConv", "pyg_conv_factory"]

class PyGConv(nn.Module):
    """A PyG convolution followed by ``BatchNorm1d`` and an activation.

    Args:
        conv: the :class:`~torch_geometric.nn.conv.MessagePassing` module (``in -> out``).
        out_channels: its output width.
        act: activation after the BatchNorm (default GELU).
        bipartite: whether ``conv`` accepts a pair ``(x_src, x_dst)``; if ``False`` a pair
            raises a :class:`ValueError` (``None``: unknown, passed through).
        graph_kind: ``"hypergraph"`` for a conv on a node -> hyperedge incidence.

    ``conv.aggr_module`` is wrapped in a
    :class:`~vig_pyg.conv.fast_aggregation.FastAggregation` where it can be
    (same parameters and results; faster on fixed-degree graphs).
    """

    def __init__(self, conv: nn.Module, out_channels: int,
                 act: Union[str, Callable, nn.Module, None] = "gelu",
                 bipartite: Optional[bool] = True, graph_kind: str = "graph"):
        super().__init__()
        self.conv = conv
        self.graph_kind = graph_kind
        # what the Grapher hands over besides the edges (see GrapherConv.graph_inputs)
        if graph_kind == "hypergraph":
            self.graph_inputs: tuple = ("num_hyperedges",)
        else:
            self.graph_inputs = (("edge_attr",) if getattr(conv, "edge_dim", None) is not None
                                 else ())
        wrap_aggregation(conv)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = make_activation(act)
        self.out_channels = out_channels
        self.bipartite = bipartite

    def reset_parameters(self):
        if hasattr(self.conv, "reset_parameters"):
            self.conv.reset_parameters()
        self.norm.reset_parameters()

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
                edge_attr: Optional[Tensor] = None,
                num_hyperedges: Optional[int] = None) -> Tensor:
        if not isinstance(x, Tensor):
            if self.bipartite is False:
                raise ValueError(
                    f"{type(self.conv).__name__} does not support bipartite input "
                    f"(x_src, x_dst): it propagates over one node set. Use a conv that "
                    f"does (e.g. 'pyg:SAGEConv', 'pyg:GATConv' or the ViG layers) for "
                    f"reduce_ratio > 1, or keys equal to the queries")
            x = tuple(x)
        if self.graph_kind == "hypergraph" and num_hyperedges is None:
            out = self.conv(x, edge_index)
        elif self.graph_kind == "hypergraph":
            # off the CPU the builder pads its incidence with entries (num_nodes,
            # num_hyperedges) (hypergraph_fcm's padded_incidence): they point at one zero
            # node and one extra hyperedge, both dropped, so the result is the exact one
            padded = F.pad(x, (0, 0, 0, 1))
            out = self.conv(padded, edge_index, num_edges=num_hyperedges + 1)[: x.size(0)]
        elif edge_attr is not None:
            out = self.conv(x, edge_index, edge_attr=edge_attr)
        else:
            out = self.conv(x, edge_index)
        if isinstance(out, tuple):  # (out, attention weights)
            out = out[0]
        return self.act(self.norm(out))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.conv}, norm=BatchNorm1d, act={self.act})"


def _heads(out: int, kwargs: dict) -> Tuple[int, int]:
    heads = kwargs.pop("heads", 1)
    if kwargs.get("concat", True) is False:
        return out, heads
    if out % heads:
        raise ValueError(f"out_channels={out} is not divisible by heads={heads}")
    return out // heads, heads


def _mlp(in_ch: int, out_ch: int, act, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_ch, out_ch, bias=bias), make_activation(act),
                         nn.Linear(out_ch, out_ch, bias=bias))


def _attention(cls):
    def build(i, o, bias, act, kw):
        per_head, heads = _heads(o, kw)
        kw.setdefault("add_self_loops", False)
        return cls(i, per_head, heads=heads, bias=bias, **kw)
    return build


def _transformer(i, o, bias, act, kw):
    per_head, heads = _heads(o, kw)
    return pyg_conv.TransformerConv(i, per_head, heads=heads, bias=bias, **kw)


def _plain(cls, **defaults):
    def build(i, o, bias, act, kw):
        return cls(i, o, bias=bias, **{**defaults, **kw})
    return build


def _gin(i, o, bias, act, kw):
    kw.setdefault("train_eps", True)
    return pyg_conv.GINConv(_mlp(i, o, act, bias), **kw)


def _edge(i, o, bias, act, kw):
    kw.setdefault("aggr", "max")
    return SplitEdgeConv(_mlp(2 * i, o, act, bias), **kw)


#: name -> (builder(in, out, bias, act, kwargs) -> conv, accepts (x_src, x_dst))
RECIPES = {
    "GATConv": (_attention(pyg_conv.GATConv), True),
    "GATv2Conv": (_attention(pyg_conv.GATv2Conv), True),
    "TransformerConv": (_transformer, True),
    "GCNConv": (_plain(pyg_conv.GCNConv, add_self_loops=False), False),
    "SAGEConv": (_plain(pyg_conv.SAGEConv), True),
    "GraphConv": (_plain(pyg_conv.GraphConv), True),
    "ResGatedGraphConv": (_plain(pyg_conv.ResGatedGraphConv), True),
    "GENConv": (_plain(pyg_conv.GENConv), True),
    "GINConv": (_gin, True),
    "EdgeConv": (_edge, True),
    "HypergraphConv": (_plain(pyg_conv.HypergraphConv), False),
}
#: Recipes whose conv runs on a hypergraph builder's incidence.
HYPERGRAPH_RECIPES = ("HypergraphConv",)


def _takes(cls):
    """``takes(option)`` of a factory: the adapter's own arguments, or a named argument of
    the PyG class's constructor."""
    params = inspect.signature(cls.__init__).parameters

    def takes(option: str) -> bool:
        param = params.get(option)
        return option in ("act", "bias", "groups") or (
            param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD,
                                                 param.KEYWORD_ONLY))
    return takes


def _factory(class_name: str, builder, bipartite: Optional[bool]):
    kind = "hypergraph" if class_name in HYPERGRAPH_RECIPES else "graph"

    def factory(in_channels: int, out_channels: Optional[int] = None, *,
                act: Union[str, Callable, nn.Module, None] = "gelu", bias: bool = True,
                groups: Optional[int] = None, **kwargs) -> PyGConv:
        del groups  # dense convolutions: accepted for a uniform Grapher call, ignored
        out = 2 * in_channels if out_channels is None else out_channels
        conv = builder(in_channels, out, bias, act, dict(kwargs))
        return PyGConv(conv, out, act=act, bipartite=bipartite, graph_kind=kind)

    factory.takes = _takes(getattr(pyg_conv, class_name))
    factory.graph_kind = kind
    factory.__name__ = factory.__qualname__ = f"pyg_{class_name}"
    factory.__doc__ = f"``{PYG_PREFIX}{class_name}``: see :mod:`vig_pyg.conv.pyg_adapter`."
    return factory


def _generic(cls):
    def build(i, o, bias, act, kw):
        try:
            return cls(i, o, **kw)
        except TypeError as e:
            raise ValueError(
                f"cannot build {PYG_PREFIX}{cls.__name__} as {cls.__name__}({i}, {o}, "
                f"**{kw}): {e}. Register a factory for it with "
                f"@register_conv('{PYG_PREFIX}{cls.__name__}')") from e
    return build


def pyg_conv_factory(class_name: str) -> Optional[Callable[..., nn.Module]]:
    """Factory for ``"pyg:<class_name>"``: a registered recipe, else a generic one for any
    :class:`~torch_geometric.nn.conv.MessagePassing` class of :mod:`torch_geometric.nn.conv`
    (``None`` if there is no such class)."""
    if class_name in RECIPES:
        builder, bipartite = RECIPES[class_name]
        return _factory(class_name, builder, bipartite)
    cls = getattr(pyg_conv, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, pyg_conv.MessagePassing)
            and cls is not pyg_conv.MessagePassing):
        return None
    return _factory(class_name, _generic(cls), None)


for _name in RECIPES:
    register_conv(PYG_PREFIX + _name)(pyg_conv_factory(_name))
register_prefix(PYG_PREFIX, pyg_conv_factory, "PyG convolutions as 'pyg:<ClassName>'")
