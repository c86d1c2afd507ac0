"""Damaged image files met in the middle of an epoch (vig_pyg.datasets.bad_images).

The damaged files are written here: a PNG written by PIL with its bytes cut (PIL: "image
file is truncated") and a text file named .png (PIL cannot identify it). Which file falls in
which batch follows torch's own DistributedSampler (the training sampler's rule).

* without data.skip_bad_images: one error line naming the file, exit 2, with loader workers
  too; the checkpoint is saved at the failing batch, and once the file is fixed the resumed
  run ends exactly like one that never met it;
* with data.skip_bad_images: the file is dropped from its batch, counted per epoch in
  metrics.csv and in summary.json (also across a kill and resume), and named once on stderr;
  a batch left without two images takes no step.
"""
import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from cli_helpers import run_cli
from vig_pyg.datasets import bad_images
from vig_pyg.datasets.bad_images import (BadImageError, Batch, ImageReader, Skipped,
                                         SkippingView, collate, take_skipped)
from vig_pyg.train import fit
from vig_pyg.train.config import ConfigError, build_config
from vig_pyg.train.records import SUMMARY_VOLATILE, TIMING_FIELDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 3
# 2 classes x 8 training images, batch 4: 4 steps per epoch, every image used each epoch
TINY = ["data.dataset=imagefolder", "data.img_size=32", "model.channels=32", "model.depth=2",
        "model.stem_stride=8", "model.k=4", "data.batch_size=4", "data.eval_batch_size=4",
        "train.epochs=2", "sched.warmup_epochs=0", "train.deterministic=true",
        f"train.seed={SEED}", "data.num_workers=0", "log.progress=false",
        "log.tensorboard=false", "train.device=cpu", "ema.decay=0.9"]


def _png(path, rng, size=(20, 24)):
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)


def _folder(root, train_per_class=8, val_per_class=2):
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                _png(root / split / c / f"{i}.png", rng)
    return root


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return data


def _not_an_image(path):
    path.write_text("not an image")


def _samples(root, split="train"):
    """Item i of the split: torchvision's ImageFolder order."""
    return [p for p, _ in torchvision.datasets.ImageFolder(str(root / split)).samples]


def _order(n, epoch):
    """The training sampler's order of an epoch: torch's DistributedSampler, one process."""
    sampler = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=True, seed=SEED)
    sampler.set_epoch(epoch)
    return list(sampler)


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in csv.DictReader(fh)]


def _summary(run):
    s = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in s.items() if k not in SUMMARY_VOLATILE}


@pytest.fixture
def restore_determinism():
    """train.deterministic=true switches torch's deterministic algorithms on for the process."""
    was = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(was)


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(bad_images, "_WARNED", set())


# --------------------------------------------------------------------------- the pieces
def test_reader_gives_what_pil_gives(tmp_path):
    _png(tmp_path / "a.png", np.random.default_rng(1))
    Image.open(tmp_path / "a.png").convert("L").save(tmp_path / "grey.png")
    for name in ("a.png", "grey.png"):
        want = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert np.array_equal(np.asarray(ImageReader()(str(tmp_path / name))), want)


@pytest.mark.parametrize("damage, why", [(_truncate, "image file is truncated"),
                                         (_not_an_image, "not an image file PIL can identify")])
def test_damaged_file_is_one_line_naming_it(tmp_path, damage, why):
    path = tmp_path / "x.png"
    _png(path, np.random.default_rng(1))
    damage(path)
    with pytest.raises(BadImageError) as err:
        ImageReader()(str(path))
    msg = str(err.value)
    assert msg == (f"cannot read image '{path}' ({why}): replace or delete the file, then "
                   "continue with --resume RUN, or set data.skip_bad_images=true")
    assert (err.value.path, err.value.reason) == (str(path), why)
    assert isinstance(err.value, ConfigError)
    with pytest.raises(bad_images.SkippedImageError):
        ImageReader(skip=True)(str(path))


def test_worker_error_comes_back_as_its_one_line(tmp_path):
    """A worker's exception is re-raised from its traceback text (torch's ExceptionWrapper);
    the error keeps only its own line, and its path."""
    root = _folder(tmp_path)
    bad = _samples(root)[5]
    _truncate(root / "train" / bad)
    folder = torchvision.datasets.ImageFolder(str(root / "train"), loader=ImageReader(),
                                              transform=torchvision.transforms.ToTensor())
    loader = DataLoader(SkippingView(folder), batch_size=4, num_workers=1, collate_fn=collate)
    with pytest.raises(BadImageError) as err:
        list(loader)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"cannot read image '{bad}'")
    assert err.value.path == bad and err.value.reason == "image file is truncated"


