r"""The dynamic k-nearest-neighbour graph that every Grapher block rebuilds.

For queries :math:`x_i` and candidate keys :math:`y_j` of the same image (both L2-normalised)
the distance is :math:`\lVert x_i - y_j \rVert^2 + b_{ij}` with an optional relative-position
term :math:`b`. Each query takes its :math:`k \cdot d` nearest keys (itself included when the
keys are the queries), sorted by ascending distance, and keeps ranks :math:`0, d, 2d, \dots`.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import fast_paths, native
from ..tracing import tracing
from .relative_position import relative_position_features, relative_position_table
from .selection import smallest_k

BACKENDS = ("auto", "dense", "cluster")


def l2_cache_bytes(default: int = 1 << 20,
                   cpu: str = "/sys/devices/system/cpu/cpu0") -> int:
    """One core's L2 cache in bytes, from Linux's sysfs (``cpu``'s ``cache/index*``);
    ``default`` where it cannot be read (other systems)."""
    from pathlib import Path

    for index in sorted(Path(cpu, "cache").glob("index*")):
        try:
            level, kind, size = (
                (index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        if level == "2" and kind in ("Unified", "Data") and size[:-1].isdigit():
            return int(size[:-1]) << {"K": 10, "M": 20}.get(size[-1], 0)
    return default


#: The single pass holds one image's keys normalised and transposed (channels x keys,
#: padded to 16) and reads them all for every eight queries, so it is faster than the
#: matmul + selection while they stay in a core's L2 cache and slower once they do not:
#: on this project's 2 MiB-L2 machine, 1.14-1.58x faster from 200k to 400k floats of keys
#: and 0.50-0.80x from 530k up (detection-size maps with many keys), whatever the channel
#: count (1.4-1.55x at 384-1024 channels on 49-196 nodes); ``benchmarks/bench_knn.py
#: --single-pass``. Above this many floats the matmul path is taken.
SINGLE_PASS_MAX_KEY_FLOATS = l2_cache_bytes() // 4
#: Products (rows x keys x channels) below which one thread does the whole single pass.
SINGLE_PASS_WORK_PER_THREAD = 1 << 20

#: Default bound on the distance entries the dense backend holds at once (2^22 float32 =
#: 16 MiB); large grids are processed in chunks of images and query rows below it. A block
#: this size stays in a server processor's last-level cache between the matmul that writes
#: it, the relative-position add and the selection that read it: inside pvig_ti (stage 1:
#: 39 MiB in one block at 2^24) the kNN took about 15% less time than at 2^24.
MAX_CHUNK_ELEMENTS = 2 ** 22


def _image_offsets(num_images: int, num_keys: int, device: torch.device) -> Tensor:
    """``[G, 1, 1]``: the first key of every image, ``0, M, 2M, ...``."""
    if tracing():
        return torch.arange(num_images, device=device).mul_(num_keys).view(-1, 1, 1)
    return _cached_image_offsets(num_images, num_keys, device)


@lru_cache(maxsize=64)
def _cached_image_offsets(num_images: int, num_keys: int, device: torch.device) -> Tensor:
    # constant for a given shape: two fewer kernel launches per graph on a GPU
    return torch.arange(num_images, device=device).mul_(num_keys).view(-1, 1, 1)


def _target_index(num_targets: int, k: int, device: torch.device) -> Tensor:
    """``[0]*k + [1]*k + ...``: the target row of a fixed-degree graph."""
    if tracing():
        return torch.arange(num_targets, device=device).view(-1, 1).expand(-1, k).reshape(-1)
    return _cached_target_index(num_targets, k, device)


@lru_cache(maxsize=64)
def _cached_target_index(num_targets: int, k: int, device: torch.device) -> Tensor:
    # The target row of a fixed-degree graph never changes for a given shape.
    return torch.arange(num_targets, device=device).repeat_interleave(k)


def mark_fixed_degree(edge_index: Tensor, k: int) -> Tensor:
    """``edge_index``, recorded as holding ``k`` edges per target in target order (the
    layout :func:`knn_edges` returns), so that :func:`fixed_degree` takes it on trust
    instead of reading the target row back, for as long as nothing writes to it (its
    version counter unchanged). Reading it back costs a pass over the edges and, on a GPU,
    a synchronisation for every graph convolution; every builder that makes this layout
    marks its result. Inference tensors (``torch.inference_mode``) have no version counter:
    their mark holds for their lifetime (inside inference mode nothing of vig_pyg writes to
    an edge_index). Writes that bypass the counter (through ``.data`` or a NumPy view) are
    not seen."""
    if not tracing():
        edge_index._vig_fixed_degree = (
            k, None if edge_index.is_inference() else edge_index._version)
    return edge_index


def fixed_degree(edge_index: Tensor, num_targets: int) -> int | None:
    """``k`` if ``edge_index`` has exactly ``k`` edges per target, grouped by target in
    order (the layout :func:`knn_edges` returns), else ``None``: trusted where
    :func:`mark_fixed_degree` recorded it, else checked against the target row on the CPU.
    Off the CPU an unmarked ``edge_index`` counts as not fixed-degree: reading its target
    row back would stall the device's stream at every graph convolution.

    While tracing (:func:`torch.compile`, :func:`torch.export`, ONNX export) the values
    cannot be read, so ``num_edges = k * num_targets`` is taken as that layout: trace
    models on graphs from :func:`knn_edges` (the Grapher's always are)."""
    num_edges = edge_index.size(1)
    if num_targets == 0 or num_edges == 0 or num_edges % num_targets:
        return None
    k = num_edges // num_targets
    if tracing():
        return k
    version = None if edge_index.is_inference() else edge_index._version
    if getattr(edge_index, "_vig_fixed_degree", None) == (k, version):
        return k
    if not fast_paths.cpu_path(edge_index):
        return None
    if torch.equal(edge_index[1], _target_index(num_targets, k, edge_index.device)):
        return k
    return None


def mark_max_degree(edge_index: Tensor, max_degree: int) -> Tensor:
    """``edge_index``, recorded as grouped by target in order (row 1 non-decreasing) with
    at most ``max_degree`` edges per target, for as long as nothing writes to it (its
    version counter unchanged), so that :func:`vig_pyg.conv.padded.padded_propagate` sizes
    its table without reading the targets back. Not while tracing, nor for inference
    tensors (no version counter), like :func:`mark_fixed_degree`."""
    if not tracing() and not edge_index.is_inference():
        edge_index._vig_max_degree = (max_degree, edge_index._version)
    return edge_index


def marked_max_degree(edge_index: Tensor) -> int | None:
    """The ``max_degree`` :func:`mark_max_degree` recorded, if nothing has written to
    ``edge_index`` since; else ``None``."""
    mark = getattr(edge_index, "_vig_max_degree", None)
    if mark is None or mark[1] != edge_index._version:
        return None
    return mark[0]


def _check_like(x: Tensor, t: Tensor | None, name: str, dtype: bool = True) -> None:
    """``t`` on ``x``'s device (and of its dtype), or one clear error."""
    if t is not None and (t.device != x.device or (dtype and t.dtype != x.dtype)):
        raise ValueError(f"`{name}` must be on x's device{' with its dtype' if dtype else ''} "
                         f"({x.dtype} on {x.device}), got {t.dtype} on {t.device}; convert it "
                         f"with {name}.to(x)")


def _check_batch(batch: Tensor | None, num_nodes: int, name: str) -> Tensor | None:
    if batch is None:
        return None
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"`{name}` must be a vector of length {num_nodes} (one graph id per "
                         f"node), got shape {tuple(batch.shape)}")
    if num_nodes > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"`{name}` must be sorted (nodes of one graph stored together, as "
                         f"in a PyG Batch); sort the nodes by graph id first")
    return batch.long()


