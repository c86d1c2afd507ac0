"""``vig-pyg train`` and ``vig-pyg eval`` (argparse sub-commands).

The lead's ``vig_pyg.cli`` adds them with :func:`add_train_parser` / :func:`add_eval_parser`;
each sets ``func`` to a callable taking the parsed namespace and returning an exit code.
``python -m vig_pyg.train {train,eval} ...`` runs them without the top-level CLI.

Input problems (missing dataset, wrong or truncated checkpoint, unknown model or key,
unusable image size) print one ``vig-pyg <cmd>: error: ...`` line and exit with code 2,
before a run directory is created.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import VigPygError
from .config import describe_keys

TRAIN_HELP = "train a ViG on digits (built in), CIFAR-10/100 or an ImageNet-style folder"
EVAL_HELP = "evaluate a checkpoint (ours or the official release) on a test split"

TRAIN_EPILOG = """\
configuration:
  Settings come from the defaults, then --config FILE (YAML), then each --set KEY=VALUE.
  Keys are SECTION.KEY with sections model, data, aug, optim, sched, ema, train, log;
  values are YAML ([0.5, 0.5, 0.5], null, true, 1e-3). An unknown key is an error that
  lists the valid ones. See every key and its default with --print-config.

examples:
  vig-pyg train --config configs/demo.yaml                 # small ViG on digits, ~2 min on CPU
  vig-pyg train --config configs/demo.yaml --set train.epochs=5 optim.lr=2e-3
  vig-pyg train --config configs/cifar10.yaml --set data.root=~/data/cifar data.download=true
  vig-pyg train --resume runs/demo-20250101-120000         # continue a stopped run
  torchrun --nproc_per_node 4 -m vig_pyg train --config configs/imagenet.yaml --set data.root=/data/imagenet

outputs (in the run directory, default runs/NAME-TIMESTAMP or --output DIR):
  config.yaml, metrics.csv (one row per epoch), tb/ (TensorBoard), summary.json (final
  top-1/top-5/loss/img/s/wall time/config), checkpoints/last.pt (resumable).
"""

EVAL_EPILOG = """\
examples:
  vig-pyg eval --checkpoint runs/demo-20250101-120000/checkpoints/last.pt
  vig-pyg eval --checkpoint vig_ti_74.5.pth --config configs/imagenet.yaml --set data.root=/data/imagenet model.name=vig_ti

A vig-pyg training checkpoint carries its config (model, dataset, image size); --config and
--set replace or adjust it. Other weight files (official release or model-only) need the
model and dataset from --config / --set.
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config (e.g. configs/demo.yaml)")
    p.add_argument("-s", "--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend",
                   default=[], help="override config keys, e.g. --set optim.lr=1e-3 train.epochs=10 "
                   "(repeatable)")


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help=TRAIN_HELP, description="Train a ViG on digits (built in), CIFAR-10/100 or an ImageNet-style folder.",
                              epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("-o", "--output", metavar="DIR",
                   help="run directory (default: LOG.OUTPUT_DIR/NAME-TIMESTAMP); must be new or empty")
    p.add_argument("--resume", metavar="RUN_OR_CKPT",
                   help="continue a run from its directory or a checkpoint file; restores model, "
                   "optimizer, schedule, EMA, scaler, RNG and data position. Without --config the "
                   "saved config is used (--set still applies, e.g. train.epochs=N)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config (every key) and exit")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (same as --set train.compile=true)")
    p.set_defaults(func=train_command)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help=EVAL_HELP, description="Evaluate a checkpoint (ours or the official release) on a test split.",
                              epilog=EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="training checkpoint (RUN/checkpoints/last.pt or the run directory) or a "
                   "weights file (official release or model-only)")
    _add_common(p)
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="which weights of a training checkpoint (auto: EMA if present)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=eval_command)
    return p


def _fail(cmd: str, exc: BaseException) -> int:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"vig-pyg {cmd}: error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def train_command(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + (["train.compile=true"] if args.compile else [])
    try:
        if args.print_config:
            from .training import resolve_config

            cfg, _, _ = resolve_config(args.config, overrides, args.resume)
            print(cfg.to_yaml(), end="")
            return 0
        from .training import fit

        fit(args.config, overrides, output=args.output, resume=args.resume)
        return 0
    except VigPygError as exc:
        return _fail("train", exc)
    except KeyboardInterrupt:
        print("vig-pyg train: interrupted (resume with --resume RUN_DIR)", file=sys.stderr)
        raise SystemExit(130)


def eval_command(args: argparse.Namespace) -> int:
    try:
        from .evaluate import run_eval

        run_eval(args.checkpoint, args.config, args.overrides, weights=args.weights,
                 json_path=args.json, progress=not args.no_progress)
        return 0
    except VigPygError as exc:
        return _fail("eval", exc)
    except KeyboardInterrupt:
        raise SystemExit(130)


def main(argv=None) -> int:
    """``python -m vig_pyg.train {train,eval} ...`` (the same sub-commands as ``vig-pyg``)."""
    parser = argparse.ArgumentParser(prog="vig-pyg", description="ViG training and evaluation")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval}")
    add_train_parser(sub)
    add_eval_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


__all__ = ["add_train_parser", "add_eval_parser", "train_command", "eval_command", "main",
           "describe_keys"]