def test_skipping_with_workers_drops_only_the_damaged(tmp_path):
    root = _folder(tmp_path)
    files = _samples(root)
    _truncate(root / "train" / files[2])
    _not_an_image(root / "train" / files[9])
    tf = torchvision.transforms.ToTensor()
    folder = torchvision.datasets.ImageFolder(str(root / "train"), loader=ImageReader(skip=True),
                                              transform=tf)
    batches = list(DataLoader(SkippingView(folder), batch_size=4, num_workers=2,
                              collate_fn=collate))
    assert [[s.path for s in b.skipped] for b in batches] == [[files[2]], [], [files[9]], []]
    x = torch.cat([b[0] for b in batches])
    want = [tf(Image.open(f).convert("RGB")) for i, f in enumerate(files) if i not in (2, 9)]
    assert torch.equal(x, torch.stack(want))
    assert torch.equal(torch.cat([b[1] for b in batches]),
                       torch.tensor([0] * 7 + [1] * 7))


def test_collate_drops_skipped_samples():
    samples = [(torch.full((2,), float(i)), i) for i in range(4)]
    gone = Skipped("/d/x.png", "image file is truncated")
    batch = collate([samples[0], gone, samples[1], samples[2]])
    want = default_collate(samples[:3])
    assert len(batch) == 2 and torch.equal(batch[0], want[0]) and torch.equal(batch[1], want[1])
    assert batch.skipped == [gone]
    empty = collate([gone, gone])
    assert tuple(empty) == (None, None) and len(empty.skipped) == 2
    back = pickle.loads(pickle.dumps(batch))  # as a worker sends it
    assert isinstance(back, Batch) and torch.equal(back[0], want[0])
    assert back.skipped[0].path == "/d/x.png"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinning_keeps_the_skipped_list():
    gone = Skipped("/d/x.png", "image file is truncated")
    batch = collate([(torch.zeros(2), 0), gone])
    loader = DataLoader([0], batch_size=1, pin_memory=True, collate_fn=lambda _: batch)
    pinned = next(iter(loader))
    assert isinstance(pinned, Batch) and pinned[0].is_pinned() and pinned.skipped[0] is not None


