r"""``hypergraph_fcm``: ViHGNN's hypergraph (ICCV 2023), per image and block, by fuzzy c-means.

On the fc1 output as it is (not normalised), without gradient, every image's :math:`N = HW`
nodes are clustered into :math:`K` hyperedges by fuzzy c-means with fuzzifier 2
(:func:`~vig_pyg.graph.fuzzy_c_means.fuzzy_c_means`: centres
:math:`c_k = \sum_p u_{pk}^2 x_p / \sum_p u_{pk}^2`, :math:`d_{pk} = \max(\lVert x_p - c_k
\rVert^2, 10^{-10})`, :math:`u_{pk} = d_{pk}^{-1} / \sum_{k'} d_{pk'}^{-1}`, at most 15
iterations, stopping once :math:`\lVert \Delta U \rVert_F < 10^{-3}`), and node :math:`p` is
a member of hyperedge :math:`k` by the membership rule of
:func:`~vig_pyg.graph.fuzzy_c_means.membership_mask` (:math:`u_{pk} > 0.01`; where a node
of the image has :math:`\max_k u_{pk} < 0.1`, those rows one-hot and the threshold 0.5 for
the whole image; a node in no hyperedge joins its argmax).

Initial memberships: uniform random rows normalised to 1. In training mode they are drawn
from torch's global generator (fresh at every step, reproducible under
``torch.manual_seed``), one draw per image. In eval mode one ``[N, K]`` draw is made on the
CPU by a generator seeded with ``seed * 1_000_003 + block_index`` and given to every image
of the batch: evaluation is deterministic, the same on every device (up to rounding), and an
image's hypergraph depends neither on the other images nor on its position in the batch.

:math:`K` (``hyperedges``): an int fixes it; ``None`` (default) is ViHGNN's schedule, read
from the block's :class:`~.base.BlockInfo`: ``int(torch.linspace(25, 50, depth)[block_index])``
in an isotropic model, 25 in every block of a pyramid (:func:`hyperedge_schedule`). An
unbound builder (used outside a model) takes 25. :math:`K` must not exceed :math:`HW`.

Output: a :class:`~.base.BuiltGraph` with ``edge_index`` the incidence ``[2, nnz]`` (row 0
the node ``b*N + p``, row 1 the hyperedge ``b*K + k``, sorted by node then hyperedge) and
``num_hyperedges = B*K``. A hyperedge may have no member (it then has no entry). Off the
CPU, where the number of memberships would have to be read back, ``edge_index`` is instead
the fixed-size ``[2, B*N*K]`` form of :func:`~vig_pyg.graph.fuzzy_c_means.padded_incidence`:
every pair in the order above, a pair that is no membership replaced by the padding entry
``(B*N, B*K)``, which the aggregator drops.

Where the release (``construct_hyperedges_optimized``, ``fuzzy_c_means``) differs, this
builder follows SPEC's per-image rule: the release decides the weak-node rule, the 0.5
threshold and the stopping test over the whole batch, so one image's hypergraph depends on
the others; it pads member lists with a real node (index ``N - 1``, or hyperedge ``K - 1``)
that enters the aggregator's means; a node attached to its argmax appears only in its own
hyperedge list, not in the hyperedge's member list (here it is a member); its stopping test
starts at the second iteration (here the first iteration's change from :math:`U_0` counts);
and it draws the initial memberships from the global generator in eval mode as well.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from ...fast_paths import cpu_path
from ..fuzzy_c_means import (fuzzy_c_means, hyperedge_incidence, padded_incidence,
                             random_memberships)
from .base import BlockInfo, BuiltGraph, GraphBuilder, check_map, node_rows
from .registry import GraphBuilderError, register_graph_builder

NAME = "hypergraph_fcm"
#: ViHGNN's schedule: isotropic linspace(25, 50, depth), pyramid 25 everywhere.
ISOTROPIC_RANGE = (25, 50)
PYRAMID_HYPEREDGES = 25


def hyperedge_schedule(kind: str, depth: int) -> list[int]:
    """ViHGNN's :math:`K` for every block of a model of ``kind`` (``"isotropic"`` or
    ``"pyramid"``) with ``depth`` blocks: ``int`` of ``torch.linspace(25, 50, depth)``
    (float32, truncated, as the release) or 25 everywhere."""
    if kind == "pyramid":
        return [PYRAMID_HYPEREDGES] * depth
    return [int(v) for v in torch.linspace(*ISOTROPIC_RANGE, depth, device="cpu").tolist()]


def _check_int(value, name: str, low: int | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
        need = f"an int >= {low}" if low is not None else "an int"
        raise GraphBuilderError(f"graph builder {NAME!r}: {name} must be {need}, got {value!r}")


@register_graph_builder(NAME)
class HypergraphFCMBuilder(GraphBuilder):
    """Args: ``hyperedges`` K (default ``None``: ViHGNN's schedule, see above), ``seed`` of
    the evaluation memberships (default 0)."""

    graph_kind = "hypergraph"
    provides = ("num_hyperedges",)

    def __init__(self, hyperedges: int | None = None, seed: int = 0):
        super().__init__()
        if hyperedges is not None:
            _check_int(hyperedges, "hyperedges", 1)
        _check_int(seed, "seed", None)
        self.hyperedges, self.seed = hyperedges, seed
        self.block_index = 0
        self.scheduled = PYRAMID_HYPEREDGES      # the schedule's K once bound (25 unbound)
        self._u0: dict = {}                      # eval memberships by (N, K, seed, block)

    @property
    def num_hyperedges(self) -> int:
        """This block's :math:`K`."""
        return self.scheduled if self.hyperedges is None else self.hyperedges

    def bind_block(self, info: BlockInfo, shared: dict) -> None:
        self.block_index = info.block_index
        self.scheduled = hyperedge_schedule(info.kind, info.depth)[info.block_index]

    def extra_repr(self) -> str:
        return f"hyperedges={self.num_hyperedges}" + (f", seed={self.seed}" if self.seed else "")

    def check_grid(self, h: int, w: int, k: int) -> None:
        hyperedges = self.num_hyperedges
        if hyperedges > h * w:
            how = ("set" if self.hyperedges is not None
                   else "ViHGNN's schedule gives this block")
            raise GraphBuilderError(
                f"graph builder {NAME!r}: {hyperedges} hyperedges ({how}) exceed the {h * w} "
                f"nodes of the {h}x{w} grid; pass graph_options={{'hyperedges': K}} with "
                f"K <= {h * w}, or use larger images")

    def _eval_memberships(self, n: int, k: int) -> Tensor:
        key = (n, k, self.seed, self.block_index)
        u0 = self._u0.get(key)
        if u0 is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.block_index)
            u0 = random_memberships(1, n, k, generator)
            self._u0 = {key: u0}     # one size at a time: a block sees one grid per call
        return u0

    def forward(self, x: Tensor, keys: Tensor | None = None, *, k: int = 9,
                dilation: int = 1, relative_pos: Tensor | None = None) -> BuiltGraph:
        b, _, h, w = check_map(x, NAME)
        self.check_grid(h, w, k)
        n, hyperedges = h * w, self.num_hyperedges
        # fuzzy c-means divides by squared distances floored at 1e-10: not in half precision
        no_autocast = (torch.autocast(x.device.type, enabled=False)
                       if x.device.type in ("cpu", "cuda") else nullcontext())
        with torch.no_grad(), no_autocast:
            nodes = node_rows(x.detach())
            dtype = torch.promote_types(nodes.dtype, torch.float32)
            if self.training:
                u0 = random_memberships(b, n, hyperedges, device=x.device, dtype=dtype)
            else:
                u0 = self._eval_memberships(n, hyperedges).to(x.device, dtype)
                u0 = u0.expand(b, n, hyperedges)
            u = fuzzy_c_means(nodes, u0)
            incidence = hyperedge_incidence(u) if cpu_path(x) else padded_incidence(u)
        return BuiltGraph(incidence, num_hyperedges=b * hyperedges)
