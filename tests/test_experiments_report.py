"""The report on summaries written by the test: means, sample standard deviations, paired
95% confidence intervals, paired t-tests and their Holm / Bonferroni adjustment against
values computed by hand, by the rule written out here and by scipy; selection on the
validation split; the conditions line."""
import csv
import json
import math
import os

import pytest
import yaml
from scipy import stats as scipy_stats

from vig_pyg.cli import main
from vig_pyg.experiments.report import report
from vig_pyg.experiments.stats import bonferroni_level, holm, paired_difference
from vig_pyg.train.config import build_config

from experiments_helpers import TINY

# top-1 per configuration and seed; k=5 finished only seed 0 (its others failed)
TOP1 = {3: {0: 80.0, 1: 84.0, 2: 86.0}, 4: {0: 81.0, 1: 87.0, 2: 90.0}, 5: {0: 70.0}}
T_975_2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
T_9875_2 = 6.205346816570706  # Student t, 98.75% quantile, 2 degrees of freedom (tables)


def _metrics(test, val, seed) -> str:
    """metrics.csv as training writes it: without a validation split the test split each
    eval epoch; with one, validation each eval epoch and test once, in the final row."""
    if val is None:
        return ("epoch,train_loss,test_top1,ema_test_top1\n"
                f"1,{2.0 + seed},,\n2,{1.0 + seed},{test - 5},{test}\n")
    return ("epoch,train_loss,val_top1,ema_val_top1,test_top1,ema_test_top1\n"
            f"1,{2.0 + seed},{val - 3},{val - 2},,\n"
            f"2,{1.0 + seed},{val - 1},{val},{test - 5},{test}\n")


def make_sweep(root, top1=TOP1, val=None, reference=None, marker=None, extra=None):
    """A sweep directory over ``model.k`` = the keys of ``top1`` (k -> seed -> top-1; a
    seed missing for a k failed). ``val``: k -> seed -> val_top1; ``marker``: fields added
    to study.yaml; ``extra(k, seed)``: keys added to the summary."""
    seeds = sorted({s for v in top1.values() for s in v})
    study = {"name": "fake", "base": "unused.yaml",
             "reference": {"model.k": 3} if reference is None else reference,
             "grid": {"model.k": list(top1)}, "seeds": seeds, "set": {}, "sweep": {},
             **(marker or {})}
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    status = {}
    for k, by_seed in top1.items():
        for seed in seeds:
            name = f"k-{k}__seed-{seed}"
            run = root / "runs" / name
            run.mkdir(parents=True)
            if seed not in by_seed:
                status[name] = {"state": "failed", "attempts": 2, "error": "RuntimeError: x"}
                continue
            status[name] = {"state": "done", "attempts": 1, "error": None}
            cfg = build_config(None, [f"model.k={k}", f"train.seed={seed}"], base=TINY).to_dict()
            v = (val or {}).get(k, {}).get(seed)
            (run / "summary.json").write_text(json.dumps({
                "top1": by_seed[seed], "top5": 99.0, "loss": 0.5, "params": 12345 + k,
                "num_classes": 10, "train_img_per_s": 100.0, "eval_img_per_s": 300.0,
                "wall_time_s": 10.0 + seed, "resumes": 0, "config": cfg,
                **({"val_top1": v} if v is not None else {}),
                **(extra(k, seed) if extra else {})}))
            (run / "resources.json").write_text(json.dumps({"peak_rss_mb": 500.0 + k}))
            (run / "metrics.csv").write_text(_metrics(by_seed[seed], v, seed))
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
    assert result["table"].count("(best)") == 1   # the header names the marker too
    # one comparison with >= 2 paired seeds (k=5 has one): Bonferroni at m=1 is the 95% CI
    assert "simultaneous CI (Bonferroni, m=1)" in table and "family of m=1 comparisons" in table
    assert rows["k=4"].count(f"[{8 / 3 - half:+.2f}, {8 / 3 + half:+.2f}]") == 2
    p = scipy_stats.ttest_rel([81.0, 87.0, 90.0], [80.0, 84.0, 86.0]).pvalue
    assert d["p_holm"] == pytest.approx(p) and f"| {p:.3f} | no |" in rows["k=4"]
    assert rows["k=5"].endswith("| n/a | n/a | n/a |")
    assert rows["k=3"].endswith("| reference |  |  |  |")
    assert "the study has no validation split" in table
    # a sweep directory whose marker and summaries predate the conditions fields
    assert ("Conditions: machine unknown; commit unknown; precision unknown; device unknown."
            in table.splitlines())

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


