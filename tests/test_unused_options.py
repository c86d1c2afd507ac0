"""An option the chosen data set does not read is an error: each ``data.*`` key, per
``data.dataset``, against the rule written out below (what ``train/data.py`` and
``detection/data.py`` read), and every shipped config and documented command passes."""
import dataclasses
import glob
import os
import re
import shlex

import pytest

from cli_helpers import run_cli
from vig_pyg.datasets.table import DATASETS
from vig_pyg.detection import config as det
from vig_pyg.errors import ConfigError
from vig_pyg.experiments.study import load_study
from vig_pyg.train import config as cls
from vig_pyg.train.dataset_keys import DATA_KEYS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The rule, written out: which dataset-dependent keys each kind reads. digits splits itself
# (test_fraction, split_seed); imagefolder reads ROOT/train_split and ROOT/val_split; every
# set of the table reads files under root, fetched by download.
CLS_READS = {"digits": {"test_fraction", "split_seed"},
             "imagefolder": {"root", "train_split", "val_split"},
             **{name: {"root", "download"} for name in DATASETS}}
# A value other than the default for each of those keys.
CLS_CHANGED = {"root": "/nonexistent", "download": "true", "test_fraction": "0.5",
               "split_seed": "3", "train_split": "a", "val_split": "b"}
# synthetic generates its canvases from these keys; coco reads its files from the others.
DET_READS = {"synthetic": {"canvas", "num_train", "num_val", "max_objects", "scale", "seed",
                           "cache_dir"},
             "coco": {"root", "train_json", "train_images", "val_json", "val_images"}}
DET_CHANGED = {"canvas": "64", "num_train": "5", "num_val": "5", "max_objects": "2",
               "scale": "[8, 20]", "seed": "3", "cache_dir": "/tmp/c", "root": "/nonexistent",
               "train_json": "t.json", "train_images": "t", "val_json": "v.json",
               "val_images": "v"}


def _one_line_naming(exc, *fragments):
    text = str(exc.value)
    assert "\n" not in text, text
    for f in fragments:
        assert f in text, text
    return text


def _cases(reads, changed):
    return [(name, key) for name in reads for key in changed]


@pytest.mark.parametrize("dataset,key", _cases(CLS_READS, CLS_CHANGED))
def test_classification_key_per_dataset(dataset, key):
    """A key the set reads builds; one it does not read is one error line naming it."""
    base = [f"data.dataset={dataset}"]
    if dataset == "imagefolder" and key != "root":
        base.append("data.root=/data/imagenet")   # imagefolder needs a root
    item = f"data.{key}={CLS_CHANGED[key]}"
    if key in CLS_READS[dataset]:
        cfg = cls.build_config(None, base + [item])
        assert str(getattr(cfg.data, key)).lower() == CLS_CHANGED[key]
        return
    with pytest.raises(ConfigError) as err:
        cls.build_config(None, base + [item])
    _one_line_naming(err, f"{item} does nothing with data.dataset={dataset}", "drop it")


@pytest.mark.parametrize("dataset,key", _cases(DET_READS, DET_CHANGED))
def test_detection_key_per_dataset(dataset, key):
    base = [f"data.dataset={dataset}"] + (["data.root=/c"] if dataset == "coco" else [])
    item = f"data.{key}={DET_CHANGED[key]}"
    if key in DET_READS[dataset]:
        det.build_config(None, base + [item])
        return
    with pytest.raises(ConfigError) as err:
        det.build_config(None, base + [item])
    _one_line_naming(err, f"{item} does nothing with data.dataset={dataset}", "drop it")


def test_message_names_key_dataset_and_fix():
    with pytest.raises(ConfigError) as err:
        det.build_config(None, ["data.root=/nonexistent"])
    assert str(err.value) == ("data.root=/nonexistent does nothing with data.dataset=synthetic "
                              "(the built-in set): drop it (default null), or set "
                              "data.dataset=coco")
    with pytest.raises(ConfigError) as err:
        cls.build_config(None, ["data.dataset=cifar10", "data.test_fraction=0.8"])
    _one_line_naming(err, "data.test_fraction=0.8 does nothing with data.dataset=cifar10",
                     "drop it (default 0.2)", "set data.dataset=digits")
    with pytest.raises(ConfigError) as err:
        cls.build_config(None, ["data.download=true"])
    _one_line_naming(err, "data.download=true does nothing with data.dataset=digits",
                     "set data.dataset to one of mnist, ", "stl10")


@pytest.mark.parametrize("other", ["data.train_subset=100", "data.val_fraction=0.1"])
def test_split_seed_read_by_subset_and_validation(other):
    """Without a split of its own a set reads split_seed only for train_subset/val_fraction."""
    seeded = ["data.dataset=cifar10", "data.split_seed=3"]
    with pytest.raises(ConfigError) as err:
        cls.build_config(None, seeded)
    _one_line_naming(err, "data.split_seed=3 does nothing with data.dataset=cifar10",
                     "data.train_subset or data.val_fraction")
    assert cls.build_config(None, seeded + [other]).data.split_seed == 3


