r"""Lloyd's k-means as ClusterViG's clustered kNN uses it (SPEC, "More graphs of the family").

From initial centres :math:`c^{(0)}_k = x_{\text{init}_k}` (``K`` distinct nodes), every
iteration :math:`t = 1, 2, \dots` (at most ``max_iter``)

.. math::
    \ell_p = \operatorname*{arg\,min}_k \lVert x_p - c^{(t-1)}_k \rVert^2
    \quad\text{(ties: the lower } k\text{)},\qquad
    c^{(t)}_k = \frac{1}{|\{p : \ell_p = k\}|} \sum_{p : \ell_p = k} x_p
    \quad (c^{(t)}_k = 0 \text{ for an empty cluster}),

and stops after the first iteration whose mean centre movement
:math:`\frac{1}{K} \sum_k \lVert c^{(t)}_k - c^{(t-1)}_k \rVert_2` is below ``tol`` (strict).
The result is the last assignment :math:`\ell`, the centres :math:`c^{(t)}` computed from it
(so every centre is the mean of its cluster, zero if empty) and the inertia
:math:`\sum_p \lVert x_p - c^{(t)}_{\ell_p} \rVert^2`.

:func:`batched_kmeans` runs one such k-means per image of ``[B, N, C]`` at once (each image
stops on its own test; an image that has stopped is left as it was while the others go on),
and with several sets of initial centres (restarts) keeps per image the result of lowest
inertia (the earlier restart on a tie). :func:`kmeans` is the one-image form.

The stopping test is read back to the host only on the CPU. Elsewhere all ``max_iter``
iterations run, with the same result: an image that has stopped keeps its assignment and
centres (its later iterations are masked out), so running on changes nothing.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..fast_paths import cpu_path
from .counting import count_values

__all__ = ["kmeans", "batched_kmeans"]


def _check(x: Tensor, init: Tensor, max_iter: int, tol: float) -> None:
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"kmeans: max_iter must be an int >= 1, got {max_iter!r}")
    if not float(tol) >= 0.0:
        raise ValueError(f"kmeans: tol must be >= 0, got {tol!r}")
    if x.dim() != 3:
        raise ValueError(f"batched_kmeans: x must be [B, N, C], got {tuple(x.shape)}")
    b, n, _ = x.shape
    if init.dtype not in (torch.int32, torch.int64) or init.dim() != 3 or init.size(1) != b:
        raise ValueError(f"batched_kmeans: init must be node indices [restarts, B, K] "
                         f"(B = {b}), got {init.dtype} {tuple(init.shape)}")
    if init.size(2) < 1 or init.size(2) > n:
        raise ValueError(f"batched_kmeans: K = {init.size(2)} clusters need 1 <= K <= N = {n}")


def _assign(x: Tensor, centres: Tensor) -> Tensor:
    """Nearest centre of every row, ``[B, N]``. Distances are computed pair by pair (not
    through a matrix product, whose blocking can round equal centres differently), so equal
    centres tie exactly; ``argmin`` takes the first minimum, the lower centre index. The
    Euclidean distance is monotone in its square."""
    dist = torch.cdist(x, centres, compute_mode="donot_use_mm_for_euclid_dist")   # [B, N, K]
    return dist.argmin(-1)


def _means(x: Tensor, labels: Tensor, k: int) -> Tensor:
    """Mean of every cluster, ``[B, K, C]``; zero for an empty one."""
    b, n, c = x.shape
    index = (labels + torch.arange(b, device=x.device).mul_(k).unsqueeze(1)).view(-1)
    sums = x.new_zeros(b * k, c).index_add_(0, index, x.reshape(b * n, c))
    counts = count_values(index, b * k).clamp_min_(1).to(x.dtype)
    return (sums / counts.unsqueeze(1)).view(b, k, c)


def _lloyd(x: Tensor, init: Tensor, max_iter: int, tol: float, early_stop: bool):
    """One k-means per image: ``x [B, N, C]``, ``init [B, K]``; ``early_stop`` ends the
    loop once every image has stopped (a read back), else all ``max_iter`` run."""
    b = x.size(0)
    centres = x[torch.arange(b, device=x.device).unsqueeze(1), init]   # [B, K, C]
    labels = None
    active = torch.ones(b, dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        new_labels = _assign(x, centres)
        new_centres = _means(x, new_labels, init.size(1))
        shift = (new_centres - centres).norm(dim=-1).mean(-1)          # [B]
        if labels is None:
            labels = new_labels
        else:  # images that stopped already keep their result
            labels = torch.where(active.unsqueeze(1), new_labels, labels)
        centres = torch.where(active.view(b, 1, 1), new_centres, centres)
        active = active & ~(shift < tol)
        # past this point every image is masked out: the iterations left change nothing
        if early_stop and not bool(active.any()):
            break
    assigned = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, x.size(2)))
    inertia = (x - assigned).pow(2).sum((1, 2))
    return labels, centres, inertia


def batched_kmeans(x: Tensor, init: Tensor, max_iter: int = 25, tol: float = 1e-3, *,
                   early_stop: bool | None = None):
    """k-means of every image (module docstring).

    Args:
        x: ``[B, N, C]`` rows of ``B`` images.
        init: ``[B, K]`` initial centres (node indices, distinct per image), or
            ``[R, B, K]`` for ``R`` restarts.
        max_iter, tol: the iteration cap and the stopping threshold.
        early_stop: leave the loop once every image has stopped, which reads the test back
            to the host (``None``: on the CPU only); the result is the same either way.

    Returns:
        ``(labels [B, N], centres [B, K, C], inertia [B])``, per image from the restart of
        lowest inertia (the earlier one on a tie).
    """
    if init.dim() == 2:
        init = init.unsqueeze(0)
    _check(x, init, max_iter, tol)
    r, b, k = init.shape
    n, c = x.shape[1:]
    # the restarts as extra images: one batched run
    xs = x.unsqueeze(0).expand(r, b, n, c).reshape(r * b, n, c)
    if early_stop is None:
        early_stop = cpu_path(x)
    labels, centres, inertia = _lloyd(xs, init.reshape(r * b, k), max_iter, tol, early_stop)
    if r == 1:
        return labels, centres, inertia
    best = inertia.view(r, b).argmin(0)                               # first minimum
    pick = best * b + torch.arange(b, device=x.device)
    return labels[pick], centres[pick], inertia[pick]


def kmeans(x: Tensor, init: Tensor, max_iter: int = 25, tol: float = 1e-3):
    """k-means of one set of rows ``x [N, C]`` from the initial centres ``x[init]``
    (``init [K]`` distinct node indices): ``(labels [N], centres [K, C], inertia)``, the
    inertia a 0-dimensional tensor."""
    if x.dim() != 2 or init.dim() != 1:
        raise ValueError(f"kmeans: x must be [N, C] and init [K], got {tuple(x.shape)} and "
                         f"{tuple(init.shape)}")
    labels, centres, inertia = batched_kmeans(x.unsqueeze(0), init.view(1, 1, -1),
                                              max_iter, tol)
    return labels[0], centres[0], inertia[0]

