"""Sweeps end to end on tiny runs: killed and restarted, a failing run, submitit's local
executor. Each run is an ordinary run directory; summary.json marks it finished.

Slow: every run is its own Python process (torch, PyG and timm imported each time).
"""
import json
import os
import signal
import subprocess
import time

import pytest

from experiments_helpers import env, run_sweep, sweep_cmd, write_study

BOOM = '''
from vig_pyg.conv import register_conv
from vig_pyg.conv.max_relative import MRConv

@register_conv("boom")
class Boom(MRConv):
    def forward(self, *args, **kwargs):
        raise RuntimeError("boom: this layer always fails")
'''


def summary(out, name):
    with open(os.path.join(out, "runs", name, "summary.json")) as fh:
        return json.load(fh)


def status(out):
    with open(os.path.join(out, "status.json")) as fh:
        return json.load(fh)


@pytest.mark.slow
def test_killed_sweep_restarts_finished_untouched_interrupted_resumed(tmp_path):
    path = write_study(tmp_path, {"model.k": [3, 4]}, extra_set={"train.epochs": 3})
    out = str(tmp_path / "out")
    first, second = "k-3__seed-0", "k-4__seed-0"
    proc = subprocess.Popen(sweep_cmd(path, "--output", out), env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(out, "runs", second, "checkpoints", "last.pt")
    deadline = time.time() + 300
    while not os.path.exists(ckpt) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its run, with no cleanup
    proc.wait()
    assert os.path.exists(ckpt), "the second run never wrote its first checkpoint"
    assert os.path.exists(os.path.join(out, "runs", first, "summary.json"))
    assert not os.path.exists(os.path.join(out, "runs", second, "summary.json"))
    done_mtime = os.path.getmtime(os.path.join(out, "runs", first, "summary.json"))
    weights_mtime = os.path.getmtime(os.path.join(out, "runs", first, "model.pt"))

    result = run_sweep(path, "--output", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.getmtime(os.path.join(out, "runs", first, "summary.json")) == done_mtime
    assert os.path.getmtime(os.path.join(out, "runs", first, "model.pt")) == weights_mtime
    assert summary(out, first)["resumes"] == 0
    resumed = summary(out, second)
    assert resumed["resumes"] == 1 and resumed["epochs"] == 3
    with open(os.path.join(out, "runs", second, "metrics.csv")) as fh:
        assert [line.split(",")[0] for line in fh.read().split()[1:]] == ["1", "2", "3"]
    st = status(out)
    assert st[first]["state"] == st[second]["state"] == "done"
    assert st[second]["action"] == "resumed" and st[second]["attempts"] == 1
    # the report ran at the end
    assert os.path.exists(os.path.join(out, "table.md"))
    # a third invocation has nothing to do
    again = run_sweep(path, "--output", out, "--dry-run")
    assert again.stdout.count("  done ") == 2


@pytest.mark.slow
def test_failing_run_is_retried_once_then_recorded_and_others_finish(tmp_path):
    (tmp_path / "boom.py").write_text(BOOM)
    path = write_study(tmp_path, {"model.conv": ["boom", "mr"]},
                       extra_set={"model.imports": [str(tmp_path / "boom.py")]})
    out = str(tmp_path / "out")
    result = run_sweep(path, "--output", out, "--jobs", "2")
    assert result.returncode == 1
    st = status(out)
    assert st["conv-boom__seed-0"]["state"] == "failed"
    assert st["conv-boom__seed-0"]["attempts"] == 2
    assert "boom: this layer always fails" in st["conv-boom__seed-0"]["error"]
    assert st["conv-mr__seed-0"] == {"state": "done", "attempts": 1, "error": None,
                                     "action": "trained"}
    assert summary(out, "conv-mr__seed-0")["top1"] is not None
    # --jobs 2 on this machine's cores: each run got cores // 2 threads
    cores = len(os.sched_getaffinity(0))
    cfg = summary(out, "conv-mr__seed-0")["config"]
    assert cfg["train"]["threads"] == str(max(1, cores // 2))
    assert "failed conv-boom__seed-0: " in result.stdout and "boom: this" in result.stdout
    with open(os.path.join(out, "results.csv")) as fh:
        rows = fh.read().splitlines()
    assert any(r.startswith("conv-boom__seed-0,") and ",failed," in r for r in rows)


@pytest.mark.slow
def test_submitit_local_executor_two_runs(tmp_path):
    pytest.importorskip("submitit")
    path = write_study(tmp_path, {"model.k": [3, 4]})
    out = str(tmp_path / "out")
    result = run_sweep(path, "--output", out, "--executor", "submitit-local")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("k-3__seed-0", "k-4__seed-0"):
        s = summary(out, name)
        assert s["config"]["model"]["k"] == int(name[2])
        with open(os.path.join(out, "runs", name, "resources.json")) as fh:
            assert json.load(fh)["peak_rss_mb"] > 50   # torch alone is larger than this
    assert os.path.isdir(os.path.join(out, "submitit"))
    assert all(v["state"] == "done" for v in status(out).values())
