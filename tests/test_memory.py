"""vig_pyg.memory: freed memory stays in the process (checked on /proc/self/statm)."""
import subprocess
import sys

import pytest

from vig_pyg import cli, memory

CHILD = """
import os, sys, torch
from vig_pyg.memory import keep_freed_memory
page = os.sysconf("SC_PAGE_SIZE")
def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page / 2 ** 20
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
before = rss_mb()
t = torch.ones(16 * 2 ** 20)  # 64 MiB, every page touched
del t
print(applied, rss_mb() - before)
"""


def _child(mode: str):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], check=True, capture_output=True,
                         text=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or memory._libc() is None,
                    reason="glibc's mallopt (Linux) is what keep_freed_memory sets")
def test_freed_tensor_stays_mapped_only_when_kept():
    applied, kept = _child("keep")
    assert applied == "True"
    assert kept > 60  # the 64 MiB stay resident for the next tensor
    _, default = _child("default")
    assert default < 8  # glibc's default: a block that large is unmapped on free


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(memory, "_libc", lambda: None)
    assert memory.keep_freed_memory() is False


@pytest.mark.parametrize("env,expected", [(None, 0), ("0", 0), ("1", 1)])
def test_command_line_keeps_memory_only_when_asked(monkeypatch, env, expected):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    if env is None:
        monkeypatch.delenv("VIG_PYG_KEEP_MEMORY", raising=False)
    else:
        monkeypatch.setenv("VIG_PYG_KEEP_MEMORY", env)
    assert cli.main(["graph", "--images", "1", "--size", "4", "--k", "2"]) == 0
    assert len(calls) == expected
