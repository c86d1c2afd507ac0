"""The report on summaries written by the test: means, sample standard deviations and
paired 95% confidence intervals against values computed by hand."""
import csv
import json
import math
import os

import pytest
import yaml

from vig_pyg.cli import main
from vig_pyg.experiments.report import report
from vig_pyg.train.config import build_config

from experiments_helpers import TINY

# top-1 per configuration and seed; k=5 finished only seed 0 (its others failed)
TOP1 = {3: {0: 80.0, 1: 84.0, 2: 86.0}, 4: {0: 81.0, 1: 87.0, 2: 90.0}, 5: {0: 70.0}}
T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


def make_sweep(root):
    study = {"name": "fake", "base": "unused.yaml", "reference": {"model.k": 3},
             "grid": {"model.k": [3, 4, 5]}, "seeds": [0, 1, 2], "set": {}, "sweep": {}}
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    status = {}
    for k, seeds in TOP1.items():
        for seed in (0, 1, 2):
            name = f"k-{k}__seed-{seed}"
            run = root / "runs" / name
            run.mkdir(parents=True)
            if seed not in seeds:
                status[name] = {"state": "failed", "attempts": 2, "error": "RuntimeError: x"}
                continue
            status[name] = {"state": "done", "attempts": 1, "error": None}
            cfg = build_config(None, [f"model.k={k}", f"train.seed={seed}"], base=TINY).to_dict()
            (run / "summary.json").write_text(json.dumps({
                "top1": seeds[seed], "top5": 99.0, "loss": 0.5, "params": 12345 + k,
                "num_classes": 10, "train_img_per_s": 100.0, "eval_img_per_s": 300.0,
                "wall_time_s": 10.0 + seed, "resumes": 0, "config": cfg}))
            (run / "resources.json").write_text(json.dumps({"peak_rss_mb": 500.0 + k}))
            (run / "metrics.csv").write_text(
                "epoch,train_loss,test_top1,ema_test_top1\n"
                f"1,{2.0 + seed},,\n2,{1.0 + seed},{seeds[seed] - 5},{seeds[seed]}\n")
    (root / "status.json").write_text(json.dumps(status))


def by_hand(values):
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def test_means_std_and_paired_ci_by_hand(tmp_path):
    make_sweep(tmp_path)
    result = report(str(tmp_path))
    configs = {c["values"]["model.k"]: c for c in result["configs"]}
    for k in (3, 4):
        mean, std = by_hand(list(TOP1[k].values()))
        assert configs[k]["mean"] == pytest.approx(mean) and configs[k]["std"] == pytest.approx(std)
        assert configs[k]["n"] == 3
    assert configs[3]["mean"] == pytest.approx(250 / 3)
    assert configs[3]["std"] == pytest.approx(math.sqrt(28 / 3))   # deviations -10/3, 2/3, 8/3
    assert configs[4]["std"] == pytest.approx(math.sqrt(21))   # deviations -5, 1, 4
    # paired differences 1, 3, 4: mean 8/3, sd sqrt(7/3), half-width t * sd / sqrt(3)
    d = configs[4]["delta"]
    half = T_975_2 * math.sqrt(7 / 3) / math.sqrt(3)
    assert d["mean"] == pytest.approx(8 / 3)
    assert (d["low"], d["high"]) == (pytest.approx(8 / 3 - half), pytest.approx(8 / 3 + half))
    assert configs[3]["delta"] is None and configs[3]["reference"]
    assert configs[5]["n"] == 1 and configs[5]["std"] is None
    assert configs[5]["delta"]["low"] is None and configs[5]["delta"]["mean"] == -10.0

    table = (tmp_path / "table.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if "| k=" in line}
    assert "reference" in rows["k=3"] and "83.33 +- 3.06" in rows["k=3"]
    assert "**86.00 +- 4.58** (best)" in rows["k=4"]
    assert f"+2.67 [{8 / 3 - half:+.2f}, {8 / 3 + half:+.2f}]" in rows["k=4"]
    assert "-10.00 (CI n/a, 1 seed)" in rows["k=5"] and "| 1 |" in rows["k=5"]
    assert table.count("(best)") == 1

    with open(tmp_path / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows][:3] == ["k-3__seed-0", "k-3__seed-1", "k-3__seed-2"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 and failed[0]["error"] == "RuntimeError: x" and failed[0]["top1"] == ""
    done = rows[0]
    assert done["model.k"] == "3" and float(done["peak_rss_mb"]) == 503.0
    assert float(done["params"]) == 12348 and float(done["gmacs"]) > 0
    for png in ("top1_vs_gmacs.png", "curves.png", "top1_by_k.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_gmacs_counted_once_per_model_and_cached(tmp_path):
    from vig_pyg.models.info import model_card

    make_sweep(tmp_path)
    report(str(tmp_path), plots=False)
    card = model_card("vig_ti", conv="mr", img_size=32, num_classes=10, k=4, channels=16,
                      depth=1, stem_stride=4)
    with open(tmp_path / "results.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["name"] == "k-4__seed-1")
    assert float(row["gmacs"]) == pytest.approx(card["macs"] / 1e9)
    cache = json.loads((tmp_path / "macs.json").read_text())
    assert len(cache) == 3  # k = 3, 4, 5: three models, nine runs
    # the cache is what the next report reads: change it and the row follows
    cache = {key: 1.5 for key in cache}
    (tmp_path / "macs.json").write_text(json.dumps(cache))
    report(str(tmp_path), plots=False)
    with open(tmp_path / "results.csv") as fh:
        assert {float(r["gmacs"]) for r in csv.DictReader(fh) if r["gmacs"]} == {1.5}


def test_report_cli_and_not_a_sweep(tmp_path, capsys):
    make_sweep(tmp_path)
    assert main(["report", str(tmp_path), "--no-plots"]) == 0
    assert "| k=4 |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vig-pyg report: error: ") and "not a sweep directory" in err
