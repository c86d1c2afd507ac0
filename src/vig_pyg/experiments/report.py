"""``vig-pyg report DIR``: the tables and plots of a sweep directory.

- ``results.csv``: one row per run (grid values, seed, status, validation and test top-1,
  top-5/loss, params, GMACs, train and inference images/s, peak memory, wall time, resumes,
  device, precision, error);
- ``table.md``: one row per configuration (:mod:`.table`): top-1 mean +- std over seeds,
  params, GMACs, the paired difference to the reference with its unadjusted 95% interval,
  the Bonferroni simultaneous interval and the Holm-adjusted p-value (:mod:`.stats`), under
  a header naming the selection split, the adjustment and the conditions
  (:mod:`.conditions`);
- ``top1_vs_gmacs.png``, ``top1_by_<axis>.png``, ``curves.png`` (top-1 of the selection
  split and training loss per epoch, mean line and min-max band over seeds).

The selection split is validation when every finished run has ``val_top1`` (the test split
is then evaluated once, at the end, and the report never selects on it), else test.

GMACs per image are counted once per model configuration with ``FlopCounterMode``
(:func:`vig_pyg.models.info.count_macs`) and cached in ``macs.json``.
"""
from __future__ import annotations

import csv
import json
import os

import yaml

from .conditions import conditions_line
from .stats import adjust, mean_std, paired_difference
from .study import Study, StudyError, override_text
from .sweep import MARKER, read_status
from .table import format_table, header

RESULT_FIELDS = ["name", "seed", "status", "val_top1", "top1", "top5", "loss", "params",
                 "gmacs", "train_img_per_s", "eval_img_per_s", "peak_rss_mb", "peak_cuda_mb",
                 "wall_time_s", "resumes", "device", "precision", "error"]
SUMMARY_KEYS = ("val_top1", "top1", "top5", "loss", "params", "train_img_per_s",
                "eval_img_per_s", "wall_time_s", "resumes", "device", "precision")


def read_marker(output: str) -> dict:
    marker = os.path.join(output, MARKER)
    if not os.path.exists(marker):
        raise StudyError(f"'{output}' is not a sweep directory (no {MARKER}): give the "
                         "--output of a vig-pyg sweep")
    with open(marker) as fh:
        return yaml.safe_load(fh)


def load_sweep(output: str) -> Study:
    d = read_marker(output)
    return Study(name=d["name"], path=os.path.join(output, MARKER), base=d["base"],
                 grid=d["grid"], seeds=d["seeds"], reference=d.get("reference") or {},
                 common=d.get("set") or {}, sweep=d.get("sweep") or {},
                 include=d.get("include") or [])


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
            row.update({k: summary.get(k) for k in SUMMARY_KEYS})
            row["gmacs"] = model_macs(summary, cache)
            row.update(_read_json(os.path.join(run_dir, "resources.json")) or {})
            row["curves"] = read_curves(os.path.join(run_dir, "metrics.csv"))
        rows.append(row)
    with open(cache_path, "w") as fh:
        json.dump(cache, fh, indent=1)
    return rows


def _number(text):
    return float(text) if text else None


def read_curves(path: str) -> dict:
    """{epoch: {"val", "test", "loss"}} from metrics.csv: validation and test top-1 (EMA
    where evaluated, like the summary's) and the training loss, None where not recorded."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for r in csv.DictReader(fh):
            top1 = {split: _number(r.get(f"ema_{split}_top1") or r.get(f"{split}_top1"))
                    for split in ("val", "test")}
            out[int(r["epoch"])] = {**top1, "loss": _number(r.get("train_loss"))}
    return out


def selection(rows: list) -> tuple:
    """("val" when every finished run has a validation top-1, else "test"; finished runs
    with one; finished runs)."""
    done = [r for r in rows if r["status"] == "done" and r.get("top1") is not None]
    with_val = sum(r.get("val_top1") is not None for r in done)
    return ("val" if done and with_val == len(done) else "test"), with_val, len(done)


def summarize(study: Study, rows: list) -> tuple:
    """(one dict per configuration: values, top1 and val_top1 mean/std, n, params, gmacs,
    delta (:func:`.stats.paired_difference` plus the adjustment); the family size m)."""
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
    ref_top1 = {s: r["top1"] for s, r in ref.items()}
    out = []
    for key, c in by_config.items():
        top1 = {s: r["top1"] for s, r in c["runs"].items()}
        mean, std = mean_std([top1[s] for s in sorted(top1)])
        val_mean, val_std = mean_std([r["val_top1"] for _, r in sorted(c["runs"].items())
                                      if r.get("val_top1") is not None])
        first = next(iter(c["runs"].values()), {})
        out.append({**c, "key": key, "top1": top1, "mean": mean, "std": std, "n": len(top1),
                    "val_mean": val_mean, "val_std": val_std,
                    "params": first.get("params"), "gmacs": first.get("gmacs"),
                    "reference": key == ref_key,
                    "delta": None if key == ref_key or not ref_key else paired_difference(
                        top1, ref_top1)})
    m = adjust({c["key"]: c["delta"] for c in out}, {c["key"]: c["top1"] for c in out},
               ref_top1)
    return out, m


def label(study: Study, values: dict) -> str:
    return ", ".join(f"{study.axis_label(a)}={override_text(a, v).split('=', 1)[1]}"
                     for a, v in values.items())


def write_results(study: Study, rows: list, path: str) -> None:
    fields = ["name"] + study.axes + RESULT_FIELDS[1:]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                        for k, v in r.items() if k in fields})


def report(output: str, plots: bool = True) -> dict:
    """Write results.csv, table.md (and the plots); returns {"table", "header", "configs",
    "rows", "m" (the comparison family size), "selection" ("val" or "test")}."""
    study = load_sweep(output)
    rows = collect(study, output)
    configs, m = summarize(study, rows)
    split, with_val, done = selection(rows)
    write_results(study, rows, os.path.join(output, "results.csv"))
    table = format_table(study, configs, split, m)
    top = header(study, split, m, with_val, done, conditions_line(read_marker(output), rows))
    with open(os.path.join(output, "table.md"), "w") as fh:
        fh.write(top + "\n" + table)
    if plots:
        from .plots import write_plots
        write_plots(study, configs, output, split)
    return {"table": table, "header": top, "configs": configs, "rows": rows, "m": m,
            "selection": split}
