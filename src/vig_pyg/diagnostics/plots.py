"""Pictures of the captured graphs (matplotlib, Agg, PNG).

* :func:`plot_overlay`: the neighbour figure of the ViG paper: the image, a few centre
  patches (outlined), their neighbours highlighted in the centre's colour and joined to it
  by lines, one panel per block from shallow to deep; on a hypergraph, the neighbours are
  the members of the centre's hyperedges;
* :func:`plot_in_degree`: how often each patch is chosen as a neighbour, over the image;
* :func:`plot_stats_vs_depth`: statistics against block depth, one line per model.

Figures are built with :class:`matplotlib.figure.Figure` (the Agg canvas), never pyplot,
so nothing global changes and no display is needed.

Geometry: the image is ``H_img x W_img`` pixels, the block's query grid ``H x W``, so a
patch is ``ph = H_img / H`` by ``pw = W_img / W`` pixels; query ``(row, col)`` covers
pixels ``[row ph, (row+1) ph) x [col pw, (col+1) pw)`` and pooled key ``(u, v)`` (reduce
ratio ``r``) covers ``[u r ph, (u+1) r ph) x [v r pw, (v+1) r pw)``.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import VigPygError
from .capture import BlockGraph
from .stats import in_degree

#: Colours of the centres (matplotlib's tab10, RGB in [0, 1]).
COLOURS = [(0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
           (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5)]


def default_centres(grid: tuple[int, int], count: int = 3) -> list[tuple[int, int]]:
    """``count`` centre patches spread over the grid, each a quarter of the grid in from the
    border: upper left, lower right, upper right, lower left, then the middle."""
    h, w = grid
    a, b, c, d = h // 4, h - 1 - h // 4, w // 4, w - 1 - w // 4
    spots = [(a, c), (b, d), (a, d), (b, c), (h // 2, w // 2)]
    out = []
    for spot in spots:
        if spot not in out:
            out.append(spot)
    return out[:count]


def check_centres(centres, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Raises :class:`VigPygError` for a centre outside the ``H x W`` grid."""
    out = []
    for row, col in centres:
        if not (0 <= row < grid[0] and 0 <= col < grid[1]):
            raise VigPygError(f"centre ({row}, {col}) is outside the {grid[0]}x{grid[1]} node "
                              f"grid: give rows 0..{grid[0] - 1} and columns 0..{grid[1] - 1}")
        out.append((int(row), int(col)))
    return out


def map_centre(centre, from_grid, to_grid) -> tuple[int, int]:
    """The patch of ``to_grid`` under the middle of patch ``centre`` of ``from_grid``."""
    return tuple(min(int((c + 0.5) * t / f), t - 1)
                 for c, f, t in zip(centre, from_grid, to_grid))


def neighbours_of(block: BlockGraph, image: int, centre) -> list[int]:
    """Key indices (within the image) of the neighbours of query ``centre = (row, col)``."""
    node = image * block.num_nodes + centre[0] * block.grid[1] + centre[1]
    src = block.edge_index[0][block.edge_index[1] == node]
    return sorted({int(j) - image * block.num_keys for j in src})


def key_box(block: BlockGraph, key: int, image_size) -> tuple[int, int, int, int]:
    """Pixel box ``(top, left, bottom, right)`` (exclusive ends) of key node ``key``."""
    ph, pw = image_size[0] / block.grid[0], image_size[1] / block.grid[1]
    r = block.reduce_ratio
    u, v = divmod(key, block.key_grid[1])
    return (round(u * r * ph), round(v * r * pw), round((u + 1) * r * ph),
            round((v + 1) * r * pw))


def overlay_array(image: np.ndarray, block: BlockGraph, image_index: int, centres,
                  alpha: float = 0.6, dim: float = 0.55) -> np.ndarray:
    """The image ``[H_img, W_img, 3]`` (values in [0, 1]) dimmed by ``dim`` everywhere, with
    the pixels of every neighbour of each centre blended towards the centre's colour:
    ``p <- (1 - alpha) p + alpha colour``. Pixels of no neighbour keep ``dim * p``."""
    out = np.asarray(image, dtype=np.float64) * dim
    for n, centre in enumerate(centres):
        colour = np.asarray(COLOURS[n % len(COLOURS)])
        for key in neighbours_of(block, image_index, centre):
            t, l, b, r = key_box(block, key, out.shape[:2])
            out[t:b, l:r] = (1 - alpha) * out[t:b, l:r] + alpha * colour
    return np.clip(out, 0, 1)


