"""Intra-op thread count on the CPU, chosen by measurement (``train.threads=auto``).

On a machine shared with other jobs, two OpenMP threads can be ten times slower than one
while another process holds a core (the threads busy-wait on each other at every barrier),
yet 1.5 times faster than one when the cores are free. ``auto`` starts with one thread, now
and then tries all of them for a step or two, and keeps whichever made steps faster; a step
that suddenly takes much longer than usual triggers a new comparison. Thread counts change
floating-point summation order, so deterministic runs use a fixed count instead.
"""
from __future__ import annotations

import statistics
from collections import deque

import torch

MIN_PERIOD, MAX_PERIOD = 8, 256


class ThreadTuner:
    def __init__(self, high: int, warmup_steps: int = 2):
        self.high = max(int(high), 1)
        self.options = (1, self.high)
        self.recent = {n: deque(maxlen=3) for n in self.options}
        self.current = 1
        self.plan: deque = deque()
        self.period = MIN_PERIOD
        self.since_probe = 0
        self.warmup = warmup_steps
        self.active = self.high > 1
        self._running = self.current
        torch.set_num_threads(self.current)

    @property
    def other(self) -> int:
        return self.high if self.current == 1 else 1

    def _median(self, n: int):
        r = self.recent[n]
        return statistics.median(r) if r else None

    def before_step(self) -> None:
        if not self.active:
            return
        n = self.plan.popleft() if self.plan else self.current
        if n != self._running:
            torch.set_num_threads(n)
            self._running = n

    def after_step(self, seconds: float) -> None:
        """Record one step's compute time and decide the next steps' thread count."""
        if not self.active:
            return
        if self.warmup > 0:  # first steps pay for allocations
            self.warmup -= 1
            self.since_probe = self.period - 2  # measure the current count twice, then probe
            return
        n = self._running
        cur = self._median(self.current)
        probing = n != self.current
        self.recent[n].append(seconds)
        if probing:
            if cur is not None and seconds > 2.0 * cur:  # clearly worse: stop early, wait longer
                self.plan.clear()
                self.period = min(self.period * 2, MAX_PERIOD)
            if not self.plan:
                other = self._median(n)
                if cur is not None and other is not None and other < 0.9 * cur:
                    self.current = n
                    self.period = MIN_PERIOD
                else:
                    self.period = min(self.period * 2, MAX_PERIOD)
                self.since_probe = 0
            return
        self.since_probe += 1
        if cur is not None and seconds > 2.5 * cur and len(self.recent[n]) >= 2:
            # conditions changed (another job started or ended): compare again now
            self.recent[n].clear()
            self.recent[n].append(seconds)
            self.recent[self.other].clear()
            self.plan.extend([self.other, self.other])
        elif self.since_probe >= self.period:
            self.plan.extend([self.other, self.other])

    def describe(self) -> str:
        return f"{self.current} of {self.high}"
