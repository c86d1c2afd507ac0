"""The report's figures (matplotlib, Agg backend, PNG): test top-1 against GMACs and per
axis value, and the curves of the selection split's top-1 and the training loss."""
from __future__ import annotations

import os


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _done(configs):
    return [c for c in configs if c["mean"] is not None]


def plot_top1_vs_gmacs(configs, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for c in _done(configs):
        ax.errorbar(c["gmacs"], c["mean"], yerr=c["std"] or 0, fmt="o", capsize=3,
                    label=c["label"], markeredgecolor="k" if c["reference"] else None)
        ax.annotate(c["label"], (c["gmacs"], c["mean"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("GMACs per image")
    ax.set_ylabel("test top-1 (%), mean +- std over seeds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _axis_points(study, configs, axis):
    """Per value of ``axis``: the configurations with the other axes at their reference
    values (all of them without a reference), pooled over seeds."""
    points = []
    for value in study.grid[axis]:
        tops = []
        for c in _done(configs):
            others_ref = all(c["values"][a] == study.reference[a]
                             for a in study.axes if a != axis) if study.reference else True
            if c["values"][axis] == value and others_ref:
                tops += list(c["top1"].values())
        points.append((value, tops))
    return points


def plot_axis(study, configs, axis, path):
    from .stats import mean_std

    plt = _pyplot()
    points = _axis_points(study, configs, axis)
    names = [str(v) for v, _ in points]
    stats = [mean_std(t) for _, t in points]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 4.2))
    xs = range(len(names))
    means = [m if m is not None else 0 for m, _ in stats]
    colors = ["tab:orange" if study.reference.get(axis) == v else "tab:blue" for v, _ in points]
    ax.bar(xs, means, yerr=[s or 0 for _, s in stats], capsize=3, color=colors)
    for x, (_, tops) in zip(xs, points):
        ax.plot([x] * len(tops), tops, "k.", ms=4)
    lows = [min(t) for _, t in points if t]
    if lows:
        ax.set_ylim(max(0, min(lows) - 3), min(100, max(max(t) for _, t in points if t) + 1))
    ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(study.axis_label(axis) + ("  (orange: reference)" if study.reference else ""))
    ax.set_ylabel("test top-1 (%); dots: seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SPLIT_NAMES = {"val": "validation", "test": "test"}


def _band(ax, runs, metric, label):
    """Mean line and min-max band over seeds of ``metric`` ("val", "test", "loss") of the
    curves (:func:`.report.read_curves`)."""
    epochs = sorted({e for r in runs for e, v in r["curves"].items() if v[metric] is not None})
    if not epochs:
        return
    per = [[r["curves"][e][metric] for r in runs
            if e in r["curves"] and r["curves"][e][metric] is not None] for e in epochs]
    mean = [sum(v) / len(v) for v in per]
    line, = ax.plot(epochs, mean, marker="o" if len(epochs) < 15 else None, ms=3, label=label)
    ax.fill_between(epochs, [min(v) for v in per], [max(v) for v in per],
                    color=line.get_color(), alpha=0.2)


def plot_curves(configs, path, split="test"):
    """Top-1 of ``split`` per epoch beside the training loss. With a validation split the
    test split is evaluated once, at the end: there is no test curve to draw."""
    plt = _pyplot()
    fig, (top, loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    for c in _done(configs):
        runs = list(c["runs"].values())
        _band(top, runs, split, c["label"])
        _band(loss, runs, "loss", c["label"])
    top.set_xlabel("epoch")
    top.set_ylabel(f"{SPLIT_NAMES[split]} top-1 (%)")
    loss.set_xlabel("epoch")
    loss.set_ylabel("training loss")
    loss.legend(fontsize=7)
    for ax in (top, loss):
        ax.grid(alpha=0.3)
    fig.suptitle("mean over seeds; band: min-max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_plots(study, configs, output, split="test") -> list:
    """The report's PNGs; ``split``: the selection split, whose top-1 the curves draw."""
    if not _done(configs):
        return []
    paths = [os.path.join(output, "top1_vs_gmacs.png"), os.path.join(output, "curves.png")]
    plot_top1_vs_gmacs(configs, paths[0])
    plot_curves(configs, paths[1], split)
    for axis in study.axes:
        p = os.path.join(output, f"top1_by_{study.axis_label(axis).replace('.', '_')}.png")
        plot_axis(study, configs, axis, p)
        paths.append(p)
    return paths
