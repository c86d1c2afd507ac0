r"""``gated_mr``: AdaptViG's gated max-relative aggregator, on the ``gated_axial`` graph.

It reads the kind of every edge from the builder's ``edge_attr`` (``0`` local, ``1``
long-range, ``2`` the complete graph of the global-attention stage; see
:mod:`vig_pyg.graph.builders.gated_axial`), so it runs on that builder only.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch_geometric.utils import softmax as edge_softmax

from ..fast_paths import cpu_path
from ..graph.builders.gated_axial import marked_complete
from .base import GrapherConv, interleave
from .functional import tracing
from .projection import GroupedProjection
from .registry import register_conv

#: The edge kinds of ``gated_axial`` (its ``edge_attr``).
LOCAL, LONG, GLOBAL = 0.0, 1.0, 2.0
#: Added to ``|T|`` in the gate's divisor, as in the release.
TEMPERATURE_EPS = 1e-6


@register_conv("gated_mr")
class GatedMRConv(GrapherConv):
    r"""AdaptViG's gated max-relative convolution (`"AdaptViG"`, WACV 2026; release
    ``AdaptConv`` and ``GlobalAttentionGraphConv``).

    **Gated axial** (default). With local edges :math:`\mathcal{L}(i)` and long-range edges
    :math:`\mathcal{G}(i)` of centre :math:`i` (``edge_attr`` 0 and 1),

    .. math::
        g_{ij} = \exp\!\Big(-\frac{\lVert \mathbf{x}_i - \mathbf{x}_j \rVert_1}
                 {|T| + 10^{-6}}\Big), \qquad
        \mathbf{m}_i = \max\Big(0,\ \max_{j \in \mathcal{L}(i)} (\mathbf{x}_j - \mathbf{x}_i),\
                 \max_{j \in \mathcal{G}(i)} g_{ij} (\mathbf{x}_j - \mathbf{x}_i)\Big),

    channel-wise maxima, the L1 norm summed over the channels, :math:`T` one learnable scalar
    (``self.temperature``, init 1.0) through which the gate is differentiable.

    **Global attention** (``global_attention=True``, AdaptViG's last stage, on the complete
    graph, ``edge_attr`` 2). With :math:`C' = \lfloor C/4 \rfloor`,
    :math:`\mathbf{q} = \mathrm{LN}(\mathbf{W}_q \mathbf{x})`,
    :math:`\mathbf{k} = \mathrm{LN}(\mathbf{W}_k \mathbf{x})` (:math:`C'` channels, no bias,
    LayerNorm with its affine parameters) and :math:`\mathbf{v} = \mathbf{W}_v \mathbf{x}`
    (:math:`C \to C`),

    .. math::
        a_{ij} = \operatorname{softmax}_{j \in \mathcal{N}(i)}
                 \frac{\mathbf{q}_i \cdot \mathbf{k}_j}{\sqrt{C'}}, \qquad
        \mathbf{m}_i = \max\Big(0,\ \sum_{j \in \mathcal{N}(i)} a_{ij} \mathbf{v}_j
                 - \mathbf{x}_i\Big),

    the softmax over the edges of each centre (on the complete graph: over all nodes of its
    image). :math:`\mathbf{W}_v` has no bias, as the release's value projection (a 1x1
    convolution with ``bias=False``, like those of q and k): a checkpoint converted from it
    has no bias to fill, and a bias :math:`\mathbf{b}` would only pass through the attention
    unchanged (each row of :math:`a` sums to 1) as a constant shift of
    :math:`\sum_j a_{ij}\mathbf{v}_j - \mathbf{x}_i` before the max. A centre without edges
    gets :math:`\max(0, -\mathbf{x}_i)`.

    Both then give :math:`h_{\mathbf{\Theta}}(x_{i,0}, m_{i,0}, x_{i,1}, m_{i,1}, \dots)`, the
    channels of :math:`\mathbf{x}_i` and :math:`\mathbf{m}_i` interleaved and
    :math:`h_{\mathbf{\Theta}}` the grouped projection :math:`2C \to` ``out_channels`` of
    :class:`~vig_pyg.conv.MRConv`. Here the library follows ViG's layout, not the release's
    (which concatenates :math:`[\mathbf{x} ; \mathbf{m}]` into an ungrouped 1x1 convolution
    :math:`2C \to C`; with ``groups=1`` the two differ by a permutation of the weight's
    input columns), so the Grapher's fc2 and checkpoint keys stay those of ``mr``.

    Checkpoint keys: ``nn.0.*`` (convolution), ``nn.1.*`` (BatchNorm), and ``temperature``
    (shape ``[]``, as the release's) or, with global attention, ``q_proj.weight``
    ``[C', C]``, ``k_proj.weight`` ``[C', C]``, ``v_proj.weight`` ``[C, C]``,
    ``q_norm.{weight,bias}``, ``k_norm.{weight,bias}`` (no temperature: it would be unused).

    On a fixed-degree graph (the builder's always is) the neighbours form a dense
    ``[N, D, C]`` block, and the complete graph of each image runs as one batched attention
    per image; other graphs run through scatters. The complete graph is recognised from its
    edges on the CPU, elsewhere from the builder's mark
    (:func:`~vig_pyg.graph.builders.gated_axial.mark_complete`), as the edge kinds are
    checked on the CPU only: off the CPU nothing is read back to the host.

    Args:
        in_channels (int): node feature width :math:`C` (:math:`\ge 4` with global
            attention).
        out_channels (int, optional): output width (default :math:`2C`).
        groups (int): groups of the projection. (default: :obj:`4`)
        act (str or nn.Module, optional): activation. (default: :obj:`"gelu"`)
        bias (bool): projection bias. (default: :obj:`True`)
        global_attention (bool): the global-attention form above; the ``gated_axial``
            builder asks it of the stages built with ``global_attention=True``.
            (default: :obj:`False`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, C)` (not bipartite), edge indices
          :math:`(2, |\mathcal{E}|)`, ``edge_attr`` :math:`(|\mathcal{E}|, 1)` (the kinds)
        - **output:** :math:`(|\mathcal{V}|, F_{out})`
    """

    graph_inputs = ("edge_attr",)

    def __init__(self, in_channels: int, out_channels: Optional[int] = None,
                 groups: int = 4, act: Union[str, Callable, nn.Module, None] = "gelu",
                 bias: bool = True, global_attention: bool = False):
        super().__init__(in_channels, out_channels, aggr="max")
        if not isinstance(global_attention, bool):
            raise ValueError(f"GatedMRConv: global_attention must be True or False, got "
                             f"{global_attention!r}")
        self.groups, self.global_attention = groups, global_attention
        self.nn = GroupedProjection(2 * in_channels, self.out_channels, groups, act, bias)
        if global_attention:
            if in_channels < 4:
                raise ValueError(f"GatedMRConv: global attention needs in_channels >= 4 "
                                 f"(queries and keys have C // 4 channels), got {in_channels}")
            qk = in_channels // 4
            self.q_proj = nn.Linear(in_channels, qk, bias=False)
            self.k_proj = nn.Linear(in_channels, qk, bias=False)
            self.v_proj = nn.Linear(in_channels, in_channels, bias=False)
            self.q_norm = nn.LayerNorm(qk)
            self.k_norm = nn.LayerNorm(qk)
        else:
            self.temperature = nn.Parameter(torch.tensor(1.0))

    def reset_parameters(self):
        super().reset_parameters()
        if self.global_attention:
            for module in (self.q_proj, self.k_proj, self.v_proj, self.q_norm, self.k_norm):
                module.reset_parameters()
        else:
            with torch.no_grad():
                self.temperature.fill_(1.0)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]], edge_index: Tensor,
                edge_attr: Optional[Tensor] = None) -> Tensor:
        x = self._nodes(x)
        return self.nn(interleave(x, self.relative(x, edge_index, edge_attr)))

    def relative(self, x: Tensor, edge_index: Tensor, edge_attr: Optional[Tensor]) -> Tensor:
        """:math:`\\mathbf{m}` ``[N, C]`` of the formulas above (before the projection)."""
        x = self._nodes(x)
        kinds = self._kinds(edge_index, edge_attr)
        if self.global_attention:
            return self._attention(x, edge_index)
        return self._gated_max(x, edge_index, kinds)

    # ---------------------------------------------------------------- checks
    def _nodes(self, x) -> Tensor:
        if not isinstance(x, Tensor):
            raise ValueError("GatedMRConv runs on one node set, not on a bipartite pair (x_src, "
                             "x_dst) of pooled keys: use it with graph='gated_axial', which "
                             "links the nodes themselves")
        return self._unpack(x)[0]

    def _kinds(self, edge_index: Tensor, edge_attr: Optional[Tensor]) -> Tensor:
        """The ``[E]`` edge kinds, checked against the mode."""
        if edge_attr is None:
            raise ValueError("GatedMRConv needs the edge kinds (edge_attr) of the gated axial "
                             "graph: use graph='gated_axial' with conv='gated_mr'")
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.size(0) != 2:
            shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else edge_index
            raise ValueError(f"GatedMRConv: edge_index must be [2, num_edges], got {shape}")
        num_edges = edge_index.size(1)
        if edge_attr.dim() == 2 and edge_attr.size(1) == 1:
            edge_attr = edge_attr.view(-1)
        if edge_attr.dim() != 1 or edge_attr.size(0) != num_edges:
            raise ValueError(f"GatedMRConv: edge_attr must be [num_edges, 1] = [{num_edges}, 1] "
                             f"(the edge kinds of graph='gated_axial'), got "
                             f"{tuple(edge_attr.shape)}")
        # the kinds are read back to check them: on the CPU only, where that costs no sync
        if not tracing() and num_edges and edge_attr.device.type == "cpu":
            if self.global_attention and not bool((edge_attr == GLOBAL).all()):
                raise ValueError("GatedMRConv(global_attention=True) runs on the complete graph "
                                 "(edge kind 2) but got local/long edges: build the stage with "
                                 "graph_options={'global_attention': True} for 'gated_axial'")
            if not self.global_attention and not bool(
                    ((edge_attr == LOCAL) | (edge_attr == LONG)).all()):
                raise ValueError("GatedMRConv got edges that are not local or long (kind 0/1), "
                                 "e.g. the complete graph of global_attention=True: build the "
                                 "aggregator with global_attention=True (the Grapher does it "
                                 "for a 'gated_axial' stage that has it)")
        return edge_attr

    # ---------------------------------------------------------------- the two forms
    def _gated_max(self, x: Tensor, edge_index: Tensor, kinds: Tensor) -> Tensor:
        n, c = x.shape
        divisor = self.temperature.abs() + TEMPERATURE_EPS
        d = self._fixed_degree(edge_index, n)
        if d is not None:                                        # dense [N, D, C] block
            diff = x[edge_index[0]].view(n, d, c) - x.unsqueeze(1)
            # the factor is 1 on local edges; chosen on [N, D, 1], so the [N, D, C] block
            # sees one product, not a broadcast select (about 3x faster on the CPU)
            gate = torch.exp(-torch.linalg.vector_norm(diff, 1, dim=-1, keepdim=True) / divisor)
            factor = torch.where((kinds == LONG).view(n, d, 1), gate, torch.ones_like(gate))
            return (diff * factor).amax(1).clamp_min(0.0)
        src, dst = edge_index
        diff = x[src] - x[dst]
        gate = torch.exp(-torch.linalg.vector_norm(diff, 1, dim=-1, keepdim=True) / divisor)
        msg = diff * torch.where((kinds == LONG).unsqueeze(1), gate, torch.ones_like(gate))
        # the running max starts at zero: max(0, ...), and 0 for a centre without edges
        return x.new_zeros(n, c).scatter_reduce(0, dst.unsqueeze(1).expand_as(msg), msg,
                                                "amax", include_self=True)

    def _attention(self, x: Tensor, edge_index: Tensor) -> Tensor:
        n, c = x.shape
        q, k = self.q_norm(self.q_proj(x)), self.k_norm(self.k_proj(x))
        v = self.v_proj(x)
        scale = 1.0 / math.sqrt(q.size(1))
        d = self._fixed_degree(edge_index, n)
        if d is not None:
            src = edge_index[0].view(n, d)
            if n % d == 0 and self._complete(edge_index, n, d):  # one attention per image
                b = n // d
                a = torch.softmax(torch.bmm(q.view(b, d, -1), k.view(b, d, -1).transpose(1, 2))
                                  * scale, dim=-1)
                av = torch.bmm(a, v.view(b, d, c)).view(n, c)
            else:
                a = torch.softmax(torch.einsum("nc,ndc->nd", q, k[src]) * scale, dim=1)
                av = torch.einsum("nd,ndc->nc", a, v[src])
        else:
            src, dst = edge_index
            a = edge_softmax((q[dst] * k[src]).sum(-1) * scale, dst, num_nodes=n)
            av = x.new_zeros(n, c).index_add_(0, dst, a.unsqueeze(1) * v[src])
        return (av - x).clamp_min(0.0)

    @staticmethod
    def _complete(edge_index: Tensor, n: int, d: int) -> bool:
        """Whether the fixed-degree ``edge_index`` (``d`` per centre) is the complete graph
        of every image of ``d`` nodes, neighbours in node order (what ``gated_axial``
        builds): compared on the CPU, from the builder's mark elsewhere."""
        if tracing():
            return False
        if not cpu_path(edge_index):
            return marked_complete(edge_index, d)
        src = edge_index[0].view(n, d)
        first = torch.arange(0, n, d, device=src.device).repeat_interleave(d).unsqueeze(1)
        return torch.equal(src, first + torch.arange(d, device=src.device))

    def extra_repr(self) -> str:
        return "global_attention=True" if self.global_attention else ""
