"""``vig-pyg detect {train,eval,predict}``.

Input problems print one ``vig-pyg detect <cmd>: error: ...`` line and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import VigPygError

EPILOG = """\
examples:
  vig-pyg detect train --config configs/detect_demo.yaml            # synthetic digits, CPU
  vig-pyg detect train --config configs/coco_detect.yaml --set data.root=~/data/coco \\
      model.checkpoint=pvig_s_82.1.pth                              # the paper's COCO 1x
  vig-pyg detect train --resume runs/detect_demo-20261125-100000    # continue a run
  vig-pyg detect eval --checkpoint runs/detect_demo-20261125-100000
  vig-pyg detect predict --checkpoint runs/detect_demo-20261125-100000 --images img.png --output out/

Settings: defaults, then --config FILE, then --set SECTION.KEY=VALUE (sections model, data,
optim, sched, train, log; --print-config lists every key). A run writes config.yaml,
metrics.csv, tb/, checkpoints/last.pt and summary.json to its directory.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="YAML config")
    p.add_argument("-s", "--set", dest="overrides", metavar="KEY=VALUE", nargs="+",
                   action="extend", default=[], help="override config keys (repeatable)")


def add_detect_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("detect", help="train, evaluate and run ViG object detectors",
                              description="Pyramid ViG + FPN under torchvision's RetinaNet, "
                              "Faster R-CNN and Mask R-CNN.", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="detect_command", metavar="{train,eval,predict}")
    sub.required = True
    t = sub.add_parser("train", help="train a detector (COCO folders or the built-in set)")
    _common(t)
    t.add_argument("-o", "--output", metavar="DIR", help="run directory (new or empty)")
    t.add_argument("--resume", metavar="RUN_OR_CKPT", help="continue a run exactly")
    t.add_argument("--print-config", action="store_true", help="print every key and exit")
    t.set_defaults(func=_train)
    e = sub.add_parser("eval", help="COCO box (and mask) AP of a detection checkpoint")
    e.add_argument("--checkpoint", required=True, metavar="PATH", help="RUN or RUN/checkpoints/last.pt")
    _common(e)
    e.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_eval)
    r = sub.add_parser("predict", help="draw a checkpoint's detections on images (PNG)")
    r.add_argument("--checkpoint", required=True, metavar="PATH")
    r.add_argument("--images", required=True, nargs="+", metavar="PATH", help="files or folders")
    r.add_argument("--output", required=True, metavar="DIR")
    r.add_argument("--score", type=float, default=0.5, help="score threshold (default 0.5)")
    r.add_argument("-s", "--set", dest="overrides", metavar="KEY=VALUE", nargs="+",
                   action="extend", default=[])
    r.set_defaults(func=_predict)
    return p


def _guard(name: str, fn) -> int:
    try:
        fn()
        return 0
    except VigPygError as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"vig-pyg detect {name}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        print(f"vig-pyg detect {name}: interrupted (resume with --resume RUN)", file=sys.stderr)
        raise SystemExit(130)


def _train(args) -> int:
    def go():
        from .training import fit, resolve_config
        from .state import load_resume

        if args.print_config:
            payload = load_resume(args.resume)[1] if args.resume else None
            print(resolve_config(args.config, args.overrides, payload).to_yaml(), end="")
            return
        fit(args.config, args.overrides, output=args.output, resume=args.resume)
    return _guard("train", go)


def _eval(args) -> int:
    from .predict import run_eval

    return _guard("eval", lambda: run_eval(args.checkpoint, args.config, args.overrides,
                                           args.json, not args.no_progress))


def _predict(args) -> int:
    from .predict import run_predict

    return _guard("predict", lambda: run_predict(args.checkpoint, args.images, args.output,
                                                 args.score, args.overrides))


__all__ = ["add_detect_parser"]
