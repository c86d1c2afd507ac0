"""Graph diagnostics: see the graph a ViG builds and measure what its blocks do.

>>> from vig_pyg.diagnostics import capture, stats_table, inspect_run
>>> result = capture(model, images)               # one BlockGraph per Grapher
>>> rows = stats_table(result.blocks)             # per-block statistics
>>> inspect_run(model, "out/")                    # pictures, stats.csv, summary.txt
"""
from .capture import BlockGraph, Capture, GraphCapture, capture, graphers
from .report import inspect_run, load_for_inspection
from .stats import COLUMNS, block_stats, format_table, stats_table, write_csv

__all__ = ["BlockGraph", "Capture", "GraphCapture", "capture", "graphers", "inspect_run",
           "load_for_inspection", "COLUMNS", "block_stats", "format_table", "stats_table",
           "write_csv"]