# ------------------------------------------------------------ paired t-test and adjustment

def holm_by_rule(p):
    """Holm step-down written out: sort ascending; adj_(i) = max_{j<=i} min(1, (m-j+1) p_(j))
    (j, i 1-based ranks); back in the input order."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [None] * m
    for i in range(1, m + 1):
        adj[order[i - 1]] = max(min(1.0, (m - j + 1) * p[order[j - 1]]) for j in range(1, i + 1))
    return adj


def test_paired_p_value_is_scipys_ttest_rel():
    import random

    rng = random.Random(0)
    for n in (2, 3, 5, 8):
        ref = {s: rng.uniform(80, 90) for s in range(n)}
        val = {s: ref[s] + rng.gauss(0.5, 1.0) for s in range(n)}
        val[99] = 50.0   # a seed the reference lacks is not paired
        d = paired_difference(val, ref)
        seeds = sorted(ref)
        expected = scipy_stats.ttest_rel([val[s] for s in seeds], [ref[s] for s in seeds])
        assert d["n"] == n and d["p"] == pytest.approx(expected.pvalue, rel=1e-9)
        low, high = scipy_stats.t.interval(0.95, n - 1, loc=d["mean"], scale=scipy_stats.sem(
            [val[s] - ref[s] for s in seeds]))
        assert (d["low"], d["high"]) == (pytest.approx(low), pytest.approx(high))
    assert paired_difference({0: 1.0}, {0: 0.5})["p"] is None
    assert paired_difference({0: 1.0}, {1: 0.5}) is None


def test_zero_variance_difference_has_p_0_or_1_and_a_point_interval():
    same = paired_difference({0: 82.0, 1: 86.0, 2: 88.0}, {0: 80.0, 1: 84.0, 2: 86.0})
    assert same == {"mean": 2.0, "low": 2.0, "high": 2.0, "p": 0.0, "n": 3}
    equal = paired_difference({0: 80.0, 1: 84.0}, {0: 80.0, 1: 84.0})
    assert equal == {"mean": 0.0, "low": 0.0, "high": 0.0, "p": 1.0, "n": 2}
    # 1.1 points both times, though the float differences are not bit-equal
    rounded = paired_difference({0: 95.2, 1: 96.3}, {0: 94.1, 1: 95.2})
    assert 95.2 - 94.1 != 96.3 - 95.2
    assert rounded["p"] == 0.0 and rounded["low"] == rounded["high"] == rounded["mean"]
    assert rounded["mean"] == pytest.approx(1.1)


def test_holm_against_the_written_rule_and_a_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]           # 2 * 0.5 and 2 * 0.6 capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []
    import random

    rng = random.Random(1)
    for m in (2, 3, 8, 20):
        p = [rng.choice([rng.random() * 0.1, rng.random(), 0.0]) for _ in range(m)]
        p[-1] = p[0]   # a tie
        adj = holm(p)
        assert adj == pytest.approx(holm_by_rule(p))
        # Holm rejects at least what Bonferroni rejects, never more than unadjusted tests
        assert all((a < 0.05) >= (q * m < 0.05) and (a < 0.05) <= (q < 0.05)
                   for a, q in zip(adj, p))


# reference k=3; k=4 diffs 1, 3, 4; k=5 diffs 2, 2, 2 (zero variance); k=6 diffs 0.5, -1,
# 0.5 (mean 0); k=7 has one seed: the family is k=4, 5, 6 (m=3)
FAMILY = {3: {0: 80.0, 1: 84.0, 2: 86.0}, 4: {0: 81.0, 1: 87.0, 2: 90.0},
          5: {0: 82.0, 1: 86.0, 2: 88.0}, 6: {0: 80.5, 1: 83.0, 2: 86.5}, 7: {0: 75.0}}


def _rows(table):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in table.splitlines() if line.startswith("| k=")}


def test_table_adjusts_for_the_family_holm_and_bonferroni(tmp_path):
    make_sweep(tmp_path, FAMILY)
    result = report(str(tmp_path), plots=False)
    assert result["m"] == 3
    ref = [FAMILY[3][s] for s in range(3)]
    raw = {k: scipy_stats.ttest_rel([FAMILY[k][s] for s in range(3)], ref).pvalue
           for k in (4, 6)}
    raw[5] = 0.0   # zero variance, mean 2
    assert raw[6] == pytest.approx(1.0)   # mean difference 0: t = 0
    expected = dict(zip((4, 5, 6), holm_by_rule([raw[4], raw[5], raw[6]])))
    # by hand: sorted 0, p4, 1 -> 0, 2 * p4, max(2 * p4, 1)
    assert expected == {4: pytest.approx(2 * raw[4]), 5: 0.0, 6: 1.0}
    configs = {c["values"]["model.k"]: c for c in result["configs"]}
    for k in (4, 5, 6):
        assert configs[k]["delta"]["p_holm"] == pytest.approx(expected[k])
    rows = _rows((tmp_path / "table.md").read_text())
    head = [c.strip() for c in result["table"].splitlines()[0].split("|")[1:-1]]
    assert head[-4:] == ["vs reference, mean [95% CI]", "simultaneous CI (Bonferroni, m=3)",
                         "p (Holm)", "differs?"]
    # simultaneous level 1 - 0.05/3 for each of the three rows
    assert bonferroni_level(3) == pytest.approx(1 - 0.05 / 3)
    sd4 = math.sqrt(7 / 3)
    low, high = scipy_stats.t.interval(1 - 0.05 / 3, 2, loc=8 / 3, scale=sd4 / math.sqrt(3))
    assert rows["k=4"][-3:] == [f"[{low:+.2f}, {high:+.2f}]", f"{2 * raw[4]:.3f}", "no"]
    assert rows["k=5"][-4:] == ["+2.00 [+2.00, +2.00]", "[+2.00, +2.00]", "0", "yes"]
    assert rows["k=6"][-2:] == ["1.000", "no"]
    assert rows["k=7"][-4:] == ["-5.00 (CI n/a, 1 seed)", "n/a", "n/a", "n/a"]
    assert rows["k=3"][-4:] == ["reference", "", "", ""]
    assert "Holm-Bonferroni" in result["header"] and "m=3" in result["header"]
    assert "Bonferroni simultaneous intervals (each at 98.33%)" in result["header"]


def test_two_comparisons_use_the_9875_quantile(tmp_path):
    make_sweep(tmp_path, {k: FAMILY[k] for k in (3, 4, 6)})
    configs = {c["values"]["model.k"]: c for c in report(str(tmp_path), plots=False)["configs"]}
    half = T_9875_2 * math.sqrt(7 / 3) / math.sqrt(3)
    d = configs[4]["delta"]
    assert (d["sim_low"], d["sim_high"]) == (pytest.approx(8 / 3 - half),
                                             pytest.approx(8 / 3 + half))


def test_no_reference_no_comparison_columns(tmp_path):
    make_sweep(tmp_path, {k: FAMILY[k] for k in (3, 4)}, reference={})
    result = report(str(tmp_path), plots=False)
    assert "vs reference" not in result["table"] and "p (Holm)" not in result["table"]
    assert "No reference row: no paired differences." in result["header"]


# ------------------------------------------------------------------ validation selection

# test favours k=4, validation favours k=3: the marker must follow validation
VAL = {3: {0: 90.0, 1: 92.0, 2: 94.0}, 4: {0: 88.0, 1: 89.0, 2: 90.0}}


def test_selection_on_validation(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, path, *a, **kw):
        saved.append((os.path.basename(str(path)), fig))
        return original(fig, path, *a, **kw)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    top1 = {3: TOP1[3], 4: TOP1[4]}
    make_sweep(tmp_path, top1, val=VAL)
    result = report(str(tmp_path))
    assert result["selection"] == "val"
    table = (tmp_path / "table.md").read_text()
    assert "selected on validation; test reported once" in table
    rows = _rows(table)
    assert rows["k=3"][1] == "**92.00 +- 2.00** (best)" and rows["k=4"][1] == "89.00 +- 1.00"
    assert rows["k=4"][2] == "86.00 +- 4.58"   # the best test mean, unmarked
    assert result["table"].count("(best)") == 1
    head = [c.strip() for c in result["table"].splitlines()[0].split("|")[1:-1]]
    assert head[:3] == ["configuration", "val top-1 (%)", "test top-1 (%)"]
    with open(tmp_path / "results.csv") as fh:
        csv_rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert float(csv_rows["k-3__seed-1"]["val_top1"]) == 92.0
    assert float(csv_rows["k-4__seed-2"]["top1"]) == 90.0
    # the curves draw validation (EMA, as the summary's): per epoch, the mean over seeds
    fig = dict(saved)["curves.png"]
    top = fig.axes[0]
    assert top.get_ylabel() == "validation top-1 (%)"
    for line, k in zip(top.lines, (3, 4)):
        vals = list(VAL[k].values())
        assert list(line.get_xdata()) == [1, 2]
        assert list(line.get_ydata()) == pytest.approx([sum(vals) / 3 - 2, sum(vals) / 3])


def test_without_validation_everywhere_the_marker_stays_on_test(tmp_path):
    top1 = {3: TOP1[3], 4: TOP1[4]}
    make_sweep(tmp_path, top1, val={3: VAL[3]})   # k=4's runs have no validation split
    result = report(str(tmp_path), plots=False)
    assert result["selection"] == "test" and "val top-1" not in result["table"]
    assert "only 3 of 6 finished runs have a validation split" in result["header"]
    assert "**86.00 +- 4.58** (best)" in _rows(result["table"])["k=4"]


# ------------------------------------------------------------------ conditions

MACHINE = {"arch": "x86_64", "cpu": "Fake CPU 9000", "cores": 2, "torch": "2.14.1"}


def test_conditions_line_from_marker_and_summaries(tmp_path):
    make_sweep(tmp_path, {k: FAMILY[k] for k in (3, 4)},
               marker={"machine": MACHINE, "commit": "abc1234+dirty", "executor": "local"},
               extra=lambda k, seed: {"precision": "bf16", "device": "cpu"})
    report(str(tmp_path), plots=False)
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert ("Conditions: machine x86_64, Fake CPU 9000, 2 cores, torch 2.14.1; commit "
            "abc1234+dirty; precision bf16; device cpu.") in lines


def test_conditions_line_lists_disagreeing_precisions(tmp_path):
    make_sweep(tmp_path, FAMILY, marker={"machine": MACHINE, "commit": None},
               extra=lambda k, seed: {"precision": "fp32" if k == 7 else "bf16",
                                      "device": "cpu"})
    header = report(str(tmp_path), plots=False)["header"]
    assert ("commit unknown; precision differs between runs: bf16 (12 runs), fp32 (1 run); "
            "device cpu.") in header
