"""Draws the neighbours of one centre patch under each graph builder, side by side.

The features are the raw pixels of the 16 x 16 patches of scikit-image's astronaut photo at
224 px (a 14 x 14 grid, vig_ti's first-block grid), so the feature-space builders (knn,
axial_threshold, window_knn, clustered_knn, hypergraph_fcm) choose neighbours that look
alike. ``static_knn`` is ``knn`` on the stage input, so it has no panel of its own. For the
hypergraph the panel shows the members of the centre's hyperedges; for the gated axial graph
the gated long-range neighbours are drawn in red.

    python examples/draw_graph_builders.py [--out docs/graph_builders.png] [--centre 5 6]
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

from vig_pyg.graph import graph_builder
from vig_pyg.graph.builders import BlockInfo, as_built_graph

PANELS = [("knn", {}, "knn (k = 9)"), ("axial", {"hop": 2}, "axial (SVGA, hop 2)"),
          ("axial_threshold", {"hop": 2}, "axial_threshold (DAGC, hop 2)"),
          ("window_knn", {"window": 7}, "window_knn (7 x 7, k = 9)"),
          ("spatial_knn", {}, "spatial_knn (k = 9)"), ("random", {}, "random (k = 9, eval)"),
          ("mgc", {}, "mgc (MobileViGv2, hop 2)"), ("lsgc", {}, "lsgc (LogViG, base 2)"),
          ("gated_axial", {}, "gated_axial (AdaptViG, hop 2)"),
          ("clustered_knn", {}, "clustered_knn (ClusterViG, 4 parts)"),
          ("hypergraph_fcm", {"hyperedges": 25}, "hypergraph_fcm (ViHGNN, 25)")]
GRID, PATCH, ROWS = 14, 16, 2


def patch_features() -> tuple[np.ndarray, torch.Tensor]:
    from skimage import data
    from skimage.transform import resize

    image = resize(data.astronaut(), (GRID * PATCH, GRID * PATCH), anti_aliasing=True)
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).double()
    feats = F.unfold(x, PATCH, stride=PATCH).view(1, -1, GRID, GRID)  # [1, 768, 14, 14]
    return image, feats - feats.mean(dim=(2, 3), keepdim=True)


def neighbours(name: str, options: dict, feats: torch.Tensor,
               centre: int) -> tuple[list[int], list[int]]:
    """(neighbours, those among them that are gated long-range neighbours only) of
    ``centre``."""
    builder = graph_builder(name, **options).eval()
    builder.bind_block(BlockInfo(0, 0, 9, 1, 1), {})
    built = as_built_graph(builder(feats, k=9))
    src, dst = built.edge_index
    if built.is_hypergraph:  # row 0 node, row 1 hyperedge: the centre's hyperedges' members
        mine = dst[src == centre]
        return sorted(set(src[torch.isin(dst, mine)].tolist())), []
    near = src[dst == centre].tolist()
    if built.edge_attr is None:
        return near, []
    kind, mine = built.edge_attr[dst == centre, 0], src[dst == centre]
    return near, sorted(set(mine[kind == 1].tolist()) - set(mine[kind == 0].tolist()))


def draw(out: str, centre_rc: tuple[int, int]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image, feats = patch_features()
    centre = centre_rc[0] * GRID + centre_rc[1]
    cols = -(-len(PANELS) // ROWS)
    fig, axes = plt.subplots(ROWS, cols, figsize=(3.1 * cols, 3.4 * ROWS), squeeze=False)
    for ax in axes.ravel()[len(PANELS):]:
        ax.set_visible(False)
    for ax, (name, options, title) in zip(axes.ravel(), PANELS):
        ax.imshow(image * 0.55 + 0.45)
        near, gated = neighbours(name, options, feats, centre)
        for n in near:
            r, c = divmod(n, GRID)
            colour = "tab:red" if n in gated else "tab:orange"
            ax.add_patch(Rectangle((c * PATCH, r * PATCH), PATCH, PATCH, facecolor=colour,
                                   alpha=0.75, edgecolor="black", linewidth=0.6))
        r, c = centre_rc
        ax.add_patch(Rectangle((c * PATCH, r * PATCH), PATCH, PATCH, fill=False,
                               edgecolor="tab:blue", linewidth=2.5))
        ax.set_xticks(np.arange(0, GRID * PATCH + 1, PATCH), minor=True)
        ax.set_yticks(np.arange(0, GRID * PATCH + 1, PATCH), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.3)
        ax.tick_params(which="both", length=0, labelbottom=False, labelleft=False)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"Neighbours (orange; red: gated long-range only) of patch {centre_rc} (blue) "
                 f"on a 14 x 14 grid", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="docs/graph_builders.png")
    p.add_argument("--centre", type=int, nargs=2, default=(4, 6), metavar=("ROW", "COL"))
    args = p.parse_args(argv)
    draw(args.out, tuple(args.centre))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