def _figure(panels: int, size: float = 3.0, rows: int = 1):
    from matplotlib.figure import Figure

    cols = math.ceil(panels / rows)
    fig = Figure(figsize=(size * cols, size * rows + 0.4), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes


def plot_overlay(image: np.ndarray, blocks: list[BlockGraph], image_index: int, centres,
                 path, title: str = "") -> str:
    """Neighbour overlay, one panel per block: centres (in the grid of ``blocks[0]``)
    outlined, neighbours highlighted and joined to their centre by lines."""
    from matplotlib.patches import Rectangle

    fig, axes = _figure(len(blocks))
    hi, wi = image.shape[:2]
    for ax, block in zip(axes, blocks):
        here = [map_centre(c, blocks[0].grid, block.grid) for c in centres]
        ax.imshow(overlay_array(image, block, image_index, here), interpolation="nearest")
        ph, pw = hi / block.grid[0], wi / block.grid[1]
        for n, (row, col) in enumerate(here):
            colour = COLOURS[n % len(COLOURS)]
            cy, cx = (row + 0.5) * ph - 0.5, (col + 0.5) * pw - 0.5
            for key in neighbours_of(block, image_index, (row, col)):
                t, l, b, r = key_box(block, key, (hi, wi))
                ax.plot([cx, (l + r) / 2 - 0.5], [cy, (t + b) / 2 - 0.5], color=colour, lw=0.8)
            ax.add_patch(Rectangle((col * pw - 0.5, row * ph - 0.5), pw, ph, fill=False,
                                   edgecolor="white", lw=1.5))
            ax.plot(cx, cy, "o", ms=4, color="white", mec=colour)  # visible on fine grids
        ax.set_title(f"block {block.index} ({block.grid[0]}x{block.grid[1]}"
                     + (f", keys /{block.reduce_ratio}" if block.reduce_ratio > 1 else "")
                     + (", members of its hyperedges" if block.is_hypergraph else "") + ")",
                     fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, title, path)


def _save(fig, title, path) -> str:
    """Title, layout, PNG: the end of every picture here."""
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return str(path)


def in_degree_map(block: BlockGraph, image_index: int) -> np.ndarray:
    """``[h, w]`` in-degree of every key of one image (``deg(j)``, see
    :func:`~vig_pyg.diagnostics.stats.in_degree`)."""
    deg = in_degree(block.image(image_index) if block.num_images > 1 else block)
    return deg.view(*block.key_grid).numpy()


def plot_in_degree(image: np.ndarray, blocks: list[BlockGraph], image_index: int, path,
                   title: str = "") -> str:
    """Heat map of the in-degree over the image (hub patches bright), one panel per block."""
    fig, axes = _figure(len(blocks))
    hi, wi = image.shape[:2]
    for ax, block in zip(axes, blocks):
        deg = in_degree_map(block, image_index)
        h, w = block.key_grid
        r = block.reduce_ratio
        extent = (-0.5, w * r * wi / block.grid[1] - 0.5, h * r * hi / block.grid[0] - 0.5, -0.5)
        ax.imshow(np.asarray(image).mean(axis=2), cmap="gray", vmin=0, vmax=1)
        shown = ax.imshow(deg, cmap="inferno", alpha=0.7, extent=extent, interpolation="nearest")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xlim(-0.5, wi - 0.5), ax.set_ylim(hi - 0.5, -0.5)
        ax.set_title(f"block {block.index}: in-degree (max {int(deg.max())})", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    return _save(fig, title, path)


#: Statistics shown against depth (column, axis label).
DEPTH_PANELS = [("reach_mean", "mean reach (patches)"), ("self_loops", "self-loop share"),
                ("indeg_gini", "in-degree Gini"), ("jaccard_prev", "Jaccard with previous"),
                ("diversity_in", "diversity (block input)"),
                ("diversity_conv", "diversity (after graph conv)"),
                ("dirichlet_in", "Dirichlet energy (input)"), ("cosine_in", "mean cosine (input)"),
                ("homophily", "homophily")]


def plot_stats_vs_depth(tables: dict[str, list[dict]], path, title: str = "") -> str:
    """One panel per statistic (x: block, y: value over all images), one line per model;
    panels with no finite value (e.g. homophily without labels) are left out."""
    from matplotlib.ticker import MaxNLocator

    panels = [(c, label) for c, label in DEPTH_PANELS
              if any(r["image"] == "all" and not _nan(r[c]) for rows in tables.values()
                     for r in rows)]
    fig, axes = _figure(len(panels), size=2.8, rows=math.ceil(len(panels) / 4))
    for ax, (column, label) in zip(axes, panels):
        for name, rows in tables.items():
            rows = [r for r in rows if r["image"] == "all"]
            ax.plot([r["block"] for r in rows], [r[column] for r in rows], marker="o",
                    ms=3, label=name)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("block", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if panels:
        axes[0].legend(fontsize=7)
    return _save(fig, title, path)


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)
