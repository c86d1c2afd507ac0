"""`vig-pyg graph`: its flags, and a report of the digits' kNN graph to its end."""
import re

import pytest

from cli_helpers import run_cli
from vig_pyg.cli import build_parser

pytest.importorskip("sklearn")


def test_flags_and_their_defaults():
    args = build_parser().parse_args(["graph"])
    assert (args.images, args.size, args.k, args.dilation, args.reduce_ratio) == (16, 14, 9, 1, 1)
    args = build_parser().parse_args(["graph", "--images", "2", "--size", "6", "--k", "3",
                                      "--dilation", "2", "--reduce-ratio", "3"])
    assert (args.images, args.size, args.k, args.dilation, args.reduce_ratio) == (2, 6, 3, 2, 3)


@pytest.mark.parametrize("reduce_ratio", [1, 2])
def test_report_runs_to_its_end(capsys, reduce_ratio):
    pytest.importorskip("torch_cluster")
    code, out, err = run_cli(["graph", "--images", "3", "--size", "6", "--k", "4",
                              "--dilation", "2", "--reduce-ratio", str(reduce_ratio)], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("patch graph: 3 digit images, 6x6 patches of 4x4 pixels, k=4, "
                        f"dilation=2, reduce ratio={reduce_ratio}")
    assert "nodes 108, edges 432, " in lines[1]             # 3 images x 36 nodes x 4 edges
    low, high = map(int, re.search(r"min/max (\d+)/(\d+)", lines[1]).groups())
    keys = 3 * (6 // reduce_ratio) ** 2
    assert low <= 432 / keys <= high                        # the mean times chosen
    assert lines[2] == "  edges crossing images: 0"
    assert lines[3].startswith("  self-loops: ")
    if reduce_ratio == 1:  # each node is its own nearest candidate, rank 0 of 0, 2, 4, 6
        assert lines[3] == "  self-loops: 25.0% of edges"
    assert lines[4].startswith("  neighbour distance on the grid: mean ")
    assert lines[5].startswith("  dense and cluster backends agree on ")
    assert lines[6].startswith("  time per call: dense ") and len(lines) == 7
