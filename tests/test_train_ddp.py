"""Two CPU processes (gloo) under torchrun train a few DDP steps and end with identical weights."""
import json
import os
import subprocess
import sys
import textwrap

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = textwrap.dedent("""
    import os, sys, torch
    from vig_pyg.train.config import build_config
    from vig_pyg.train.training import fit_run

    out = sys.argv[1]
    cfg = build_config(None, [
        "model.channels=32", "model.depth=2", "model.stem_stride=8", "model.k=4",
        "data.batch_size=16", "train.epochs=1", "train.max_steps=5", "train.seed=3",
        "log.progress=false", "log.tensorboard=false", "aug.mixup=0.8", "aug.cutmix=1.0",
        "model.drop_path_rate=0.1", "train.device=cpu"])
    summary, run = fit_run(cfg, output=os.path.join(out, "run"))
    rank = int(os.environ["RANK"])
    torch.save({k: v.detach().clone() for k, v in run.model.state_dict().items()},
               os.path.join(out, f"rank{rank}.pt"))
""")


def test_ddp_two_cpu_processes_hold_identical_weights(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(script), str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for key in w0:  # parameters by DDP's all-reduce, BN statistics by the final broadcast
        assert torch.equal(w0[key], w1[key]), key
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ddp_max_param_diff"] == 0.0
    assert summary["global_step"] == 5
    assert summary["config"]["data"]["batch_size"] == 16
    # rank 0 alone logs and checkpoints; the test split was evaluated once, not per rank
    assert sorted(os.listdir(run)) == ["checkpoints", "config.yaml", "metrics.csv", "model.pt",
                                       "summary.json"]
    assert os.listdir(run / "checkpoints") == ["last.pt"]
    assert proc.stdout.count("training vig_ti") == 1
    # ranks trained on different halves of the data: the gradient was averaged, not just one
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
