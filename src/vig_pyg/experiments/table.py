"""``table.md`` of a study: one row per configuration, the header that says how to read it.

Columns: the configuration, validation top-1 when the study selects on it, test top-1
(mean +- sample std over seeds), seeds, params, GMACs, and with a reference row the
paired difference to it: mean [95% CI] unadjusted, the Bonferroni simultaneous interval,
the Holm-adjusted p-value and whether the difference survives the adjustment
(:mod:`.stats`). "(best)" marks the best mean of the selection split: validation when
every finished run has one, else test (and the header says so).
"""
from __future__ import annotations

from .stats import ALPHA, bonferroni_level


def _fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def _mean_std(mean, std, best) -> str:
    if mean is None:
        return "no finished run"
    text = f"{mean:.2f} +- {std:.2f}" if std is not None else f"{mean:.2f}"
    return f"**{text}** (best)" if mean == best else text


def _p(p: float) -> str:
    if p == 0:
        return "0"
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def _comparison(c) -> list:
    """The four comparison cells: mean [95% CI], simultaneous CI, p (Holm), differs?."""
    d = c["delta"]
    if c["reference"]:
        return ["reference", "", "", ""]
    if d is None:
        return ["n/a" if c["mean"] is not None else "", "", "", ""]
    if d["low"] is None:
        return [f"{d['mean']:+.2f} (CI n/a, 1 seed)", "n/a", "n/a", "n/a"]
    return [f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]",
            f"[{d['sim_low']:+.2f}, {d['sim_high']:+.2f}]", _p(d["p_holm"]),
            "yes" if d["differs"] else "no"]


def format_table(study, configs: list, selection: str = "test", m: int = 0) -> str:
    """Markdown table, rows in grid order. ``selection`` "val" adds the validation column
    and puts the best marker there; ``m`` is the comparison family size (:func:`.stats.adjust`)."""
    val = selection == "val"
    key = "val_mean" if val else "mean"
    means = [c[key] for c in configs if c[key] is not None]
    best = max(means) if means else None
    head = ["configuration"] + (["val top-1 (%)", "test top-1 (%)"] if val else ["top-1 (%)"])
    head += ["seeds", "params (M)", "GMACs"]
    if study.reference:
        head += ["vs reference, mean [95% CI]", f"simultaneous CI (Bonferroni, m={m})",
                 "p (Holm)", "differs?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        cells = [c["label"]]
        if val:
            cells.append(_mean_std(c["val_mean"], c["val_std"], best))
        cells.append(_mean_std(c["mean"], c["std"], None if val else best))
        params = c["params"] / 1e6 if c["params"] is not None else None
        cells += [str(c["n"]), _fmt(params, ".3f"), _fmt(c["gmacs"], ".4f")]
        if study.reference:
            cells += _comparison(c)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def header(study, selection: str, m: int, with_val: int, done: int, conditions: str) -> str:
    """The lines above the table: what is shown, how the best is chosen, the adjustment,
    the conditions. ``with_val``/``done``: finished runs with a validation split / all."""
    if selection == "val":
        best = ("(best) marks the best validation mean: selected on validation; test "
                "reported once")
    elif with_val:
        best = (f"(best) marks the best test mean: only {with_val} of {done} finished runs "
                "have a validation split")
    else:
        best = "(best) marks the best test mean: the study has no validation split"
    lines = [f"Study `{study.name}`: top-1 (%) mean +- std over seeds; {best}."]
    if study.reference:
        sim = f"each at {100 * bonferroni_level(m):.4g}%" if m else "none"
        lines.append(
            "Paired difference to the reference (same seed): mean [95% CI], unadjusted "
            f"(Student t). Adjustment for the family of m={m} comparisons with >= 2 paired "
            f"seeds: Holm-Bonferroni p-values (differs? = yes when p (Holm) < {ALPHA}) and "
            f"Bonferroni simultaneous intervals ({sim}).")
    else:
        lines.append("No reference row: no paired differences.")
    return "\n".join(lines + [conditions]) + "\n"
