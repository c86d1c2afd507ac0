"""Study files: grid x seeds expansion, run names, and the checks that stop a bad study
before anything starts (one line, exit 2, no directory)."""
import os

import pytest

from vig_pyg.cli import main
from vig_pyg.experiments import load_study
from vig_pyg.experiments.study import StudyError

from experiments_helpers import TINY, write_study


def test_grid_times_seeds_in_order_with_names_and_overrides(tmp_path):
    path = write_study(tmp_path, {"model.conv": ["mr", "pyg:GATv2Conv"], "model.k": [3, 5]},
                       seeds=[0, 7], reference={"model.conv": "mr", "model.k": 3},
                       extra_set={"train.epochs": 2})
    study = load_study(path)
    runs = study.runs()
    # product of the axes (last axis fastest), then seeds: written out by hand
    expected = [(c, k, s) for c in ["mr", "pyg:GATv2Conv"] for k in [3, 5] for s in [0, 7]]
    assert [(r.values["model.conv"], r.values["model.k"], r.seed) for r in runs] == expected
    assert runs[0].name == "conv-mr__k-3__seed-0"
    assert runs[-1].name == "conv-pyg-GATv2Conv__k-5__seed-7"
    assert len({r.name for r in runs}) == 8
    assert runs[-1].overrides == ["train.epochs=2", "model.conv=pyg:GATv2Conv", "model.k=5",
                                  "train.seed=7"]
    assert study.base == str(tmp_path / "base.yaml")


def test_list_values_and_clashing_axis_names(tmp_path):
    path = write_study(tmp_path, {"model.stochastic": [False, True], "train.seed": [1]},
                       seeds=[0])
    # an axis named like another's last part keeps its full name: here none clash
    study = load_study(path)
    assert [r.name for r in study.runs()] == ["stochastic-false__seed-1__seed-0",
                                             "stochastic-true__seed-1__seed-0"]
    assert study.runs()[1].overrides[:2] == ["model.stochastic=true", "train.seed=1"]


def test_set_from_the_command_line_replaces_the_study_set(tmp_path):
    path = write_study(tmp_path, {"model.k": [3]}, extra_set={"train.epochs": 2})
    study = load_study(path, ["train.epochs=5", "sweep.partition=gpu", "sweep.gpus=1"])
    assert study.runs()[0].overrides == ["train.epochs=5", "model.k=3", "train.seed=0"]
    assert study.sweep == {"partition": "gpu", "gpus": 1}


