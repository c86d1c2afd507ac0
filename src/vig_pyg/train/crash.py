"""Named points where a test can kill the process, to prove that a run survives a kill
(SIGKILL: no cleanup, no ``finally``) at the awkward moments.

Off unless the environment sets ``VIG_PYG_CRASH_AT=NAME@N``: the N-th time the process
passes the point NAME, it kills itself. The points: ``checkpoint`` (a checkpoint was just
written), ``epoch_row`` (an epoch's row is in metrics.csv, its checkpoint not yet),
``eval`` (inside an evaluation, after its first batch), ``summary`` (model.pt written,
summary.json not yet).
"""
from __future__ import annotations

import os
import signal

_passed: dict = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("VIG_PYG_CRASH_AT")
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _passed[name] = _passed.get(name, 0) + 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
