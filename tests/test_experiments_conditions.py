"""The conditions a sweep records in its marker (machine, commit, executor) and the report's
line built from them and the runs' precision and device. No training: markers and git
repositories are written by the test."""
import os
import platform
import re
import subprocess

import pytest
import torch
import yaml

from vig_pyg.experiments import conditions as C
from vig_pyg.experiments.report import load_sweep
from vig_pyg.experiments.study import load_study
from vig_pyg.experiments.sweep import check_output, write_marker

from experiments_helpers import write_study

CPUINFO = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Fake CPU @ 2.00GHz\n"
           "flags\t\t: fpu sse\n\nprocessor\t: 1\nmodel name\t: Second CPU\n")


def test_cpu_model_is_the_first_model_name(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    assert C.cpu_model(str(tmp_path / "cpuinfo")) == "Fake CPU @ 2.00GHz"
    (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")
    assert C.cpu_model(str(tmp_path / "arm")) is None
    assert C.cpu_model(str(tmp_path / "missing")) is None


def _git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_git_commit_clean_dirty_and_outside_a_repository(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("a\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    full = _git(repo, "log", "-1", "--format=%H")
    short = C.git_commit(str(repo))
    assert re.fullmatch(r"[0-9a-f]{4,40}", short) and full.startswith(short)
    (repo / "sub").mkdir()
    assert C.git_commit(str(repo / "sub")) == short          # any folder of the repository
    (repo / "untracked.txt").write_text("b\n")                # porcelain lists it
    assert C.git_commit(str(repo)) == short + "+dirty"
    (tmp_path / "plain").mkdir()
    assert C.git_commit(str(tmp_path / "plain")) is None


@pytest.mark.parametrize("error", [subprocess.TimeoutExpired("git", 10),
                                   FileNotFoundError("git")])
def test_git_that_hangs_or_is_missing_gives_none(monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(C.subprocess, "run", fail)
    assert C.git_commit() is None


def _first_model_name():
    if not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo") as fh:
        found = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.M)
    return found.group(1).strip() if found else None


def test_write_marker_records_conditions_and_merges_continuations(tmp_path, monkeypatch):
    study = load_study(write_study(tmp_path, {"model.k": [3, 4]}))
    out = tmp_path / "out"
    out.mkdir()
    marker = write_marker(study, str(out), "local")
    assert marker["machine"] == {"arch": platform.machine(), "cpu": _first_model_name(),
                                 "cores": os.cpu_count(), "torch": torch.__version__}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=C.PACKAGE_DIR,
                          capture_output=True, text=True)
    if head.returncode == 0:
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=C.PACKAGE_DIR,
                               capture_output=True, text=True).stdout.strip()
        assert marker["commit"] == head.stdout.strip() + ("+dirty" if dirty else "")
    else:
        assert marker["commit"] is None
    assert marker["executor"] == "local"
    with open(out / "study.yaml") as fh:
        assert yaml.safe_load(fh) == marker
    check_output(study, str(out))                      # still this study's marker
    assert load_sweep(str(out)).grid == {"model.k": [3, 4]}

    first = marker["commit"]
    monkeypatch.setattr(C, "git_commit", lambda: "fff0000")
    again = write_marker(study, str(out), "local")
    assert again["commit"] == [first, "fff0000"] and again["machine"] == marker["machine"]
    assert write_marker(study, str(out), "local")["commit"] == [first, "fff0000"]
    assert write_marker(study, str(out), "slurm")["executor"] == ["local", "slurm"]

    # a marker without the fields: the runs before this invocation ran under unknown ones
    (out / "study.yaml").write_text(yaml.safe_dump(study.to_dict()))
    assert write_marker(study, str(out), "local")["commit"] == [None, "fff0000"]


ROWS = [{"status": "done", "precision": "bf16", "device": "cpu"},
        {"status": "done", "precision": "bf16", "device": "cpu"},
        {"status": "failed"}]
MACHINE = {"arch": "aarch64", "cpu": None, "cores": 8, "torch": "2.14.1"}


def test_conditions_line():
    line = C.conditions_line({"machine": MACHINE, "commit": "1234abc"}, ROWS)
    assert line == ("Conditions: machine aarch64, 8 cores, torch 2.14.1; commit 1234abc; "
                    "precision bf16; device cpu.")
    fp32 = ROWS + [{"status": "done", "precision": "fp32", "device": "cuda:0"}]
    line = C.conditions_line({"machine": [None, MACHINE], "commit": ["a", "b+dirty"],
                              "executor": ["local", "slurm"]}, fp32)
    assert line == ("Conditions: machine differs between invocations: unknown; aarch64, 8 "
                    "cores, torch 2.14.1 (submitting host; runs on slurm); commit differs "
                    "between invocations: a; b+dirty; precision differs between runs: bf16 "
                    "(2 runs), fp32 (1 run); device differs between runs: cpu (2 runs), "
                    "cuda:0 (1 run).")
    assert C.conditions_line({}, []) == ("Conditions: machine unknown; commit unknown; "
                                         "precision unknown; device unknown.")
