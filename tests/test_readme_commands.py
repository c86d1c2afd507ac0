"""Every ``vig-pyg`` command README.md shows runs to its end, on a small model or input.

:data:`SMALL` maps each command, as the README prints it, to the arguments added (or the
placeholders replaced) to make it small; a command in the README that is not in the table,
or the reverse, fails the first test, so the page and the suite cannot drift apart. The
commands run in order in one directory, as a reader would type them: the runs that the later
commands read (``runs/demo-...``, ``mr/model.pt``) are the earlier commands' own.
"""
from __future__ import annotations

import os
import re
import shlex

import pytest

from vig_pyg.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--set", "train.epochs=1", "train.max_steps=2", "train.eval_every=1",
        "data.test_fraction=0.9", "log.progress=false", "log.tensorboard=false"]
RUN = "runs/demo-20261124-120000"   # the README's example run directory

#: README command -> (extra arguments, whether it is slow)
SMALL = {
    "vig-pyg train --config configs/demo.yaml":
        (["--output", RUN] + TINY, False),
    "vig-pyg train --config configs/demo.yaml --set model.conv=gin train.epochs=5":
        (TINY[1:] + ["--output", "gin"], False),     # continues the command's --set
    f"vig-pyg train --resume {RUN}":
        (["--set", "train.epochs=2", "train.max_steps=4"], False),
    f"vig-pyg eval --checkpoint {RUN}/checkpoints/last.pt":
        (["--set", "data.test_fraction=0.9"], False),
    "vig-pyg sweep experiments/aggregators.yaml --jobs 2":
        (["--output", "runs/aggregators", "--set", "train.max_steps=1", "train.epochs=1",
          "data.test_fraction=0.95", "train.eval_every=1"], True),
    "vig-pyg report runs/aggregators": ([], True),
    f"vig-pyg inspect --checkpoint {RUN}/model.pt --output inspect/":
        (["--blocks", "0"], False),
    "vig-pyg inspect --checkpoint mr/model.pt --compare edge/model.pt gin/model.pt --images digits":
        (["--blocks", "0", "--output", "compare/"], True),     # 360 images: a minute
    "vig-pyg export --model vig_ti --onnx vig_ti.onnx": ([], True),
    "vig-pyg export --model pvig_ti --program pvig_ti.pt2": ([], True),
}


def readme_commands() -> list[str]:
    """The ``vig-pyg`` lines of README.md's shell blocks, comments and line breaks removed."""
    text = open(os.path.join(ROOT, "README.md")).read()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("vig-pyg "):
                out.append(" ".join(line.split()))
    return out


def test_every_readme_command_has_a_small_run():
    assert readme_commands() == list(SMALL), (
        "README.md's vig-pyg commands and tests/test_readme_commands.py::SMALL differ: add the "
        "new command's small run to SMALL (or remove the old one)")


@pytest.fixture(scope="module")
def reader_dir(tmp_path_factory):
    """A fresh directory that sees the repository's configs/ and experiments/."""
    here = tmp_path_factory.mktemp("reader")
    for name in ("configs", "experiments"):
        os.symlink(os.path.join(ROOT, name), here / name)
    old = os.getcwd()
    os.chdir(here)
    yield here
    os.chdir(old)


def run(command: str) -> None:
    extra, _ = SMALL[command]
    argv = shlex.split(command)[1:] + extra
    assert main(argv) == 0, f"{command} failed"


def test_training_evaluation_and_inspection_commands(reader_dir):
    for command, (_, slow) in SMALL.items():
        if not slow:
            run(command)
        if command.endswith("model.conv=gin train.epochs=5"):
            assert (reader_dir / "gin" / "model.pt").exists()
    assert (reader_dir / RUN / "summary.json").exists()
    assert (reader_dir / "inspect" / "stats.csv").exists()


@pytest.mark.slow
def test_sweep_report_comparison_and_export_commands(reader_dir):
    # the comparison reads three runs: the README's names, made by the same training command
    for conv in ("mr", "edge", "gin"):
        assert main(["train", "--config", "configs/demo.yaml", "--output", conv,
                     "--set", f"model.conv={conv}"] + TINY[1:]) == 0
    for command, (_, slow) in SMALL.items():
        if slow:
            run(command)
    assert (reader_dir / "compare" / "stats_vs_depth.png").exists()
    assert (reader_dir / "runs" / "aggregators" / "table.md").exists()
    assert (reader_dir / "vig_ti.onnx").stat().st_size > 0
    assert (reader_dir / "pvig_ti.pt2").stat().st_size > 0
