"""Per-block statistics of the captured patch graphs and node features.

Notation for one block: queries (centres) ``i`` on the block's ``H x W`` grid at positions
``p_i = (row, col)``; keys (neighbours) ``j`` at positions ``q_j``; edges ``(j -> i)`` in
``E``; node features ``x_i`` (rows of ``X``, ``n`` nodes per image). Without pooling the
keys are the queries and ``q_j = p_j``. With reduce ratio ``r`` key ``(u, v)`` is the
average of the query patches ``[u r, (u+1) r) x [v r, (v+1) r)``; its centre on the query
grid is ``q = ((u + 0.5) r - 0.5, (v + 0.5) r - 0.5)``, and its features are the ``r x r``
average of the query features (the model pools its own features the same way).

A hypergraph is read through its clique expansion (every node joined to every member of its
hyperedges, :func:`~vig_pyg.diagnostics.capture.clique_expansion`), so reach, self-loops,
in-degree, Jaccard, Dirichlet energy and homophily are those of the nodes a centre reaches
through its hyperedges; two columns are its own, NaN for graphs: ``hyperedge_size``, the mean
member count of the non-empty hyperedges, and ``hyperedges_per_node``, the mean number of
hyperedges a node belongs to.

Block rows pool every image of the batch (one disconnected graph) except the feature
statistics marked "per image", which are averaged over images.
"""
from __future__ import annotations

import csv
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .capture import BlockGraph

#: Columns of :func:`stats_table`, in order.
COLUMNS = ["model", "block", "image", "grid", "keys", "r", "edges", "reach_mean",
           "reach_median", "beyond", "radius", "self_loops", "indeg_max", "indeg_gini",
           "jaccard_prev", "diversity_in", "diversity_conv", "dirichlet_in", "dirichlet_conv",
           "cosine_in", "cosine_conv", "homophily", "hyperedge_size", "hyperedges_per_node"]


_CHUNK = 8192  # edges per step of dirichlet_energy


# ------------------------------------------------------------------ positions and reach
def grid_positions(grid: tuple[int, int]) -> Tensor:
    """``[H*W, 2]`` float64 ``(row, col)`` of node ``row*W + col``."""
    h, w = grid
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    return torch.stack([rows, cols], dim=1)


def key_positions(key_grid: tuple[int, int], reduce_ratio: int) -> Tensor:
    """Key centres on the query grid: ``q_(u,v) = ((u + 0.5) r - 0.5, (v + 0.5) r - 0.5)``
    (``= (u, v)`` for ``r = 1``)."""
    return (grid_positions(key_grid) + 0.5) * reduce_ratio - 0.5


def edge_lengths(block: BlockGraph) -> Tensor:
    """``d_e = ||p_i - q_j||_2`` for every edge ``e = (j -> i)``, in patches of the block's
    (query) grid, self-loops included (``d = 0``); float64 ``[E]``."""
    src, dst = block.edge_index
    p = grid_positions(block.grid)[dst % block.num_nodes]
    q = key_positions(block.key_grid, block.reduce_ratio)[src % block.num_keys]
    return (p - q).norm(dim=1)