def test_defaults_written_out_are_no_error():
    """A key set to its default (e.g. a saved config's full data section) is no error."""
    saved = cls.Config().to_dict()
    saved["data"].update(dataset="cifar10", root="/data/cifar")
    cfg = cls.build_config(None, ["data.test_fraction=0.2", "data.download=false"], base=saved)
    assert cfg.data.dataset == "cifar10"


def test_detect_command_errors_before_training(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = run_cli(["detect", "train", "--config",
                            os.path.join(ROOT, "configs/detect_demo.yaml"), "--set",
                            "data.root=/nonexistent", "--output", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "data.root=/nonexistent does nothing with data.dataset=synthetic" in lines[0]
    assert not out.exists()


def test_train_command_errors(capsys, tmp_path):
    code, _, err = run_cli(["train", "--set", "data.root=/nonexistent", "--output",
                            str(tmp_path / "run")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "data.root=/nonexistent does nothing with data.dataset=digits" in lines[0]


@pytest.mark.parametrize("table,section,choices", [
    (DATA_KEYS, cls.DataConfig, cls.CHOICES["data.dataset"]),
    (det.DATA_KEYS, det.DetDataConfig, det.CHOICES["data.dataset"])])
def test_tables_cover_every_dataset_with_real_keys(table, section, choices):
    """A misspelt key would never be checked; a missing dataset would fail every key."""
    fields = {f.name for f in dataclasses.fields(section)}
    assert set(table.reads) == set(choices) == set(table.about)
    assert set(table.dependent()) <= fields
    for users in table.also_read_by.values():
        assert set(users) <= fields


# --------------------------------------------------------------- shipped configs and docs
def _load_config(path, sets=()):
    """Build ``path`` (+ ``--set`` items) with the checks of its own command."""
    with open(path) as fh:
        is_detect = re.search(r"^\s+dataset:\s*(synthetic|coco)\b", fh.read(), re.M)
    if is_detect:
        return det.build_config(path, list(sets))
    return cls.build_config(path, list(sets))


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_shipped_configs_pass(path):
    sets = ["data.root=/data/coco"] if path.endswith("coco_detect.yaml") else []
    _load_config(path, sets)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "experiments", "*.yaml"))))
def test_shipped_studies_pass(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    load_study(path)   # builds every run's config (base + set + grid) with every check


_COMMAND = re.compile(r"(?:vig-pyg|-m vig_pyg) (train|detect train|sweep)(?=\s|$)(.*)")
_VALUED = {"--config", "--output", "--jobs", "--executor", "--resume", "--checkpoint"}
_DOC_FILES = ["README.md", "Makefile", "docs/*.md", "configs/*.yaml", "experiments/*.yaml",
              "src/vig_pyg/**/cli.py"]


def _joined_lines(path):
    """Lines with backslash continuations joined (a YAML comment's leading ``#`` dropped)."""
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        j = i
        while line.rstrip().endswith("\\") and j + 1 < len(lines):
            j += 1
            line = line.rstrip().rstrip("\\") + " " + lines[j].strip().lstrip("#")
        yield line


def documented_commands():
    """``(where, command, config or study, --set items)`` of every train, detect train and
    sweep command in the docs, configs and help texts; commands with placeholders
    (``KEY=VALUE``, ``CONV``, ``[--set ...]``) or ``--resume`` are left out."""
    found = []
    paths = sorted({p for pat in _DOC_FILES
                    for p in glob.glob(os.path.join(ROOT, pat), recursive=True)})
    for path in paths:
        for line in _joined_lines(path):
            m = _COMMAND.search(line)
            if not m:
                continue
            text = re.split(r"`| #", m.group(2))[0]
            if "KEY=VALUE" in text or "[--" in text or "--resume" in text:
                continue
            tokens, target, sets, i = shlex.split(text), None, [], 0
            while i < len(tokens):
                tok = tokens[i]
                if tok == "--set":
                    while i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                        i += 1
                        sets.append(tokens[i])
                elif tok in _VALUED:
                    target = tokens[i + 1] if tok == "--config" else target
                    i += 1
                elif not tok.startswith("-") and target is None:
                    target = tok   # the study of a sweep
                i += 1
            if any(re.search(r"=[A-Z]+$", s) for s in sets):
                continue
            where = os.path.relpath(path, ROOT)
            found.append(pytest.param(m.group(1), target, sets, id=f"{where}:{m.group(1)}"))
    return found


@pytest.mark.parametrize("command,target,sets", documented_commands())
def test_documented_commands_pass(command, target, sets, monkeypatch):
    monkeypatch.chdir(ROOT)
    if command == "sweep":
        load_study(target, sets)
    elif command == "detect train":
        det.build_config(target, sets)
    else:
        cls.build_config(target, sets)


def test_documented_commands_found():
    """The scan sees the commands it is there for (the CIFAR-100 sweep of docs/studies.md)."""
    cases = [p.values for p in documented_commands()]
    assert any(c == "sweep" and "data.dataset=cifar100" in s for c, _, s in cases)
    assert any(c == "detect train" and t == "configs/coco_detect.yaml" for c, t, _ in cases)
