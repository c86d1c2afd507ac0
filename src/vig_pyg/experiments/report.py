"""``vig-pyg report DIR``: the tables and plots of a sweep directory.

- ``results.csv``: one row per run (grid values, seed, status, top-1/top-5/loss, params,
  GMACs, train and inference images/s, peak memory, wall time, error);
- ``table.md``: one row per configuration: top-1 mean +- std over seeds (sample std), the
  number of seeds, params, GMACs, and the paired difference to the reference row with its
  95% confidence interval (:mod:`.stats`); the best mean is marked;
- ``top1_vs_gmacs.png``, ``top1_by_<axis>.png``, ``curves.png`` (test top-1 and training
  loss per epoch, mean line and min-max band over seeds).

GMACs per image are counted once per model configuration with ``FlopCounterMode``
(:func:`vig_pyg.models.info.count_macs`) and cached in ``macs.json``.
"""
from __future__ import annotations

import csv
import json
import os

import yaml

from .stats import mean_std, paired_difference
from .study import Study, StudyError, override_text
from .sweep import MARKER, read_status

RESULT_FIELDS = ["name", "seed", "status", "top1", "top5", "loss", "params", "gmacs",
                 "train_img_per_s", "eval_img_per_s", "peak_rss_mb", "peak_cuda_mb",
                 "wall_time_s", "resumes", "error"]


def load_sweep(output: str) -> Study:
    marker = os.path.join(output, MARKER)
    if not os.path.exists(marker):
        raise StudyError(f"'{output}' is not a sweep directory (no {MARKER}): give the "
                         "--output of a vig-pyg sweep")
    with open(marker) as fh:
        d = yaml.safe_load(fh)
    return Study(name=d["name"], path=marker, base=d["base"], grid=d["grid"], seeds=d["seeds"],
                 reference=d.get("reference") or {}, common=d.get("set") or {},
                 sweep=d.get("sweep") or {}, include=d.get("include") or [])


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def model_macs(summary: dict, cache: dict) -> float:
    """GMACs per image of the run's model (from its saved config), cached by model section."""
    from ..models import create_model
    from ..models.info import count_macs
    from ..train.config import build_config, model_kwargs
    from ..train.imports import import_modules

    cfg = build_config(None, base=summary["config"])
    kwargs = model_kwargs(cfg, summary["num_classes"])
    key = json.dumps([cfg.model.name, kwargs, cfg.model.imports], sort_keys=True, default=str)
    if key not in cache:
        import_modules(cfg.model.imports)
        model = create_model(cfg.model.name, **kwargs)
        cache[key] = count_macs(model, cfg.data.img_size)["total"] / 1e9
    return cache[key]


def collect(study: Study, output: str) -> list:
    """One dict per run of the study (missing runs: status pending)."""
    status = read_status(output)
    cache_path = os.path.join(output, "macs.json")
    cache = _read_json(cache_path) or {}
    rows = []
    for run in study.runs():
        run_dir = os.path.join(output, "runs", run.name)
        summary = _read_json(os.path.join(run_dir, "summary.json"))
        st = status.get(run.name, {})
        row = {"name": run.name, "seed": run.seed, **run.values,
               "status": "done" if summary else st.get("state", "pending"),
               "error": None if summary else st.get("error")}
        if summary:
            row.update({k: summary.get(k) for k in ("top1", "top5", "loss", "params",
                        "train_img_per_s", "eval_img_per_s", "wall_time_s", "resumes")})
            row["gmacs"] = model_macs(summary, cache)
            row.update(_read_json(os.path.join(run_dir, "resources.json")) or {})
            row["curves"] = read_curves(os.path.join(run_dir, "metrics.csv"))
        rows.append(row)
    with open(cache_path, "w") as fh:
        json.dump(cache, fh, indent=1)
    return rows


