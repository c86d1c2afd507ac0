"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted one: the same
weights (bit for bit), the same metrics.csv (every column but the timing ones), TensorBoard
scalars with one value per step, and the same summary.json (but times, places and the
resume count). CPU, deterministic mode, num_workers=0.

The kills land at named points (``vig_pyg.train.crash``): mid-epoch right after a
checkpoint, right after an epoch's row (before its checkpoint), inside an evaluation, and
between the final weights and the summary.
"""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from vig_pyg.train.records import SUMMARY_VOLATILE, TIMING_FIELDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 44 steps per epoch (1437 images, batch 32); stop after 56 steps, so the resumed run crosses
# an epoch boundary and ends inside epoch 2; a checkpoint every 7 steps (7 ... 42 are
# mid-epoch 1, 49 mid-epoch 2).
ARGS = ["train", "--set", "model.channels=32", "model.depth=2", "model.stem_stride=8",
        "model.k=4", "model.drop_path_rate=0.1", "data.batch_size=32", "train.epochs=3",
        "train.max_steps=56", "train.ckpt_every_steps=7", "train.deterministic=true",
        "train.seed=5", "data.num_workers=0", "log.progress=false", "log.tensorboard=true",
        "aug.mixup=0.8", "aug.cutmix=1.0", "aug.re_prob=0.25", "ema.decay=0.99",
        "optim.clip_grad=1.0", "data.eval_batch_size=90"]


def _run(*extra, crash=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("VIG_PYG_CRASH_AT", None)
    if crash:
        env["VIG_PYG_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "vig_pyg.train", *ARGS, *extra], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = _run("--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in csv.DictReader(fh)]


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), purge_orphaned_data=False).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("crash, where", [
    ("checkpoint@2", "mid-epoch, right after the step-14 checkpoint"),
    ("epoch_row@1", "epoch 1's row written, its checkpoint not"),
    ("eval@6", "inside epoch 1's evaluation of the EMA weights"),
    ("summary@1", "model.pt written, summary.json not"),
])
def test_sigkill_then_resume_matches_uninterrupted(reference, tmp_path, crash, where):
    run = tmp_path / "killed"
    victim = _run("--output", str(run), crash=crash)
    assert victim.returncode == -9, f"not killed {where}: {victim.stderr[-1000:]}"
    resumed = _run("--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout

    a = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert a["run"]["global_step"] == b["run"]["global_step"] == 56
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]))
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

    # the records: every epoch once, the same numbers as the uninterrupted run
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"]
    assert _rows(run) == _rows(reference)
    got, want = _scalars(run), _scalars(reference)
    assert got == want
    for tag, points in got.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{tag} has a step twice"
    sa = json.loads((reference / "summary.json").read_text())
    sb = json.loads((run / "summary.json").read_text())
    assert (sa["resumes"], sb["resumes"]) == (0, 1)
    same = lambda s: {k: v for k, v in s.items() if k not in SUMMARY_VOLATILE}  # noqa: E731
    assert same(sa) == same(sb)


def test_resume_of_a_finished_run_is_refused(reference, tmp_path):
    proc = _run("--resume", str(reference))
    assert proc.returncode == 2
    assert "already finished train.max_steps=56" in proc.stderr
