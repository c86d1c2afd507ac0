"""Ablation studies: a study YAML (base config, grid, seeds) -> a resumable sweep of
ordinary training runs -> a report (results.csv, table.md with seed statistics, plots).

``load_study(path)``, ``run_sweep(study, output)``, ``report(output)``; on the command line
``vig-pyg sweep STUDY.yaml`` and ``vig-pyg report DIR``.
"""
from .cli import add_report_parser, add_sweep_parser
from .study import RunSpec, Study, StudyError, load_study

__all__ = ["add_sweep_parser", "add_report_parser", "load_study", "Study", "RunSpec",
           "StudyError", "run_sweep", "report"]


def __getattr__(name):
    if name == "run_sweep":
        from .sweep import run_sweep
        return run_sweep
    if name == "report":
        from .report import report
        return report
    raise AttributeError(name)