@pytest.mark.parametrize("grid, extra, message", [
    ({"model.conv": ["mr", "nosuchconv"]}, None, "nosuchconv"),
    ({"model.kk": [3]}, None, "unknown override(s) ['kk']"),
    ({"train.epochz": [3]}, None, "train.epochz"),
    ({"model.k": [3]}, {"data.datset": "digits"}, "data.datset"),
    ({}, None, "grid is empty"),
    ({"model.k": []}, None, "non-empty list"),
])
def test_bad_study_is_one_line_exit_2_and_starts_nothing(tmp_path, capsys, grid, extra, message):
    path = write_study(tmp_path, grid, extra_set=extra)
    out = tmp_path / "out"
    assert main(["sweep", path, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vig-pyg sweep: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_missing_base_and_missing_study(tmp_path, capsys):
    path = write_study(tmp_path, {"model.k": [3]})
    os.remove(tmp_path / "base.yaml")
    assert main(["sweep", path, "--output", str(tmp_path / "o")]) == 2
    assert "base config 'base.yaml' does not exist" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_reference_must_be_a_grid_point(tmp_path, capsys):
    path = write_study(tmp_path, {"model.k": [3, 4]}, reference={"model.k": 9})
    with pytest.raises(StudyError, match="reference model.k=9"):
        load_study(path)


def test_output_holding_another_study_or_other_files(tmp_path, capsys):
    path = write_study(tmp_path, {"model.k": [3]})
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.yaml").write_text("name: aggregators\n")
    assert main(["sweep", path, "--output", str(other)]) == 2
    assert "holds study 'aggregators'" in capsys.readouterr().err
    assert sorted(os.listdir(other)) == ["study.yaml"]
    stuff = tmp_path / "stuff"
    stuff.mkdir()
    (stuff / "notes.txt").write_text("x")
    assert main(["sweep", path, "--output", str(stuff)]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_slurm_without_slurm(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    path = write_study(tmp_path, {"model.k": [3]})
    assert main(["sweep", path, "--executor", "slurm", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "Slurm is not available here" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_dry_run_lists_runs_and_writes_nothing(tmp_path, capsys):
    path = write_study(tmp_path, {"model.k": [3, 4]}, seeds=[0, 1])
    out = tmp_path / "o"
    assert main(["sweep", path, "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "4 runs (2 configurations x 2 seeds)" in text
    assert text.count("  new ") == 4 and "k-4__seed-1" in text
    assert not out.exists()


def test_shipped_studies_parse(tmp_path):
    """The studies whose options exist on this branch validate fully; every study file's
    shape (keys, grid, seeds, reference among the grid values) is checked."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    for name in ("aggregators", "neighbours"):
        study = load_study(os.path.join(root, name + ".yaml"))
        assert study.reference and len(study.runs()) == len(study.configurations()) * 3
    assert [r.values["model.conv"] for r in load_study(
        os.path.join(root, "aggregators.yaml")).runs()[::3]] == [
        "mr", "edge", "sage", "gin", "pyg:GATv2Conv", "pyg:TransformerConv", "pyg:GENConv",
        "pyg:GINConv", "pyg:EdgeConv"]


def test_include_adds_configurations_beyond_the_product(tmp_path):
    import yaml

    path = write_study(tmp_path, {"model.conv": ["mr", "edge"], "model.k": [3, 5]}, seeds=[0])
    raw = yaml.safe_load(open(path))
    raw["include"] = [{"model.conv": "gin", "model.k": 4},
                      {"model.conv": "mr", "model.k": 3}]    # already a grid point: once
    open(path, "w").write(yaml.safe_dump(raw))
    study = load_study(path)
    expected = [("mr", 3), ("mr", 5), ("edge", 3), ("edge", 5), ("gin", 4)]
    assert [(r.values["model.conv"], r.values["model.k"]) for r in study.runs()] == expected
    raw["include"] = [{"model.conv": "gin"}]                 # an axis missing
    open(path, "w").write(yaml.safe_dump(raw))
    with pytest.raises(StudyError, match="one value for every grid axis"):
        load_study(path)


def test_only_and_seeds_narrow_the_study_keeping_run_names(tmp_path):
    import yaml

    path = write_study(tmp_path, {"model.conv": ["mr", "edge", "gin"], "model.k": [3, 5]},
                       seeds=[0, 1], reference={"model.conv": "mr", "model.k": 3})
    raw = yaml.safe_load(open(path))
    raw["include"] = [{"model.conv": "sage", "model.k": 4}, {"model.conv": "edge", "model.k": 4}]
    open(path, "w").write(yaml.safe_dump(raw))
    whole = {r.name for r in load_study(path).runs()}
    study = load_study(path, seeds=[0, 1, 2], only=["model.conv=mr", "model.conv=edge"])
    # rule: keep a configuration when each --only axis holds one of its listed values
    expected = [(c, k) for c in ["mr", "edge"] for k in [3, 5]] + [("edge", 4)]
    assert [(v["model.conv"], v["model.k"]) for v in study.configurations()] == expected
    assert study.seeds == [0, 1, 2] and len(study.runs()) == 15
    assert {r.name for r in study.runs() if r.seed < 2} <= whole  # same directories
    for only, message in ((["model.conv=edge"], "leaves out the reference"),
                          (["model.conv=gat"], "no configuration of the study has it"),
                          (["model.depth=2"], "one of the grid's axes")):
        with pytest.raises(StudyError, match=message):
            load_study(path, only=only)
    with pytest.raises(StudyError, match="distinct integers"):
        load_study(path, seeds=[1, 1])


def test_sweep_only_on_the_command_line(tmp_path, capsys):
    path = write_study(tmp_path, {"model.conv": ["mr", "edge"]}, seeds=[0],
                       reference={"model.conv": "mr"})
    code = main(["sweep", path, "--only", "model.conv=mr", "--seeds", "3", "4", "--dry-run",
                 "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "conv-mr__seed-3" in out and "conv-mr__seed-4" in out
    assert "edge" not in out