def spatial_reach(lengths: Tensor, radius: float) -> dict:
    """Mean and median of the edge lengths ``d_e`` (median: the average of the two middle
    values for an even count) and the share beyond the radius, ``|{e : d_e > R}| / |E|``."""
    if lengths.numel() == 0:
        return {"reach_mean": math.nan, "reach_median": math.nan, "beyond": math.nan}
    d = lengths.double().sort().values
    m = d.numel()
    median = 0.5 * (d[(m - 1) // 2] + d[m // 2])
    return {"reach_mean": float(d.mean()), "reach_median": float(median),
            "beyond": float((d > radius).double().mean())}


def reach_max(lengths: Tensor) -> float:
    """``max_e d_e``, the longest edge (NaN without edges)."""
    return float(lengths.double().max()) if lengths.numel() else math.nan


# ------------------------------------------------------------------ structure
def self_loop_share(block: BlockGraph) -> float:
    """``|{(j -> i) : j is i}| / |E|``. With pooled keys (``r > 1``) an edge is a self-loop
    when the query lies inside the key's pooling window: ``(row // r, col // r) == (u, v)``
    (the key then contains the centre's own features)."""
    src, dst = block.edge_index
    if src.numel() == 0:
        return math.nan
    if block.reduce_ratio == 1:
        return float((src == dst).double().mean())
    n, m, r = block.num_nodes, block.num_keys, block.reduce_ratio
    same_image = src // m == dst // n
    row, col = (dst % n) // block.grid[1], (dst % n) % block.grid[1]
    u, v = (src % m) // block.key_grid[1], (src % m) % block.key_grid[1]
    return float((same_image & (row // r == u) & (col // r == v)).double().mean())


def cross_image_edges(block: BlockGraph) -> int:
    """``|{(j -> i) : j // (h w) != i // (H W)}|``: edges whose key lies in another image of
    the batch than their centre (0 for a graph built image by image)."""
    src, dst = block.edge_index
    return int((src // block.num_keys != dst // block.num_nodes).sum())


def in_degree(block: BlockGraph) -> Tensor:
    """``deg(j) = |{i : (j -> i) in E}|`` for every key node of the batch (zeros included):
    how often each patch is chosen as a neighbour."""
    return torch.bincount(block.edge_index[0], minlength=block.num_images * block.num_keys)


def gini(values: Tensor) -> float:
    """Gini coefficient ``G = sum_a sum_b |v_a - v_b| / (2 n sum_a v_a)``, computed from the
    ascending sort as ``sum_a (2a - n - 1) v_(a) / (n sum v)`` (``a = 1..n``). 0 when every
    key is chosen equally often, ``(n - 1) / n`` when one hub takes every edge."""
    v = values.double().flatten().sort().values
    n, total = v.numel(), float(v.sum())
    if n == 0 or total == 0:
        return math.nan
    a = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * a - n - 1) * v).sum() / (n * total))


def jaccard(a: BlockGraph, b: BlockGraph) -> float:
    """``|E_a & E_b| / |E_a | E_b|`` of the edge sets (pairs ``(j, i)``, duplicates counted
    once); NaN when the two blocks do not have the same query and key grids."""
    if (a.grid, a.key_grid, a.num_images) != (b.grid, b.key_grid, b.num_images):
        return math.nan
    size = a.num_images * a.num_nodes
    ea = torch.unique(a.edge_index[0] * size + a.edge_index[1])
    eb = torch.unique(b.edge_index[0] * size + b.edge_index[1])
    union = torch.unique(torch.cat([ea, eb])).numel()
    return float(torch.isin(ea, eb).sum()) / union if union else math.nan


def hypergraph_sizes(block: BlockGraph) -> dict:
    """``hyperedge_size = nnz / |{e : |e| > 0}|`` and ``hyperedges_per_node = nnz / N`` of a
    hypergraph block (NaN for a graph)."""
    if not block.is_hypergraph:
        return {"hyperedge_size": math.nan, "hyperedges_per_node": math.nan}
    nnz = block.incidence.size(1)
    used = torch.unique(block.incidence[1]).numel()
    return {"hyperedge_size": nnz / used if used else math.nan,
            "hyperedges_per_node": nnz / (block.num_images * block.num_nodes)}


# ------------------------------------------------------------------ over-smoothing
def feature_diversity(x: Tensor) -> float:
    """``D(X) = ||X - 1 mu^T||_F / ||X||_F`` with ``mu = X^T 1 / n`` (one image's nodes).

    The ViG paper's diversity ``||X - 1 x^T||`` with ``x = argmin_x ||X - 1 x^T||`` is, in the
    Frobenius norm, the distance from the mean row; dividing by ``||X||_F`` makes blocks of
    different scale comparable: 0 when every node has the same features, at most 1.
    """
    x = x.double()
    norm = float(x.norm())
    return float((x - x.mean(dim=0, keepdim=True)).norm()) / norm if norm > 0 else math.nan


def mean_cosine(x: Tensor) -> float:
    """``(1 / (n (n - 1))) sum_{a != b} x_a . x_b / (||x_a|| ||x_b||)`` over one image's
    nodes (zero rows count as orthogonal to everything); 1 when all nodes point the same
    way. Computed as ``(||sum_a u_a||^2 - sum_a ||u_a||^2) / (n (n - 1))``, ``u = x / ||x||``."""
    n = x.shape[0]
    if n < 2:
        return math.nan
    u = F.normalize(x.double(), dim=1)
    return float((u.sum(0).square().sum() - u.square().sum()) / (n * (n - 1)))


def pooled_rows(x: Tensor, block: BlockGraph) -> Tensor:
    """Key features of the block from query rows ``[B*H*W, C]``: the rows themselves for
    ``r = 1``, else the ``r x r`` average-pooled map (as the model pools its keys)."""
    if block.reduce_ratio == 1:
        return x
    (h, w), c, r = block.grid, x.shape[1], block.reduce_ratio
    fmap = x.view(block.num_images, h, w, c).permute(0, 3, 1, 2)
    return F.avg_pool2d(fmap, r, r).permute(0, 2, 3, 1).reshape(-1, c)


def dirichlet_energy(x: Tensor, block: BlockGraph) -> float:
    """Relative Dirichlet energy on the block's graph:
    ``E(X) = [(1/|E|) sum_{(j -> i) in E} ||x_i - y_j||^2] / [(1/N) sum_i ||x_i||^2]``,
    ``y`` the key features (:func:`pooled_rows`). 0 for constant features; the
    denominator makes blocks of different scale comparable."""
    x = x.double()
    src, dst = block.edge_index
    scale = float(x.square().sum(1).mean())
    if src.numel() == 0 or scale == 0:
        return math.nan
    y = pooled_rows(x, block)
    total = 0.0
    for start in range(0, src.numel(), _CHUNK):  # chunks: no [E, C] temporary on big batches
        d, s = dst[start:start + _CHUNK], src[start:start + _CHUNK]
        total += float((x[d] - y[s]).square().sum())
    return total / src.numel() / scale


# ------------------------------------------------------------------ homophily
def patch_labels(mask: Tensor, grid: tuple[int, int], cell: tuple[int, int]) -> Tensor:
    """``[B, H_img, W_img]`` integer pixel labels -> ``[B*h*w]`` label of every cell
    ``[u*ch, (u+1)*ch) x [v*cw, (v+1)*cw)`` of ``grid = (h, w)``: its most frequent pixel label
    (negative labels mean unknown)."""
    (h, w), (ch, cw) = grid, cell
    b = mask.shape[0]
    cells = mask[:, :h * ch, :w * cw].reshape(b, h, ch, w, cw).permute(0, 1, 3, 2, 4)
    return cells.reshape(b * h * w, ch * cw).mode(dim=1).values


def block_labels(block: BlockGraph, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(l_query [B*H*W], l_key [B*h*w])``: the majority pixel label of every query patch
    and of every key's whole pooling window (:func:`patch_labels`)."""
    if mask.shape[0] != block.num_images:
        raise ValueError(f"{mask.shape[0]} label masks for {block.num_images} images")
    ph, pw = mask.shape[1] // block.grid[0], mask.shape[2] // block.grid[1]
    r = block.reduce_ratio
    return (patch_labels(mask, block.grid, (ph, pw)),
            patch_labels(mask, block.key_grid, (ph * r, pw * r)))


def homophily(block: BlockGraph, mask: Tensor | None = None, labels=None) -> float:
    """``|{(j -> i) : l_i = l_j}| / |{(j -> i) : l_i, l_j known}|``: the share of edges
    joining patches of the same label, labels from a pixel ``mask`` or given as
    ``labels = (l_query, l_key)`` (:func:`block_labels`)."""
    l_query, l_key = labels if labels is not None else block_labels(block, mask)
    li, lj = l_query[block.edge_index[1]], l_key[block.edge_index[0]]
    known = (li >= 0) & (lj >= 0)
    return float((li == lj)[known].double().mean()) if known.any() else math.nan


def foreground_mask(images: Tensor, classes: Tensor, threshold: float = 0.5) -> Tensor:
    """Pixel labels from a class per image: ``class + 1`` where the grey level (channel
    mean of images in ``[0, 1]``) exceeds ``threshold`` (the ink of a digit), ``0``
    (background) elsewhere. Homophily on it says whether ink patches join ink patches."""
    grey = images.float().mean(dim=1)
    ink = classes.long().view(-1, 1, 1).expand_as(grey) + 1
    return torch.where(grey > threshold, ink, torch.zeros_like(ink))


# ------------------------------------------------------------------ tables
def block_stats(block: BlockGraph, previous: BlockGraph | None = None, radius: float = 2.0,
                mask: Tensor | None = None, labels=None) -> dict:
    """Every statistic of one block (all its images pooled; feature statistics per image,
    averaged). ``previous``: the block before it (for ``jaccard_prev``); ``mask``: pixel
    labels ``[B, H_img, W_img]``, or ``labels`` from :func:`block_labels` (``homophily``)."""
    degree = in_degree(block)
    if labels is None and mask is not None:
        labels = block_labels(block, mask)
    row = {"grid": "x".join(map(str, block.grid)), "keys": "x".join(map(str, block.key_grid)),
           "r": block.reduce_ratio, "edges": block.edge_index.shape[1], "radius": radius,
           **spatial_reach(edge_lengths(block), radius), "self_loops": self_loop_share(block),
           "indeg_max": int(degree.max()) if degree.numel() else 0,
           "indeg_gini": gini(degree),
           "jaccard_prev": math.nan if previous is None else jaccard(block, previous),
           "homophily": math.nan if labels is None else homophily(block, labels=labels),
           **hypergraph_sizes(block)}
    for tag, x in (("in", block.x_in), ("conv", block.x_conv)):
        if x is None:
            row.update({f"diversity_{tag}": math.nan, f"cosine_{tag}": math.nan,
                        f"dirichlet_{tag}": math.nan})
            continue
        per_image = x.view(block.num_images, block.num_nodes, -1)
        row[f"diversity_{tag}"] = sum(map(feature_diversity, per_image)) / block.num_images
        row[f"cosine_{tag}"] = sum(map(mean_cosine, per_image)) / block.num_images
        row[f"dirichlet_{tag}"] = dirichlet_energy(x, block)
    return row


def stats_table(blocks: list[BlockGraph], radius: float = 2.0, mask: Tensor | None = None,
                per_image: bool = True, model: str = "model") -> list[dict]:
    """One row per block (``image = "all"``) and, with ``per_image``, one per block and
    image; keys in :data:`COLUMNS` order."""
    rows, before = [], None
    for pos, block in enumerate(blocks):
        prev = blocks[pos - 1] if pos else None
        labels = None if mask is None else block_labels(block, mask)
        targets = [("all", block, prev, labels)]
        if per_image and block.num_images > 1:
            singles = block.images()
            n, m = block.num_nodes, block.num_keys
            targets += [(b, one, before[b] if before else None,
                         None if labels is None else (labels[0][b * n:(b + 1) * n],
                                                      labels[1][b * m:(b + 1) * m]))
                        for b, one in enumerate(singles)]
            before = singles
        for image, blk, earlier, labs in targets:
            row = {"model": model, "block": block.index, "image": image,
                   **block_stats(blk, earlier, radius, labels=labs)}
            rows.append({c: row[c] for c in COLUMNS})
    return rows


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Aligned text table of ``rows`` (floats with 3 decimals)."""
    columns = columns or COLUMNS
    cells = [columns] + [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(s.rjust(w) for s, w in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_csv(rows: list[dict], path) -> str:
    """Writes ``rows`` (:data:`COLUMNS`) as CSV; returns the path."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)
