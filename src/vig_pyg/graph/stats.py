"""Edge statistics of patch graphs on real images (the `vig-pyg graph` command)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .knn import knn_edges
from .patch_graph import PatchGraph


def digit_patch_maps(num_images: int, grid: int, patch: int = 4) -> torch.Tensor:
    """scikit-learn's embedded 8x8 digits, upsampled, cut into ``patch x patch`` patches:
    a ``[B, patch*patch, grid, grid]`` map of raw patch pixels."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:num_images], dtype=torch.float32)
    images = F.interpolate(images.unsqueeze(1) / 16.0, size=grid * patch, mode="bilinear",
                           align_corners=False)
    patches = F.unfold(images, patch, stride=patch)  # [B, p*p, grid*grid]
    return patches.view(images.size(0), patch * patch, grid, grid)


def _time_ms(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def print_graph_stats(images: int = 16, grid: int = 14, k: int = 9, dilation: int = 1,
                      reduce_ratio: int = 1) -> None:
    fmap = digit_patch_maps(images, grid)
    # Pixels are in [0, 1]; blank patches all normalise to zero length, which would make
    # many distances tie, so centre them first (the model's features never tie in practice).
    fmap = fmap - fmap.mean(dim=1, keepdim=True) + 1e-3 * torch.randn_like(fmap)
    graph = PatchGraph.from_feature_map(fmap)
    kwargs = dict(dilation=dilation, reduce_ratio=reduce_ratio)
    graph.edge_index = knn_edges(fmap, k, backend="dense", **kwargs)
    cluster = knn_edges(fmap, k, backend="cluster", **kwargs)
    src, dst = graph.edge_index
    key_grid = grid // reduce_ratio
    n_keys = key_grid * key_grid
    key_rc = torch.stack([(src % n_keys) // key_grid, (src % n_keys) % key_grid], 1)
    key_rc = (key_rc.float() + 0.5) * reduce_ratio - 0.5  # key centres in node coordinates
    spatial = (key_rc - graph.pos[dst].float()).norm(dim=1)
    in_degree = torch.bincount(dst, minlength=graph.num_nodes)
    print(f"patch graph: {graph.num_graphs} digit images, {grid}x{grid} patches of 4x4 pixels, "
          f"k={k}, dilation={dilation}, reduce ratio={reduce_ratio}")
    print(f"  nodes {graph.num_nodes}, edges {graph.num_edges}, in-degree "
          f"min/max {int(in_degree.min())}/{int(in_degree.max())}")
    print(f"  edges crossing images: {int((src // n_keys != dst // (grid * grid)).sum())}")
    if reduce_ratio == 1:
        print(f"  self-loops: {float((src == dst).float().mean()):.1%} of edges")
    print(f"  neighbour distance on the grid: mean {float(spatial.mean()):.2f} patches, "
          f"median {float(spatial.median()):.2f}, max {float(spatial.max()):.2f}")
    print(f"  dense and cluster backends agree on {float((cluster == graph.edge_index).all(0).float().mean()):.2%} of edges")
    dense_ms = _time_ms(lambda: knn_edges(fmap, k, backend="dense", **kwargs))
    cluster_ms = _time_ms(lambda: knn_edges(fmap, k, backend="cluster", **kwargs))
    print(f"  time per call: dense {dense_ms:.2f} ms, cluster {cluster_ms:.2f} ms "
          f"({cluster_ms / dense_ms:.1f}x)")
