"""``vig-pyg sweep`` and ``vig-pyg report`` (argparse sub-commands)."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import VigPygError

SWEEP_EPILOG = """\
examples:
  vig-pyg sweep experiments/aggregators.yaml                      # all runs, then the report
  vig-pyg sweep experiments/aggregators.yaml --dry-run            # list the runs and their state
  vig-pyg sweep experiments/neighbours.yaml --jobs 2 --set train.epochs=5
  vig-pyg sweep experiments/graphs.yaml --only model.conv=mr --seeds 0 1 2   # a slice
  vig-pyg sweep experiments/aggregators.yaml --executor slurm \\
      --set sweep.partition=gpu sweep.gpus=1 sweep.time=240 data.dataset=cifar100 \\
            data.root=/data/cifar data.test_fraction=0.2

Running the same command again continues the sweep: finished runs are skipped, interrupted
ones resume from checkpoints/last.pt, failed ones are tried again (twice at most).
--set KEY=VALUE: training overrides for every run (they replace the study's `set`), or
executor settings sweep.partition, sweep.time (minutes), sweep.gpus, sweep.cpus,
sweep.mem_gb, sweep.account, sweep.qos, sweep.constraint.
"""


def _fail(cmd: str, exc: Exception) -> int:
    print(f"vig-pyg {cmd}: error: {exc}", file=sys.stderr)
    return 2


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="run an ablation study (grid x seeds), resumably",
                              description="Run every run of a study YAML (grid x seeds) as its "
                              "own run directory, then write the report.", epilog=SWEEP_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", metavar="STUDY.yaml")
    p.add_argument("-s", "--set", dest="sets", metavar="KEY=VALUE", nargs="+", action="extend",
                   default=[], help="overrides for every run, or sweep.* executor settings")
    p.add_argument("-o", "--output", metavar="DIR", help="sweep directory (default runs/NAME)")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local"])
    p.add_argument("-j", "--jobs", type=int, default=1,
                   help="runs at once (local: the cores are divided among them)")
    p.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="these seeds instead of the study's")
    p.add_argument("--only", metavar="AXIS=VALUE", nargs="+", action="extend", default=[],
                   help="keep the configurations with these grid values (the reference must "
                        "stay), e.g. --only model.conv=mr")
    p.add_argument("--dry-run", action="store_true", help="list the runs; train nothing")
    p.set_defaults(func=sweep_command)
    return p


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="tables and plots of a sweep directory",
                              description="Write results.csv, table.md and PNG plots of a sweep.")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(func=report_command)
    return p


def sweep_command(args) -> int:
    from .report import report
    from .study import StudyError, load_study
    from .sweep import check_output, describe_plan, run_sweep
    from .executors import check_executor

    try:
        if args.jobs < 1:
            raise StudyError(f"--jobs must be at least 1, got {args.jobs}")
        study = load_study(args.study, args.sets, args.seeds, args.only)
        output = args.output or os.path.join("runs", study.name)
        check_executor(args.executor)
        check_output(study, output)
        if args.dry_run:
            print(describe_plan(study, output))
            return 0
        status = run_sweep(study, output, args.executor, args.jobs)
        result = report(output)
    except VigPygError as exc:
        return _fail("sweep", exc)
    failed = sorted(n for n, s in status.items() if s.get("state") != "done")
    print(result["header"] + "\n\n" + result["table"])
    print(f"sweep {study.name}: {len(status) - len(failed)} done, {len(failed)} failed -> {output}")
    for name in failed:
        print(f"  failed {name}: {status[name].get('error')}")
    return 1 if failed else 0


def report_command(args) -> int:
    from .report import report

    try:
        result = report(args.directory, plots=not args.no_plots)
    except VigPygError as exc:
        return _fail("report", exc)
    print(result["header"] + "\n\n" + result["table"])
    return 0