def read_curves(path: str) -> dict:
    """{epoch: (test top-1 or None, train loss)} from metrics.csv (EMA top-1 where evaluated)."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for r in csv.DictReader(fh):
            top1 = r.get("ema_test_top1") or r.get("test_top1")
            out[int(r["epoch"])] = (float(top1) if top1 else None,
                                    float(r["train_loss"]) if r.get("train_loss") else None)
    return out


def summarize(study: Study, rows: list) -> list:
    """One dict per configuration: values, top1 mean/std, n, params, gmacs, delta (CI)."""
    by_config = {}
    for values in study.configurations():
        by_config[study.config_name(values)] = {"values": values, "label": label(study, values),
                                                "runs": {}}
    for row in rows:
        key = study.config_name({a: row[a] for a in study.axes})
        if row["status"] == "done" and row.get("top1") is not None:
            by_config[key]["runs"][row["seed"]] = row
    ref_key = study.config_name(study.reference) if study.reference else None
    ref = by_config[ref_key]["runs"] if ref_key else {}
    out = []
    for key, c in by_config.items():
        top1 = {s: r["top1"] for s, r in c["runs"].items()}
        mean, std = mean_std([top1[s] for s in sorted(top1)])
        first = next(iter(c["runs"].values()), {})
        out.append({**c, "key": key, "top1": top1, "mean": mean, "std": std, "n": len(top1),
                    "params": first.get("params"), "gmacs": first.get("gmacs"),
                    "reference": key == ref_key,
                    "delta": None if key == ref_key or not ref_key else paired_difference(
                        top1, {s: r["top1"] for s, r in ref.items()})})
    return out


def label(study: Study, values: dict) -> str:
    return ", ".join(f"{study.axis_label(a)}={override_text(a, v).split('=', 1)[1]}"
                     for a, v in values.items())


def _fmt(v, spec=".2f"):
    return "" if v is None else format(v, spec)


def format_table(study: Study, configs: list) -> str:
    """Markdown table, rows in grid order; the best mean top-1 in bold with a marker."""
    means = [c["mean"] for c in configs if c["mean"] is not None]
    best = max(means) if means else None
    lines = ["| configuration | top-1 (%) | seeds | params (M) | GMACs | vs reference (95% CI) |",
             "|---|---|---|---|---|---|"]
    for c in configs:
        top = "no finished run" if c["mean"] is None else (
            f"{c['mean']:.2f} +- {c['std']:.2f}" if c["std"] is not None else f"{c['mean']:.2f}")
        if best is not None and c["mean"] == best:
            top = f"**{top}** (best)"
        if c["reference"]:
            delta = "reference"
        elif c["delta"] is None:
            delta = "n/a" if c["mean"] is not None else ""
        elif c["delta"]["low"] is None:
            delta = f"{c['delta']['mean']:+.2f} (CI n/a, 1 seed)"
        else:
            d = c["delta"]
            delta = f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"
        params = _fmt(c["params"] / 1e6 if c["params"] is not None else None, ".3f")
        lines.append(f"| {c['label']} | {top} | {c['n']} | {params} | {_fmt(c['gmacs'], '.4f')} "
                     f"| {delta} |")
    return "\n".join(lines) + "\n"


def write_results(study: Study, rows: list, path: str) -> None:
    fields = ["name"] + study.axes + RESULT_FIELDS[1:]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                        for k, v in r.items() if k in fields})


def report(output: str, plots: bool = True) -> dict:
    """Write results.csv, table.md (and the plots); returns {"table", "configs", "rows"}."""
    study = load_sweep(output)
    rows = collect(study, output)
    configs = summarize(study, rows)
    write_results(study, rows, os.path.join(output, "results.csv"))
    table = format_table(study, configs)
    with open(os.path.join(output, "table.md"), "w") as fh:
        fh.write(f"Study `{study.name}`: top-1 mean +- std over seeds; last column: paired "
                 "difference to the reference, mean [95% CI] (t distribution).\n\n" + table)
    if plots:
        from .plots import write_plots
        write_plots(study, configs, output)
    return {"table": table, "configs": configs, "rows": rows}