def watches_non_finite(x: Tensor) -> bool:
    """Whether NaN/Inf in ``x`` are an error: not while tracing, nor under
    float16/bfloat16 autocast, where an overflow is routine and
    :class:`torch.amp.GradScaler` skips the step (the top-k of a NaN distance still
    returns valid indices, and the NaN reaches the loss)."""
    kind = x.device.type
    return not (tracing() or x.dtype in (torch.float16, torch.bfloat16)
                or torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind))


def _refuses_non_finite(x: Tensor) -> bool:
    """Whether the kNN itself stops on NaN/Inf in ``x``: on the CPU, where
    :func:`watches_non_finite`. Elsewhere the answer would have to be read back to the
    host, which stalls the device's stream in every block and rules out CUDA graphs; there
    the Grapher keeps a flag on the device instead (:mod:`vig_pyg.models.finite`)."""
    return fast_paths.cpu_path(x) and watches_non_finite(x)


def _not_finite(name: str) -> ValueError:
    return ValueError(
        f"{name} contain NaN or Inf values: nearest neighbours are undefined for them "
        f"(check the input images and the learning rate; the graph is not built)")


def _check_finite(x: Tensor, name: str) -> None:
    """Raise on NaN/Inf where :func:`_refuses_non_finite`."""
    if _refuses_non_finite(x) and not bool(torch.isfinite(x).all()):
        raise _not_finite(name)


