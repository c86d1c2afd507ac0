r"""Fuzzy c-means and the membership rule of ViHGNN's hypergraph, one image at a time.

**Fuzzy c-means** (fuzzifier :math:`m = 2`). For the nodes :math:`x_p` (:math:`p < N`) of
one image and memberships :math:`U` (:math:`N \times K`, rows summing to 1), one iteration
sets

.. math::
    c_k = \frac{\sum_p u_{pk}^2\, x_p}{\sum_p u_{pk}^2}, \qquad
    d_{pk} = \max\big(\lVert x_p - c_k \rVert^2,\ 10^{-10}\big), \qquad
    u_{pk} \leftarrow \frac{1 / d_{pk}}{\sum_{k'} 1 / d_{pk'}},

for at most 15 iterations, and an image stops after the first iteration whose change
:math:`\lVert U_{\text{new}} - U_{\text{old}} \rVert_F` (over that image's :math:`N \times K`
entries) is below :math:`10^{-3}`; the result is the :math:`U` of that iteration. Every
image has its own stopping test, so its result never depends on the other images of the
batch. Readings of SPEC where it leaves room:

- the first iteration's change is measured against the initial memberships :math:`U_0`
  (SPEC: "the change of U"); the release starts testing only at the second iteration, which
  differs only where :math:`U_1` is within :math:`10^{-3}` of :math:`U_0` (e.g. a
  :math:`U_0` that is already a fixed point);
- "below" is strict (:math:`< 10^{-3}`), and "at most 15 iterations" means a 15th
  iteration's :math:`U` is returned whether or not it passed the test.

The squared distances are computed as :math:`\lVert x \rVert^2 - 2 x \cdot c +
\lVert c \rVert^2` (two matrix products per iteration, as fast as the release's) on the
features minus the image's mean: distances do not change under a translation of the image,
and centring keeps the cancellation of that expansion small. The computation runs in the
input's dtype, float32 at least.

**Membership rule** (:func:`membership_mask`, per image): node :math:`p` is in hyperedge
:math:`k` where :math:`u_{pk} > 0.01`. Where some node of the image has
:math:`\max_k u_{pk} < 0.1` ("weak"), the weak nodes' rows become one-hot at their argmax and
the threshold becomes :math:`u_{pk} > 0.5` for every node of that image (the others keep
their memberships). A node then in no hyperedge is attached to its argmax. Both comparisons
are strict; an argmax tie goes to the lower hyperedge index. The release applies the weak
rule and the 0.5 threshold to the whole batch as soon as one node of any image is weak; this
module follows SPEC's per-image rule. A node attached to its argmax is a member of that
hyperedge like any other (the incidence has one entry for it, so it enters the hyperedge's
mean); the release lists the hyperedge only on the node's side.

Off the CPU nothing is read back to the host: :func:`fuzzy_c_means` runs all its iterations
(an image that has stopped keeps its :math:`U`, so the result is the same), and
:func:`padded_incidence` gives the incidence in a size known in advance.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..fast_paths import cpu_path

#: SPEC's constants: iteration cap, stopping tolerance, distance floor, thresholds.
MAX_ITER = 15
TOL = 1e-3
DIST_FLOOR = 1e-10
THRESHOLD = 0.01
WEAK = 0.1
WEAK_THRESHOLD = 0.5

__all__ = ["fuzzy_c_means", "membership_mask", "hyperedge_incidence", "padded_incidence",
           "random_memberships"]


def _check(x: Tensor, u0: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"fuzzy_c_means: x must be node features [B, N, C], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(u0, Tensor) or u0.dim() != 3 or u0.shape[:2] != x.shape[:2]:
        raise ValueError(f"fuzzy_c_means: u0 must be memberships [B, N, K] with the B, N of x "
                         f"{tuple(x.shape[:2])}, got "
                         f"{tuple(u0.shape) if isinstance(u0, Tensor) else type(u0).__name__}")


def random_memberships(num_images: int, nodes: int, clusters: int, generator=None,
                       device=None, dtype=torch.float32) -> Tensor:
    """``[B, N, K]`` uniform random rows normalised to sum 1 (``generator`` as
    :func:`torch.rand` takes it; ``None``: the global generator)."""
    u = torch.rand(num_images, nodes, clusters, generator=generator, device=device,
                   dtype=dtype)
    return u / u.sum(-1, keepdim=True)


def fuzzy_c_means(x: Tensor, u0: Tensor, *, max_iter: int = MAX_ITER, tol: float = TOL,
                  return_iterations: bool = False, early_stop: bool | None = None):
    """Fuzzy c-means from initial memberships ``u0`` (see the module docstring).

    Args:
        x: node features ``[B, N, C]`` (each image clustered on its own).
        u0: initial memberships ``[B, N, K]`` (rows summing to 1).
        max_iter, tol: the iteration cap and the stopping tolerance (SPEC: 15 and 1e-3).
        return_iterations: also return how many iterations every image ran (``[B]``).
        early_stop: leave the loop once every image has stopped, which reads the test back
            to the host (``None``: on the CPU only); the result is the same either way.

    Returns:
        ``U`` ``[B, N, K]`` in the computation dtype (float32 at least), and with
        ``return_iterations`` the ``[B]`` iteration counts.
    """
    _check(x, u0)
    if early_stop is None:
        early_stop = cpu_path(x)
    dtype = torch.promote_types(torch.promote_types(x.dtype, u0.dtype), torch.float32)
    x = x.to(dtype)
    x = x - x.mean(1, keepdim=True)                  # translation-free, smaller cancellation
    sq = x.square().sum(-1, keepdim=True)            # [B, N, 1]
    u = u0.to(dtype)
    b = x.size(0)
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    iterations = torch.zeros(b, dtype=torch.long, device=x.device)
    for _ in range(max_iter):
        w = u.square()                                                    # u^2, [B, N, K]
        centres = torch.bmm(w.transpose(1, 2), x) / w.sum(1).unsqueeze(-1)   # [B, K, C]
        d = sq - 2 * torch.bmm(x, centres.transpose(1, 2)) + centres.square().sum(-1).unsqueeze(1)
        inv = d.clamp_min(DIST_FLOOR).reciprocal()
        new = inv / inv.sum(-1, keepdim=True)
        change = torch.linalg.vector_norm(new - u, dim=(1, 2))
        # a stopped image keeps the U of the iteration that stopped it
        u = torch.where(active.view(b, 1, 1), new, u)
        iterations += active
        active &= ~(change < tol)
        # past this point every image is masked out: the iterations left change nothing
        if early_stop and not bool(active.any()):
            break
    return (u, iterations) if return_iterations else u


def membership_mask(u: Tensor) -> Tensor:
    """``[B, N, K]`` bool: node ``p`` of image ``b`` is in hyperedge ``k`` (SPEC's rule, per
    image; see the module docstring)."""
    if not isinstance(u, Tensor) or u.dim() != 3:
        raise ValueError(f"membership_mask: U must be memberships [B, N, K], got "
                         f"{tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__}")
    best = u.argmax(-1, keepdim=True)                                     # lowest index on ties
    onehot = torch.zeros_like(u, dtype=torch.bool).scatter_(-1, best, True)
    weak = u.amax(-1, keepdim=True) < WEAK                                # [B, N, 1]
    image_weak = weak.any(1, keepdim=True)                                # [B, 1, 1]
    threshold = torch.where(image_weak, u.new_tensor(WEAK_THRESHOLD), u.new_tensor(THRESHOLD))
    mask = torch.where(weak, onehot, u > threshold)    # a one-hot row passes 1 > 0.5
    return mask | (onehot & ~mask.any(-1, keepdim=True))                  # attach to argmax


def hyperedge_incidence(u: Tensor) -> Tensor:
    """The node -> hyperedge incidence ``[2, nnz]`` of memberships ``U [B, N, K]``: row 0 the
    node ``b*N + p``, row 1 the hyperedge ``b*K + k`` (numbered over the batch, image ``b``'s
    after image ``b - 1``'s), sorted by node, then hyperedge."""
    b, n, k = u.shape
    img, node, edge = membership_mask(u).nonzero(as_tuple=True)
    return torch.stack([img * n + node, img * k + edge])


def padded_incidence(u: Tensor) -> Tensor:
    """The incidence of :func:`hyperedge_incidence` in a size that does not depend on
    ``U``: all ``B*N*K`` pairs ``(b*N + p, b*K + k)`` in that order, a pair that is no
    membership replaced by the padding entry ``(B*N, B*K)``, one past the last node and the
    last hyperedge (which ``vihgnn`` drops). Nothing is read back: the form for a device
    other than the CPU. ``[2, B*N*K]``."""
    b, n, k = u.shape
    device = u.device
    mask = membership_mask(u)
    node = torch.arange(b * n, device=device).view(b, n, 1).expand(b, n, k)
    edge = torch.arange(b * k, device=device).view(b, 1, k).expand(b, n, k)
    node = torch.where(mask, node, b * n)
    edge = torch.where(mask, edge, b * k)
    return torch.stack([node.reshape(-1), edge.reshape(-1)])
