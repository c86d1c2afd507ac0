"""A tiny detection run on the synthetic set: records, exact resume, the CLI's eval and
predict, and one-line errors."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("pycocotools")

from cli_helpers import run_cli  # noqa: E402
from vig_pyg.detection import fit  # noqa: E402

# 64 px canvases, 8 training images, batch 2: 4 steps per epoch, 2 epochs; on the CPU
# wherever the suite runs (the CUDA step is test_cuda.py's)
TINY = ["model.detector=fasterrcnn", "model.backbone=pvig_ti",
        "model.overrides={channels: [16, 32, 48, 64], blocks: [1, 1, 1, 1], img_size: 64}",
        "model.k=4", "model.fpn_channels=16", "model.representation_size=32",
        "model.anchor_scale=4", "model.min_size=[64]", "model.max_size=64",
        "model.norm_eval=false", "data.canvas=64", "data.num_train=8", "data.num_val=3",
        "data.scale=[12, 28]", "data.batch_size=2", "data.eval_batch_size=3", "data.hflip=0.5",
        "optim.lr=1e-3", "optim.clip_grad=5", "sched.name=cosine", "sched.warmup_steps=2",
        "train.epochs=2", "train.threads=1", "log.progress=false", "log.tensorboard=false",
        "train.device=cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("runs") / "ref"
    summary = fit(None, TINY + [f"data.cache_dir={cache}"], output=str(out))
    return out, summary


def _weights(run_dir):
    payload = torch.load(os.path.join(run_dir, "checkpoints", "last.pt"), weights_only=True)
    return payload["model"], payload


def test_run_writes_its_records(reference):
    out, summary = reference
    assert summary["global_step"] == 8 and summary["box_AP"] is not None
    assert 0.0 <= summary["box_AP"] <= 1.0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[-1]["box_AP"] != ""
    saved = json.load(open(out / "summary.json"))
    assert saved["global_step"] == 8 and saved["config"]["data"]["canvas"] == 64
    assert (out / "config.yaml").exists()


def _rows(run_dir):
    """metrics.csv without its timing columns (the only ones a resume may change)."""
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as fh:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "elapsed_s")}
                for r in csv.DictReader(fh)]


def _check_records(run_dir, ref_dir):
    """The rule of issue 14: each epoch's row once, equal to the uninterrupted run's, and
    TensorBoard one value per step, the rows' values (tag: first ``_`` -> ``/``)."""
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows == _rows(ref_dir)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tb"), purge_orphaned_data=False).Reload()
    for key in ("train_loss", "box_AP", "box_AP50"):
        want = [(int(r["global_step"]), float(r[key])) for r in rows if r[key] != ""]
        got = [(e.step, e.value) for e in acc.Scalars(key.replace("_", "/", 1))]
        assert [s for s, _ in got] == [s for s, _ in want], key  # one value per step
        assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-6), key
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    ref = json.load(open(os.path.join(ref_dir, "summary.json")))
    assert summary["resumes"] == 1 and ref["resumes"] == 0
    for key in ("global_step", "epochs", "box_AP", "box_AP50", "box_AP75"):
        assert summary[key] == ref[key], key


def _same_weights(run_dir, ref_dir):
    a, _ = _weights(ref_dir)
    b, _ = _weights(run_dir)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_continues_exactly(reference, tmp_path, cache):
    ref_dir, _ = reference
    run = tmp_path / "stopped"
    # stop mid-epoch 2 (step 6 of 8; its partial row 2 is written), then resume to the end
    fit(None, TINY + [f"data.cache_dir={cache}", "train.max_steps=6", "log.tensorboard=true"],
        output=str(run))
    _, mid = _weights(run)
    s = mid["run"]
    assert (s["epoch"], s["step_in_epoch"], s["global_step"]) == (1, 2, 6)
    assert [r["global_step"] for r in _rows(run)] == ["4", "6"]
    summary = fit(None, ["train.max_steps=0"], resume=str(run))
    assert summary["global_step"] == 8
    _same_weights(run, ref_dir)
    _check_records(run, ref_dir)


def test_sigkill_after_a_row_then_resume(reference, tmp_path, cache):
    """Killed (SIGKILL) right after epoch 1's row, whose checkpoint was never written: the
    resume restarts from the step-3 checkpoint and the row is recorded once."""
    ref_dir, _ = reference
    run = tmp_path / "killed"
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", VIG_PYG_CRASH_AT="epoch_row@1",
               PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    argv = ["detect", "train", "--output", str(run), "--set", *TINY, f"data.cache_dir={cache}",
            "train.ckpt_every_steps=3", "log.tensorboard=true"]
    proc = subprocess.run([sys.executable, "-m", "vig_pyg", *argv], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert [r["epoch"] for r in _rows(run)] == ["1"]
    _, mid = _weights(run)
    assert mid["run"]["global_step"] == 3
    fit(None, [], resume=str(run))
    _same_weights(run, ref_dir)
    _check_records(run, ref_dir)


def test_cli_eval_and_predict(reference, tmp_path, capsys):
    ref_dir, summary = reference
    code, out, _ = run_cli(["detect", "eval", "--checkpoint", str(ref_dir), "--no-progress",
                         "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0 and "box_AP" in out
    again = json.load(open(tmp_path / "m.json"))
    assert again["box_AP"] == pytest.approx(summary["box_AP"])
    images = os.path.join(summary["config"]["data"]["cache_dir"])
    val = [os.path.join(r, f) for r, _, fs in os.walk(images) for f in fs
           if f.endswith(".png") and os.path.basename(r) == "val"][:2]
    code, out, err = run_cli(["detect", "predict", "--checkpoint", str(ref_dir), "--images", *val,
                           "--output", str(tmp_path / "pred"), "--score", "0.0"], capsys)
    assert code == 0, err
    written = sorted(os.listdir(tmp_path / "pred"))
    assert len(written) == 2 and all(w.endswith(".png") for w in written)


def test_cli_errors_are_one_line(reference, tmp_path, capsys, cache):
    ref_dir, _ = reference
    not_det = tmp_path / "clf.pt"
    torch.save({"format": "vig_pyg", "state_dict": {"prediction.4.weight": torch.zeros(1)}},
               not_det)
    cases = [["detect", "eval", "--checkpoint", str(not_det)],
             ["detect", "train", "--set", "model.detectr=retinanet"],
             ["detect", "train", "--set", "model.backbone=vig_ti", *TINY[2:],
              f"data.cache_dir={cache}", "--output", str(tmp_path / "x")],
             ["detect", "train", "--resume", str(ref_dir)],
             ["detect", "predict", "--checkpoint", str(ref_dir), "--images", "nowhere.png",
              "--output", str(tmp_path / "p")]]
    for argv in cases:
        code, _, err = run_cli(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("vig-pyg detect "), err
    assert not (tmp_path / "x").exists()  # bad input leaves no run directory