def _counts(batch: Tensor | None, num_nodes: int, num_graphs: int, device) -> Tensor:
    if batch is None:
        return torch.tensor([num_nodes], device=device)
    return torch.bincount(batch, minlength=num_graphs)


def _keep_ranks(k: int, dilation: int, stochastic: bool, epsilon: float, training: bool,
                device) -> Tensor | slice:
    """Which of the k*d sorted candidates each query keeps."""
    kd = k * dilation
    if stochastic and training and float(torch.rand(1)) < epsilon:
        return torch.randperm(kd, device=device)[:k].sort().values
    return slice(None, None, dilation)


def knn_edges(x: Tensor, k: int, *, batch: Tensor | None = None, dilation: int = 1,
              keys: Tensor | None = None, key_batch: Tensor | None = None,
              reduce_ratio: int = 1, relative_pos: Tensor | None = None,
              stochastic: bool = False, epsilon: float = 0.2, training: bool = False,
              backend: str = "auto", max_chunk_elements: int = MAX_CHUNK_ELEMENTS) -> Tensor:
    r"""Builds the (dilated) k-nearest-neighbour graph of ViG.

    Args:
        x: queries, either a feature map ``[B, C, H, W]`` (node ``b*H*W + row*W + col``) or
            node features ``[N, C]`` with ``batch``.
        k: neighbours kept per query.
        batch: graph id of every node of a 2-D ``x`` (sorted); ``None`` means one graph.
        dilation: ``d``; the ``k*d`` nearest are found and every ``d``-th is kept.
        keys: candidate neighbours when they differ from the queries (bipartite graph):
            a ``[B, C, H', W']`` map for a 4-D ``x``, else ``[M, C]`` with ``key_batch``.
        reduce_ratio: ``r``; for a 4-D ``x`` without ``keys``, the keys are the ``r x r``
            average-pooled map.
        relative_pos: ``[N_img, M_img]`` (or ``[1, N_img, M_img]``) term added to the
            distances of every image (pyramid models), e.g. from
            :func:`~vig_pyg.graph.relative_position_table`.
        stochastic, epsilon, training: with probability ``epsilon``, in training only,
            keep ``k`` random ranks of the ``k*d`` instead of every ``d``-th.
        backend: ``"dense"`` (float32 on the CPU: one compiled pass, the fast path
            ``"single_pass"``; else batched matmul + top-k, chunked to at most
            ``max_chunk_elements`` distances at a time), ``"cluster"``
            (:func:`torch_cluster.knn`, the reference) or ``"auto"`` (dense when every
            graph has the same number of nodes and keys, cluster otherwise).

    Returns:
        ``edge_index [2, N*k]``: row 0 the neighbour (source, an index into the keys),
        row 1 the centre (target); the ``k`` edges of each target are stored together,
        targets in order, neighbours by ascending distance.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown kNN backend {backend!r}; choose one of {BACKENDS}")
    if k < 1 or dilation < 1 or reduce_ratio < 1:
        raise ValueError(f"k, dilation and reduce_ratio must be >= 1, got {k}, {dilation}, "
                         f"{reduce_ratio}")
    if (reduce_ratio == 1 and backend != "cluster" and not (stochastic and training)
            and fast_paths.enabled("knn_direct")):
        edges = _single_pass_map(x, keys, k, dilation, relative_pos)
        if edges is not None:
            return edges
    _check_like(x, keys, "keys")
    _check_like(x, relative_pos, "relative_pos", dtype=False)
    rule = dict(k=k, dilation=dilation, relative_pos=relative_pos, stochastic=stochastic,
                epsilon=epsilon, training=training, backend=backend,
                max_chunk_elements=max_chunk_elements)
    if x.dim() == 4:
        if batch is not None or key_batch is not None:
            raise ValueError("`batch`/`key_batch` are implied by a 4-D feature map; pass "
                             "node features [N, C] to give them explicitly")
        edges = _knn_map(x, keys, reduce_ratio, **rule)
    elif x.dim() == 2:
        edges = _knn_nodes(x, batch, keys, key_batch, reduce_ratio, **rule)
    else:
        raise ValueError(f"x must be node features [N, C] or a feature map [B, C, H, W], got "
                         f"a {x.dim()}-D tensor of shape {tuple(x.shape)}")
    return mark_fixed_degree(edges, k)


def _single_pass_map(x: Tensor, keys: Tensor | None, k: int, dilation: int,
                     relative_pos: Tensor | None) -> Tensor | None:
    """:func:`knn_edges` of a channels-last float32 CPU map ``[B, C, H, W]`` (keys, if
    any, the same kind of map) in one call of the single pass, or ``None`` where anything
    else holds: the general path then decides, errors included. The fast path
    ``"knn_direct"`` (:mod:`vig_pyg.fast_paths`) switches this route; off, such maps take
    the general path, which gives the same edges.

    Inside a model each Python step and torch op of the general path costs several times
    what it does in a loop (the convolutions between graphs leave the interpreter's caches
    cold): about 0.19 ms a graph in pvig_ti at batch 16 (0.14 this way), where the single
    pass itself takes 0.37 ms at the last stage. This path reads the rows where the map
    holds them (a channels-last map is node-major already), reuses its scratch, and only
    allocates the edge_index."""
    if not (x.dim() == 4 and x.dtype == torch.float32 and x.is_cpu and k >= 1
            and dilation >= 1 and x.numel()
            and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    b, c, h, w = x.shape
    n = m = h * w
    if keys is not None:
        if not (keys.dim() == 4 and keys.dtype == torch.float32 and keys.is_cpu
                and keys.shape[:2] == x.shape[:2]
                and keys.is_contiguous(memory_format=torch.channels_last)):
            return None
        m = keys.shape[2] * keys.shape[3]
    rel = relative_pos
    if rel is not None and not (rel.dtype == torch.float32 and rel.is_cpu
                                and rel.shape[-2:] == (n, m) and rel.is_contiguous()
                                and (rel.dim() == 2 or rel.dim() == 3 and rel.shape[0] == 1)):
        return None
    kd = k * dilation
    lib = _single_pass_library(x, n, m, c, kd)
    if lib is None:
        return None
    out = torch.empty(2, b * n * k, dtype=torch.long)
    flags = _single_pass_run(lib, x, x if keys is None else keys, rel, b, n, m, c, kd,
                             keys is None, k, dilation, b * n * k, out)
    _raise_flags(flags, x, keys)
    return mark_fixed_degree(out, k)


def _knn_map(x: Tensor, keys: Tensor | None, reduce_ratio: int, *, k, dilation,
             relative_pos, stochastic, epsilon, training, backend,
             max_chunk_elements) -> Tensor:
    """:func:`knn_edges` of a feature map ``[B, C, H, W]``."""
    b, c, h, w = x.shape
    if keys is None and reduce_ratio > 1:
        keys = F.avg_pool2d(x, reduce_ratio, reduce_ratio)
    if keys is not None and (keys.dim() != 4 or keys.shape[:2] != x.shape[:2]):
        raise ValueError(f"keys for a [B, C, H, W] map must be a [B, C, H', W'] map with "
                         f"the same B and C, got {tuple(keys.shape)}")
    queries = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    key_nodes = queries if keys is None else keys.permute(0, 2, 3, 1).reshape(b, -1, c)
    return _knn_grid(queries, key_nodes, k, dilation, relative_pos, stochastic, epsilon,
                     training, backend, max_chunk_elements, (h, w), keys is None)


def _knn_nodes(x: Tensor, batch: Tensor | None, keys: Tensor | None,
               key_batch: Tensor | None, reduce_ratio: int, *, k, dilation, relative_pos,
               stochastic, epsilon, training, backend, max_chunk_elements) -> Tensor:
    """:func:`knn_edges` of node features ``[N, C]`` (graph ids in ``batch``)."""
    if reduce_ratio > 1 and keys is None:
        raise ValueError("reduce_ratio > 1 pools a grid: pass x as a [B, C, H, W] feature "
                         "map, or pass the pooled `keys` yourself")
    batch = _check_batch(batch, x.size(0), "batch")
    if keys is None:
        key_nodes, key_batch, self_keys = x, batch, True
    else:
        if keys.dim() != 2 or keys.size(1) != x.size(1):
            raise ValueError(f"keys must be [M, {x.size(1)}] node features, got "
                             f"{tuple(keys.shape)}")
        key_batch = _check_batch(key_batch, keys.size(0), "key_batch")
        if (batch is None) != (key_batch is None):
            raise ValueError("pass both `batch` and `key_batch`, or neither")
        key_nodes, self_keys = keys, False
    num_graphs = 1 if batch is None else int(batch[-1]) + 1 if batch.numel() else 0
    if key_batch is not None and key_batch.numel():
        num_graphs = max(num_graphs, int(key_batch[-1]) + 1)
    q_counts = _counts(batch, x.size(0), num_graphs, x.device)
    k_counts = _counts(key_batch, key_nodes.size(0), num_graphs, x.device)
    equal = bool((q_counts == q_counts[0]).all()) and bool((k_counts == k_counts[0]).all())
    if backend == "auto":
        backend = "dense" if equal else "cluster"
    if backend == "dense":
        if not equal:
            raise ValueError("the dense kNN backend needs the same number of nodes in every "
                             "graph; use backend='cluster' for variable node counts")
        g, n, m = num_graphs, int(q_counts[0]), int(k_counts[0])
        return _knn_grid(x.reshape(g, n, -1), key_nodes.reshape(g, m, -1), k, dilation,
                         relative_pos, stochastic, epsilon, training, "dense",
                         max_chunk_elements, None, self_keys)
    _check_candidates(int(k_counts[q_counts > 0].min()) if bool((q_counts > 0).any()) else
                      k * dilation, k, dilation)
    _check_finite(x, "node features")
    if not self_keys:
        _check_finite(key_nodes, "key features")
    if relative_pos is not None:
        raise ValueError("a relative-position term on node features [N, C] needs the grid: "
                         "pass a [B, C, H, W] feature map, or use backend='dense'")
    return _cluster(F.normalize(x, dim=-1), F.normalize(key_nodes, dim=-1), batch,
                    key_batch, k, dilation, stochastic, epsilon, training)


def _check_candidates(num_keys: int, k: int, dilation: int) -> None:
    if k * dilation > num_keys:
        raise ValueError(
            f"k * dilation = {k} * {dilation} = {k * dilation} exceeds the {num_keys} "
            f"candidate neighbours of the smallest graph; lower k or the dilation (or the "
            f"reduce ratio), or use larger images")


def _knn_grid(queries: Tensor, keys: Tensor, k: int, dilation: int, relative_pos, stochastic,
              epsilon, training, backend, max_chunk_elements, grid, self_keys) -> Tensor:
    """Equal-size graphs: queries ``[G, N, C]``, keys ``[G, M, C]``."""
    g, n, c = queries.shape
    m = keys.size(1)
    _check_candidates(m, k, dilation)
    if relative_pos is not None:
        if relative_pos.dim() == 3 and relative_pos.size(0) == 1:
            relative_pos = relative_pos[0]
        if relative_pos.shape != (n, m):
            raise ValueError(
                f"relative_pos must be [{n}, {m}] (queries x keys per image), got "
                f"{tuple(relative_pos.shape)}; resize it with "
                f"vig_pyg.graph.resize_relative_position")
    if backend == "cluster":
        return _cluster_grid(queries, keys, k, dilation, relative_pos, stochastic, epsilon,
                             training, grid, self_keys)
    with torch.no_grad():
        kd = k * dilation
        ranks = _keep_ranks(k, dilation, stochastic, epsilon, training, queries.device)
        every_dth = isinstance(ranks, slice)  # the single pass then writes the whole edge_index
        idx = None if tracing() else _single_pass_nearest(
            queries, keys, relative_pos, kd, self_keys,
            *((k, dilation) if every_dth else (kd, 1)), offset=every_dth)
        if idx is None:
            idx = _matmul_nearest(queries, keys, relative_pos, kd, self_keys,
                                  max_chunk_elements)
        elif every_dth:
            return idx  # the whole edge_index
        idx = idx[..., ranks]
        src = (idx + _image_offsets(g, m, idx.device)).reshape(-1)
        return torch.stack([src, _target_index(g * n, k, idx.device)])


def _matmul_nearest(queries: Tensor, keys: Tensor, relative_pos: Tensor | None, kd: int,
                    self_keys: bool, max_chunk_elements: int) -> Tensor:
    """Indices ``[G, N, kd]`` of each query's ``kd`` nearest keys within its image, by the
    normalisation, a batched matmul and the selection (in chunks of at most
    ``max_chunk_elements`` distances; one block while tracing)."""
    g, n, _ = queries.shape
    m = keys.size(1)
    q, q_sq = _normalize(queries, "node features")
    y, y_sq = (q, q_sq) if self_keys else _normalize(keys, "key features")
    # |q_i|^2 is the same for every candidate of query i, so it cannot change the order
    y_sq = y_sq.unsqueeze(1)  # [G, 1, M]
    img_step, row_step = _chunks(g, n, m, max_chunk_elements)
    if tracing() or (img_step >= g and row_step >= n):  # one block (while tracing the
        return _nearest(q, y, y_sq, relative_pos, kd)   # batch size may be symbolic)
    idx = torch.empty(g, n, kd, dtype=torch.long, device=q.device)
    for g0 in range(0, g, img_step):
        for r0 in range(0, n, row_step):
            gs, rs = slice(g0, g0 + img_step), slice(r0, r0 + row_step)
            idx[gs, rs] = _nearest(q[gs, rs], y[gs], y_sq[gs], None if relative_pos is None
                                   else relative_pos[rs], kd)
    return idx


def _nearest(q: Tensor, y: Tensor, y_sq: Tensor, relative_pos: Tensor | None,
             kd: int) -> Tensor:
    """Indices ``[G, N, kd]`` of the ``kd`` smallest ``|y_j|^2 - 2 q_i.y_j (+ b_ij)``,
    ascending."""
    out = None if tracing() else _workspace(q.shape[:2] + y.shape[1:2], q)
    dist = torch.baddbmm(y_sq, q, y.transpose(1, 2), alpha=-2.0, out=out)
    if relative_pos is not None:
        dist += relative_pos
    return smallest_k(dist, kd)  # torch.topk's selection, 3-6x faster on CPU (selection.py)


def _single_pass_nearest(queries: Tensor, keys: Tensor, relative_pos: Tensor | None, kd: int,
                         self_keys: bool, keep: int, step: int, *, offset: bool) -> Tensor | None:
    """What :func:`_matmul_nearest` computes, normalisation included, for every image at
    once in one compiled pass that holds a few rows of distances at a time, or one image's
    when the keys are the queries (``native/_nearest.c``): ``[G, N, keep]`` ranks ``0,
    step, 2 step, ...`` of each query's ``kd`` nearest, as key indices within the image, or, with
    ``offset``, the whole ``edge_index [2, G * N * keep]``: sources into all ``G * M`` keys,
    then targets (the layout :func:`knn_edges` returns). ``None`` where it does not
    apply (:func:`_single_pass_library`)."""
    g, n, c = queries.shape
    m = keys.size(1)
    lib = (_single_pass_library(queries, n, m, c, kd)
           if queries.numel() else None)
    if lib is None:
        return None
    q = queries.contiguous()
    y = q if self_keys else keys.contiguous()
    rel = None if relative_pos is None else relative_pos.to(torch.float32).contiguous()
    # with `offset`, the pass writes the whole edge_index, targets too: a tensor of
    # sources stacked with the cached target row would cost two more passes over the edges
    # and a second fresh tensor (7 MB at pvig_ti's first stage, faulted in page by page)
    out = torch.empty(2 if offset else 1, g * n * keep, dtype=torch.long)
    flags = _single_pass_run(lib, q, y, rel, g, n, m, c, kd, self_keys, keep, step,
                             g * n * keep if offset else 0, out)
    _raise_flags(flags, queries, keys)
    return out if offset else out.view(g, n, keep)


def _single_pass_library(x: Tensor, n: int, m: int, c: int, kd: int):
    """The compiled library where the single pass applies to ``x``'s rows: the fast path
    ``"single_pass"`` on, float32 on the CPU with the library built
    (:func:`vig_pyg.native.library_for`), ``kd`` within the selection's buffers and the
    candidates, and an image's keys (transposed, padded to 16) within
    :data:`SINGLE_PASS_MAX_KEY_FLOATS`; else ``None`` (the matmul + selection then runs)."""
    if not 0 < kd <= min(m, native.MAX_KD) or n == 0:
        return None
    floats = c * -(-m // native.LANES) * native.LANES
    return native.library_for(x, "single_pass") if floats <= SINGLE_PASS_MAX_KEY_FLOATS else None


def _single_pass_run(lib, q: Tensor, y: Tensor, rel: Tensor | None, g: int, n: int, m: int,
                     c: int, kd: int, self_keys: bool, keep: int, step: int, offset: int,
                     out: Tensor) -> int:
    """One call of the single pass on node-major rows (``q`` [G*N, C] and ``y`` [G*M, C] in
    memory; ``y`` is ``q`` for self keys) into ``out``, over as many threads as its work
    asks; returns the pass's flags (1: a query's norm, 2: a key's norm was not finite)."""
    threads = max(1, min(torch.get_num_threads(), g * n * m * c // SINGLE_PASS_WORK_PER_THREAD))
    floats = _scratch_floats(lib, n, m, c, kd, self_keys)
    scratch = _scratch(threads * floats)  # held by this name for the whole call
    args = (q.data_ptr(), y.data_ptr(), 0 if rel is None else rel.data_ptr(), n, m, c, kd,
            self_keys, keep, step, offset)
    return _single_pass_call(lib, args, g, n, out.data_ptr(), scratch.data_ptr(), threads, floats)


@lru_cache(maxsize=256)
def _scratch_floats(lib, n: int, m: int, c: int, kd: int, self_keys: bool) -> int:
    return lib.vig_nearest_scratch(n, m, c, kd, self_keys)


#: Floats of single-pass scratch a Python thread keeps from call to call (8 MiB): the zoo's
#: blocks at batch 16 need at most about 4.1 MiB over two threads (pvig_b's first stage, by
#: ``vig_nearest_scratch``), so each of them reuses it, where a fresh buffer would be
#: faulted in page by page on every call; larger jobs (detection-size maps: about 9 MiB a
#: thread at 2 x 100x166 nodes, 96 channels, r=2 keys) get a fresh buffer each call and
#: hand it back.
SCRATCH_KEPT_FLOATS = 1 << 21


def _scratch(floats: int) -> Tensor:
    """At least ``floats`` floats of scratch for the single pass: this Python thread's own,
    reused from call to call (the pass writes before it reads), up to
    :data:`SCRATCH_KEPT_FLOATS`; a fresh tensor beyond."""
    if floats > SCRATCH_KEPT_FLOATS:
        return torch.empty(floats)
    buf = getattr(_buffers, "scratch", None)
    if buf is None or buf.numel() < floats:
        with torch.inference_mode(False):
            buf = _buffers.scratch = torch.empty(floats)
    return buf


def _raise_flags(flags: int, queries: Tensor, keys: Tensor | None) -> None:
    """The single pass's report of a NaN or an infinity, as :func:`_check_finite` words it."""
    if flags & 1 and _refuses_non_finite(queries):
        raise _not_finite("node features")
    if flags & 2 and keys is not None and _refuses_non_finite(keys):
        raise _not_finite("key features")


def _single_pass_call(lib, args: tuple, g: int, n: int, out: int, scratch: int, threads: int,
                      floats: int) -> int:
    """Runs the single pass into the edges at address ``out`` over ``threads`` threads,
    ``floats`` of scratch each from address ``scratch`` on: torch's OpenMP threads where
    the library joins them (``vig_nearest_rows``), else one ``vig_nearest`` call per thread
    of our pool on its part of the rows (``vig_nearest_split``). Returns the pass's flags
    (1: a query's norm, 2: a key's norm was not finite)."""
    if threads == 1 or lib.vig_select_openmp():
        return lib.vig_nearest_rows(*args[:3], g, *args[3:], out, scratch, threads)
    bounds = [lib.vig_nearest_split(g, n, threads, t) for t in range(threads + 1)]
    jobs = [native.executor().submit(lib.vig_nearest, *args, bounds[t], bounds[t + 1],
                                      out, scratch + 4 * t * floats)
            for t in range(threads) if bounds[t] < bounds[t + 1]]
    flags = 0
    for job in jobs:
        flags |= job.result()
    return flags


def _normalize(x: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """``(x / |x|, |x / |x||^2)`` along the last dim (norms clamped at 1e-12), refusing
    NaN/Inf as :func:`_check_finite` does: a NaN or an infinity anywhere in a row shows in
    its norm, so only the norms need checking.

    Float32 on the CPU takes one compiled pass (``native/_normalize.c``; the fast path
    ``"normalize"``): it reads ``x`` once and writes the rows once, where the torch ops
    below take five passes, each into a fresh tensor: 1.7-3x faster on vig_ti's and
    pvig_ti's block shapes (``benchmarks/bench_knn.py --parts``)."""
    lib = native.library_for(x, "normalize")
    if lib is None or x.numel() == 0:
        norm = _norms(x)
        if _refuses_non_finite(x) and not bool(torch.isfinite(norm).all()):
            # finite entries whose squares overflow float32: summed in double, as the
            # compiled pass does (a norm still beyond float32's range is refused)
            norm = _norms(x.double()).to(x.dtype) if bool(torch.isfinite(x).all()) else norm
            _check_finite(norm, name)
        y = x / norm.clamp_min(1e-12)
        return y, (y * y).sum(-1)
    x = x.contiguous()
    y, sq = torch.empty_like(x), x.new_empty(x.shape[:-1])
    c = x.size(-1)
    finite = lib.vig_normalize_rows(x.data_ptr(), x.numel() // c, c, y.data_ptr(),
                                    sq.data_ptr(), torch.get_num_threads())
    if not finite and _refuses_non_finite(x):
        raise _not_finite(name)
    return y, sq


def _norms(x: Tensor) -> Tensor:
    """L2 norms along the last dim, ``[..., 1]``. On the CPU ``torch.linalg.vector_norm`` is
    an order of magnitude slower when the channels are not the innermost dim (node features
    of a plain ``[B, C, H, W]`` map), and a few hundredths of a millisecond faster when they
    are (the models' channels-last maps): ``benchmarks/bench_knn.py --parts``. One rule for
    both keeps the rounding independent of the layout. Off the CPU ``vector_norm`` is one
    kernel where the three ops are three."""
    if not fast_paths.cpu_path(x):
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x.square().sum(-1, keepdim=True).sqrt_()


_buffers = threading.local()


def _workspace(shape, like: Tensor) -> Tensor | None:
    """A per-thread float buffer for the distance block, reused call after call (CPU only).

    A fresh tensor of tens of MiB comes from the operating system page by page, and its page
    faults can cost more than the matmul that fills it: pvig_ti's stage-1 block (16 x 3136 x
    196 float32, 39 MiB; ``benchmarks/bench_knn.py --parts``). The buffer
    holds at most ``max_chunk_elements`` values (16 MiB by default) per thread that builds
    graphs; CUDA's caching allocator already reuses memory, so it is not used there."""
    if like.device.type != "cpu":
        return None
    numel = shape[0] * shape[1] * shape[2]
    buf = getattr(_buffers, "dist", None)
    if buf is None or buf.dtype != like.dtype or buf.numel() < numel:
        with torch.inference_mode(False):  # else unusable outside inference mode
            buf = _buffers.dist = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def _chunks(g: int, n: int, m: int, max_elements: int) -> tuple[int, int]:
    """(images, query rows) per chunk so a chunk's distance block stays <= max_elements."""
    per_image = n * m
    if per_image <= max_elements:
        return max(1, max_elements // per_image), n
    return 1, max(1, max_elements // m)


def _cluster_grid(queries, keys, k, dilation, relative_pos, stochastic, epsilon, training,
                  grid, self_keys) -> Tensor:
    g, n, c = queries.shape
    m = keys.size(1)
    _check_finite(queries, "node features")
    _check_finite(keys, "key features")
    q = F.normalize(queries, dim=-1)
    y = q if self_keys else F.normalize(keys, dim=-1)
    if relative_pos is not None:
        pos = _exact_position_features(relative_pos, grid, c, self_keys)
        q = torch.cat([q, pos.to(q).expand(g, n, -1)], dim=-1)
        y = q
    batch_q = torch.arange(g, device=q.device).repeat_interleave(n)
    batch_y = torch.arange(g, device=q.device).repeat_interleave(m)
    return _cluster(q.reshape(g * n, -1), y.reshape(g * m, -1), batch_q, batch_y, k,
                    dilation, stochastic, epsilon, training)


def _exact_position_features(relative_pos: Tensor, grid, dim: int, self_keys: bool) -> Tensor:
    """Positional features reproducing ``relative_pos`` exactly, or a clear error."""
    if grid is None or not self_keys:
        raise ValueError(
            "the cluster backend supports a relative-position term only through the "
            "positional-feature identity, which holds for keys = queries on the table's own "
            "grid (reduce ratio 1); a bicubically resized table (r > 1 or another input "
            "size) has no such identity: use backend='dense'")
    expected = relative_position_table(grid, dim).to(relative_pos)
    if not torch.allclose(relative_pos, expected, rtol=0, atol=1e-5):
        raise ValueError(
            f"relative_pos is not the sine-cosine table of the {grid[0]}x{grid[1]} grid at "
            f"width {dim} (resized or trained?), so the cluster backend cannot express it "
            f"as positional features; use backend='dense'")
    return relative_position_features(grid, dim)


def _cluster(q: Tensor, y: Tensor, batch_q, batch_y, k, dilation, stochastic, epsilon,
             training) -> Tensor:
    import torch_cluster

    kd = k * dilation
    with torch.no_grad():
        if batch_q is None:
            batch_q = torch.zeros(q.size(0), dtype=torch.long, device=q.device)
            batch_y = torch.zeros(y.size(0), dtype=torch.long, device=q.device)
        query, key = torch_cluster.knn(y, q, kd, batch_y, batch_q)
        # torch_cluster does not promise an order within a query: sort each query's kd
        # candidates by distance (stable on ties, so the order is reproducible).
        dist = (q[query] - y[key]).pow(2).sum(-1)
        order = torch.argsort(dist, stable=True)
        order = order[torch.argsort(query[order], stable=True)]
        key = key[order].view(-1, kd)
        key = key[:, _keep_ranks(k, dilation, stochastic, epsilon, training, q.device)]
        return torch.stack([key.reshape(-1), _target_index(q.size(0), k, q.device)])