def test_each_file_is_named_once(capsys, fresh_warnings):
    a, b = Skipped("/d/a.png", "image file is truncated"), Skipped("/d/b.png", "r")
    assert take_skipped(Batch((None, None), [a, b])) == 2
    assert take_skipped(Batch((None, None), [a])) == 1
    assert take_skipped([torch.zeros(1), torch.zeros(1)]) == 0  # default_collate's batch
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["warning: skipping image '/d/a.png' (image file is truncated): "
                     "data.skip_bad_images=true",
                     "warning: skipping image '/d/b.png' (r): data.skip_bad_images=true"]


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10"])
def test_skip_on_a_set_without_image_files_is_an_error(dataset):
    with pytest.raises(ConfigError) as err:
        build_config(None, [f"data.dataset={dataset}", "data.skip_bad_images=true"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"data.skip_bad_images=true does nothing with data.dataset={dataset}")
    assert "data.dataset=imagefolder" in msg
    build_config(None, ["data.dataset=imagefolder", "data.root=/x", "data.skip_bad_images=true"])


# --------------------------------------------------------------------------- training runs
@pytest.mark.parametrize("split, workers", [("train", 0), ("train", 1), ("val", 0), ("val", 1)])
def test_train_stops_with_one_line(tmp_path, capsys, restore_determinism, split, workers):
    root = _folder(tmp_path / "data")
    bad = _samples(root, split)[1]
    _truncate(root / split / bad)
    out = tmp_path / "run"
    code, _, err = run_cli(["train", "--set", *TINY, f"data.root={root}", "train.epochs=1",
                            f"data.num_workers={workers}", "--output", str(out)], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if "warn" not in line.lower()]
    assert lines == [f"vig-pyg train: error: cannot read image '{bad}' (image file is "
                     "truncated): replace or delete the file, then continue with --resume "
                     "RUN, or set data.skip_bad_images=true"], err
    if split == "train":  # saved at the failing batch
        assert (out / "checkpoints" / "last.pt").exists()


def test_resume_after_fixing_the_file_matches_an_unbroken_run(tmp_path, restore_determinism):
    root = _folder(tmp_path / "data")
    args = [*TINY, f"data.root={root}"]
    fit(None, args, output=str(tmp_path / "reference"))

    bad = _samples(root)[_order(16, 0)[2 * 4 + 1]]  # in batch 2 of epoch 1
    good = _truncate(root / "train" / bad)
    run = tmp_path / "broken"
    with pytest.raises(BadImageError) as err:
        fit(None, args, output=str(run))
    assert err.value.path == bad
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["run"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 2, 2)

    (root / "train" / bad).write_bytes(good)
    fit(resume=str(run))
    reference = tmp_path / "reference"
    assert _rows(run) == _rows(reference) and len(_rows(run)) == 2
    assert _summary(run) == _summary(reference)
    a = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


def test_batch_left_without_two_images_takes_no_step(tmp_path, restore_determinism,
                                                     fresh_warnings):
    """Batch 2, no mixup: batch 0 loses both images (empty), batch 1 one (one left: no
    BatchNorm statistics), batches 2 and 3 none; so 2 steps and 3 skipped images."""
    root = _folder(tmp_path / "data", train_per_class=4)
    files, order = _samples(root), _order(8, 0)
    for i in order[:3]:
        _truncate(root / "train" / files[i])
    summary = fit(None, [*TINY, f"data.root={root}", "train.epochs=1", "data.batch_size=2",
                         "aug.mixup=0", "aug.cutmix=0", "data.skip_bad_images=true"],
                  output=str(tmp_path / "run"))
    assert summary["global_step"] == 2 and summary["skipped_images"] == 3
    assert [r["skipped_images"] for r in _rows(tmp_path / "run")] == ["3"]


# --------------------------------------------------------------------------- skip + resume
def _start(out, root, crash=None, resume=False):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("VIG_PYG_CRASH_AT", None)
    if crash:
        env["VIG_PYG_CRASH_AT"] = crash
    args = ["--resume", str(out)] if resume else [
        "--set", *TINY, f"data.root={root}", "data.skip_bad_images=true",
        "train.ckpt_every_steps=3", "--output", str(out)]
    return subprocess.Popen([sys.executable, "-m", "vig_pyg.train", "train", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def skipping(tmp_path_factory):
    """One damaged training file (in the first two batches of epoch 2) and one damaged
    validation file; an uninterrupted run, and a run killed at its step-6 checkpoint (mid
    epoch 2, after the file's batch) and resumed. Mixup on: the batch that loses the file
    is odd, so it also drops its last image."""
    tmp = tmp_path_factory.mktemp("skip")
    root = _folder(tmp / "data")
    bad_train = _samples(root)[_order(16, 1)[5]]
    bad_val = _samples(root, "val")[2]
    _truncate(root / "train" / bad_train)
    _not_an_image(root / "val" / bad_val)
    procs = {"reference": _start(tmp / "reference", root),
             "killed": _start(tmp / "killed", root, crash="checkpoint@3")}
    done = {name: (p.communicate(timeout=600), p.returncode) for name, p in procs.items()}
    assert done["reference"][1] == 0, done["reference"][0][1][-2000:]
    assert done["killed"][1] == -9, done["killed"][0][1][-2000:]
    saved = torch.load(tmp / "killed" / "checkpoints" / "last.pt", weights_only=True)["run"]
    resumed = _start(tmp / "killed", root, resume=True)
    (_, err), code = resumed.communicate(timeout=600), resumed.returncode
    assert code == 0, err[-2000:]
    return tmp, (bad_train, bad_val), done["reference"][0][1], saved


def test_skipped_images_are_counted_and_named_once(skipping):
    tmp, (bad_train, bad_val), err, _ = skipping
    rows = _rows(tmp / "reference")
    assert [r["skipped_images"] for r in rows] == ["1", "1"]
    summary = _summary(tmp / "reference")
    assert summary["skipped_images"] == 2 and summary["global_step"] == 8
    warned = [line for line in err.splitlines() if line.startswith("warning: skipping image")]
    assert sorted(warned) == sorted(
        [f"warning: skipping image '{bad_train}' (image file is truncated): "
         "data.skip_bad_images=true",
         f"warning: skipping image '{bad_val}' (not an image file PIL can identify): "
         "data.skip_bad_images=true"])


def test_skipped_counts_survive_a_kill_and_resume(skipping):
    tmp, _, _, saved = skipping
    assert (saved["epoch"], saved["step_in_epoch"]) == (1, 2)
    assert (saved["epoch_skipped"], saved["skipped_images"]) == (1, 1)
    assert _rows(tmp / "killed") == _rows(tmp / "reference")
    assert _summary(tmp / "killed") == _summary(tmp / "reference")
