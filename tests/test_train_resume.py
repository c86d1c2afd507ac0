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
# mid-epoch 1, 49 mid-epoch 2). On the CPU even where a GPU is visible: the exact-resume
# check is made where CI makes it.
ARGS = ["train", "--set", "model.channels=32", "model.depth=2", "model.stem_stride=8",
        "model.k=4", "model.drop_path_rate=0.1", "data.batch_size=32", "train.epochs=3",
        "train.max_steps=56", "train.ckpt_every_steps=7", "train.deterministic=true",
        "train.seed=5", "data.num_workers=0", "log.progress=false", "log.tensorboard=true",
        "aug.mixup=0.8", "aug.cutmix=1.0", "aug.re_prob=0.25", "ema.decay=0.99",
        "optim.clip_grad=1.0", "data.eval_batch_size=90", "train.device=cpu"]


KILLS = {
    "checkpoint@2": "mid-epoch, right after the step-14 checkpoint",
    "epoch_row@1": "epoch 1's row written, its checkpoint not",
    "eval@6": "inside epoch 1's evaluation of the EMA weights",
    "summary@1": "model.pt written, summary.json not",
}


def _start(*extra, crash=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("VIG_PYG_CRASH_AT", None)
    if crash:
        env["VIG_PYG_CRASH_AT"] = crash
    return subprocess.Popen([sys.executable, "-m", "vig_pyg.train", *ARGS, *extra], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted reference and, for every kill point, a run killed there and then
    resumed. The processes run side by side (one thread each) to keep the test short."""
    root = tmp_path_factory.mktemp("resume")
    procs = {"reference": _start("--output", str(root / "reference"))}
    procs.update({c: _start("--output", str(root / c), crash=c) for c in KILLS})
    first = {name: _finish(p) for name, p in procs.items()}
    assert first["reference"][0] == 0, first["reference"][2][-2000:]
    for crash, where in KILLS.items():
        assert first[crash][0] == -9, f"not killed {where}: {first[crash][2][-1000:]}"
    resumed = {c: _start("--resume", str(root / c)) for c in KILLS}
    return root, {c: _finish(p) for c, p in resumed.items()}


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in csv.DictReader(fh)]


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), purge_orphaned_data=False).Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("crash", list(KILLS))
def test_sigkill_then_resume_matches_uninterrupted(runs, crash):
    root, resumed = runs
    reference, run = root / "reference", root / crash
    code, out, err = resumed[crash]
    assert code == 0, err[-2000:]
    assert "resumed from" in out

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


def test_resume_of_a_finished_run_is_refused(runs):
    root, _ = runs
    code, _, err = _finish(_start("--resume", str(root / "reference")))
    assert code == 2
    assert "already finished train.max_steps=56" in err
