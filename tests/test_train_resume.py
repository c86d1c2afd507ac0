"""A run killed with SIGKILL mid-epoch and resumed ends with the same weights as an
uninterrupted run (CPU, deterministic mode, num_workers=0)."""
import os
import signal
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 44 steps per epoch (1437 images, batch 32); stop after 56 steps, so the resumed run crosses
# an epoch boundary; a checkpoint every 7 steps (7, 14, ... are mid-epoch).
ARGS = ["train", "--set", "model.overrides={channels: 32, depth: 2, stem_stride: 8}",
        "model.k=4", "model.drop_path=0.1", "data.batch_size=32", "train.epochs=3",
        "train.max_steps=56", "train.ckpt_every_steps=7", "train.deterministic=true",
        "train.seed=5", "data.num_workers=0", "log.progress=false", "log.tensorboard=false",
        "aug.mixup=0.8", "aug.cutmix=1.0", "aug.re_prob=0.25", "ema.decay=0.99", "optim.clip_grad=1.0"]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # the two runs share the machine's cores
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _cmd(*extra):
    return [sys.executable, "-m", "vig_pyg.train", *ARGS, *extra]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "killed"
    ref = subprocess.Popen(_cmd("--output", str(ref_dir)), cwd=REPO, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(_cmd("--output", str(run_dir)), cwd=REPO, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists():
        assert victim.poll() is None, "the run ended before writing a checkpoint"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL

    state = torch.load(ckpt, weights_only=True)  # the atomic write left a complete file
    assert 0 < state["step_in_epoch"] < 44, "the checkpoint is not mid-epoch"
    assert state["global_step"] < 56

    resumed = subprocess.run(_cmd("--resume", str(run_dir)), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    assert ref.wait(timeout=180) == 0, ref.stderr.read()[-2000:]

    a = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["global_step"] == b["global_step"] == 56
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]))
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    # the metrics log was rewritten, not duplicated
    rows = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
