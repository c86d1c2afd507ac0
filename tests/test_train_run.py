"""A tiny end-to-end train + eval run, and the one-line errors for bad input."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cli_helpers import run_cli
from vig_pyg.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A ViG small enough for a test: 2 blocks of 32 channels on a 4x4 node grid (32 px, stride 8).
# train.device=cpu: the suite checks the trainer's logic the same way on every machine; CUDA
# training has its own tests (test_cuda.py), and a visible GPU would otherwise be picked.
TINY = ["model.channels=32", "model.depth=2", "model.stem_stride=8", "model.k=4",
        "data.batch_size=32", "log.progress=false", "train.epochs=2", "train.max_steps=6",
        "sched.warmup_epochs=0", "aug.mixup=0.8", "aug.cutmix=1.0", "train.device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests below (about 10 s)."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = main(["train", "--set", *TINY, "train.ckpt_every_steps=4", "--output", str(out)])
    assert code == 0
    return out


def test_run_outputs(trained):
    files = set(os.listdir(trained))
    assert {"config.yaml", "metrics.csv", "summary.json", "checkpoints", "tb", "model.pt"} <= files
    assert os.listdir(trained / "tb")
    summary = json.loads((trained / "summary.json").read_text())
    for key in ("top1", "top5", "loss", "train_img_per_s", "eval_img_per_s", "wall_time_s",
                "train_time_s", "config"):
        assert summary[key] is not None, key
    assert summary["global_step"] == 6 and summary["weights"] == "ema"
    assert 0 <= summary["top1"] <= summary["top5"] <= 100
    rows = (trained / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,global_step,lr,train_loss") and len(rows) == 2
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    assert state["run"]["global_step"] == 6 and state["ema"] is not None
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    assert not [f for f in os.listdir(trained / "checkpoints") if f.startswith(".tmp")]


def test_eval_training_checkpoint(trained, capsys, tmp_path):
    js = tmp_path / "eval.json"
    code, out, err = run_cli(["eval", "--checkpoint", str(trained / "checkpoints" / "last.pt"),
                              "--json", str(js), "--no-progress"], capsys)
    assert code == 0, err
    assert "top-1" in out and "top-5" in out and "img/s" in out
    res = json.loads(js.read_text())
    summary = json.loads((trained / "summary.json").read_text())
    assert res["weights"] == "ema" and res["images"] == 360
    assert res["top1"] == pytest.approx(summary["top1"])
    assert res["loss"] == pytest.approx(summary["loss"], rel=1e-4)


def test_eval_model_file_through_create_model(trained, capsys, tmp_path):
    """RUN/model.pt is a model-only file that create_model(checkpoint=...) loads (the same
    path official release weights take)."""
    js = tmp_path / "eval.json"
    code, out, err = run_cli(["eval", "--checkpoint", str(trained / "model.pt"), "--json", str(js),
                              "--no-progress", "--set", *TINY[:4], "train.device=cpu"], capsys)
    assert code == 0, err
    summary = json.loads((trained / "summary.json").read_text())
    assert json.loads(js.read_text())["top1"] == pytest.approx(summary["top1"])


def _one_error_line(code, out, err, *fragments):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if "warn" not in l.lower()]
    assert len(lines) == 1, err
    assert lines[0].startswith("vig-pyg ")
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in err


def test_error_missing_dataset_root(capsys, tmp_path):
    out_dir = tmp_path / "run"
    res = run_cli(["train", "--set", *TINY, "data.dataset=cifar10",
                   f"data.root={tmp_path / 'no-such-dir'}", "--output", str(out_dir)], capsys)
    _one_error_line(*res, "does not exist", "data.root", "data.download=true")
    assert not out_dir.exists()


def test_error_unknown_model_and_conv(capsys, tmp_path):
    out_dir = tmp_path / "run"
    res = run_cli(["train", "--set", *TINY, "model.name=vig_xl", "--output", str(out_dir)], capsys)
    _one_error_line(*res, "unknown model 'vig_xl'", "vig_ti", "pvig_b")
    res = run_cli(["train", "--set", *TINY, "model.conv=gat", "--output", str(out_dir)], capsys)
    _one_error_line(*res, "unknown graph convolution 'gat'", "mr, edge, sage, gin", "pyg:GATv2Conv")
    res = run_cli(["train", "--set", *TINY, "optim.lrr=1", "--output", str(out_dir)], capsys)
    _one_error_line(*res, "unknown config key 'optim.lrr'", "weight_decay")
    assert not out_dir.exists()


def test_error_image_size(capsys, tmp_path):
    out_dir = tmp_path / "run"
    res = run_cli(["train", "--set", *TINY, "data.img_size=36", "--output", str(out_dir)], capsys)
    _one_error_line(*res, "36", "img_size")
    assert not out_dir.exists()


def test_error_checkpoint_of_another_model(trained, capsys, tmp_path):
    ckpt = str(trained / "checkpoints" / "last.pt")
    other = "model.channels=48"
    res = run_cli(["eval", "--checkpoint", ckpt, "--set", other], capsys)
    _one_error_line(*res, "does not fit", "model.name")
    # as initial weights of a new run: nothing may be written
    out_dir = tmp_path / "run"
    res = run_cli(["train", "--set", *TINY, other, f"model.checkpoint={trained / 'model.pt'}",
                   "--output", str(out_dir)], capsys)
    _one_error_line(*res, "does not fit")
    assert not out_dir.exists()


def test_error_truncated_checkpoint(trained, capsys, tmp_path):
    src = trained / "checkpoints" / "last.pt"
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    res = run_cli(["eval", "--checkpoint", str(bad)], capsys)
    _one_error_line(*res, "truncated or corrupt", str(bad))
    res = run_cli(["train", "--resume", str(bad)], capsys)
    _one_error_line(*res, "truncated or corrupt")
    res = run_cli(["eval", "--checkpoint", str(tmp_path / "missing.pt")], capsys)
    _one_error_line(*res, "does not exist")


def test_error_run_dir_exists(trained, capsys):
    res = run_cli(["train", "--set", *TINY, "--output", str(trained)], capsys)
    _one_error_line(*res, "already exists", "--resume")


def test_resume_finished_run_needs_more_epochs(trained, capsys, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    res = run_cli(["train", "--resume", str(run)], capsys)  # stopped by train.max_steps=6
    _one_error_line(*res, "already finished train.max_steps=6")
    ckpt = run / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["run"].update(epoch=2, step_in_epoch=0)
    torch.save(state, ckpt)
    res = run_cli(["train", "--resume", str(run), "--set", "train.max_steps=0"], capsys)
    _one_error_line(*res, "already finished all 2 epochs", "train.epochs")


def test_cli_error_is_one_line_in_a_subprocess(tmp_path):
    """Through the real entry point: exit code 2, one stderr line, no traceback, no files."""
    out_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::FutureWarning", "-m", "vig_pyg.train", "train", "--config",
         "configs/demo.yaml", "--set", "model.name=nope", "--output", str(out_dir)],
        capture_output=True, text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _one_error_line(proc.returncode, proc.stdout, proc.stderr, "unknown model 'nope'")
    assert proc.stdout == "" and not out_dir.exists()


def test_print_config(capsys):
    code, out, _ = run_cli(["train", "--config", os.path.join(REPO, "configs", "demo.yaml"), "--print-config",
                            "--set", "optim.lr=0.01"], capsys)
    assert code == 0 and "lr: 0.01" in out and "dataset: digits" in out


def test_eval_official_release_layout(trained, capsys, tmp_path):
    """A file laid out like the official release (``gconv`` keys, ``module.`` prefix, wrapped
    under ``state_dict_ema``) evaluates through create_model(checkpoint=...) to the same
    accuracy as our own export."""
    from vig_pyg.models.checkpoint import read_checkpoint, vig_pyg_to_official

    state, _ = read_checkpoint(str(trained / "model.pt"))
    official = {"state_dict_ema": {"module." + vig_pyg_to_official(k): v for k, v in state.items()}}
    assert any(".graph_conv.gconv." in k for k in official["state_dict_ema"])
    path = tmp_path / "release.pth"
    torch.save(official, path)
    js = tmp_path / "eval.json"
    code, out, err = run_cli(["eval", "--checkpoint", str(path), "--json", str(js), "--no-progress",
                              "--set", *TINY[:4], "train.device=cpu"], capsys)
    assert code == 0, err
    summary = json.loads((trained / "summary.json").read_text())
    assert json.loads(js.read_text())["top1"] == pytest.approx(summary["top1"])


def test_one_channel_model_trains(tmp_path):
    """model.in_chans=1: the size check and the steps feed one channel (RGB digits -> grey)."""
    from vig_pyg.train.training import fit_run

    summary, run = fit_run(None, TINY + ["model.in_chans=1", "train.max_steps=1",
                                         "aug.mixup=0", "aug.cutmix=0"],
                           output=str(tmp_path / "grey"))
    assert run.model.stem.convs[0].in_channels == 1 and summary["global_step"] == 1
    assert next(iter(run.test_loader))[0].shape[1] == 1
