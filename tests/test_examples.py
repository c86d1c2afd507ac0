"""The examples run as scripts, as a user would run them."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, timeout: float = 180) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_custom_conv_example():
    out = run_example("custom_conv.py")
    assert "meanrel on 72 nodes: (2, 16, 6, 6) -> (2, 32, 6, 6)" in out
    losses = [float(v) for v in re.findall(r"step \d+: loss ([0-9.]+)", out)]
    assert len(losses) == 8 and losses[-1] < losses[0]


def test_draw_graph_builders_example_draws_every_panel(tmp_path):
    out = tmp_path / "builders.png"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "draw_graph_builders.py"), "--out",
                           str(out)], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    from vig_pyg.graph import list_graph_builders

    sys.path.insert(0, str(EXAMPLES))
    try:
        import draw_graph_builders
    finally:
        sys.path.remove(str(EXAMPLES))
    drawn = {name for name, _, _ in draw_graph_builders.PANELS}
    # every builder has a panel, except static_knn (knn on the stage input: no panel of its own)
    assert drawn == set(list_graph_builders()) - {"static_knn"}
    assert out.stat().st_size > 10_000
