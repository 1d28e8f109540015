"""From the trial frame to groups, summary rows and the report's text: one import for all of it.

Why one name over several modules: a notebook, plot_results.py and the tests
ask `summary` for groups, rows, views and renderings, while each concern
lives in its own module, none of them long:

- groups.py: groups (model, device, measured cache state) and their summary
  rows, from first-in-process trials; which rows count where.
- views.py: concurrent pods, warnings, runs kept apart, reclassified trials,
  which loader to pick.
- apart.py: what the tables leave out, reported apart: repeats in a warm
  process, and documents that measured nothing (errors).
- pods.py: a pod's time beyond its loads, per document and per pod.
- tp.py: bytes read per rank, and TP scaling.
- blocks.py: the cells of a row, summary.csv, the blocks summary.md and
  report.html render alike, and the terminal's tables.
- fmt.py: one rule per kind of number.

Every number is computed from the raw trials in `frame.frame()`, once;
summary.md, summary.csv, the terminal, report.html and the figures only
format what `build()` and the views return. Error documents are counted and
listed, never dropped silently.
"""

from __future__ import annotations

from loadbench.analysis.apart import error_table, repeat_tables
from loadbench.analysis.blocks import (
    CSV_COLUMNS,
    INTRO,
    NEW_COLUMNS,
    OLD_COLUMNS,
    OPTIONAL_COLUMNS,
    TABLE_COLUMNS,
    Block,
    blocks,
    cells,
    csv_text,
    markdown,
    terminal,
)
from loadbench.analysis.fmt import CEILING_TEXT, STATE_TEXT, fmt_gb, fmt_gbps, fmt_pct, fmt_ratio, fmt_s
from loadbench.analysis.groups import Group, build, error_only, first_in_process, headline, repeats, table
from loadbench.analysis.pods import Overhead, pod_overhead, pod_times
from loadbench.analysis.tp import rank_lines, scaling
from loadbench.analysis.views import episodes, kept_apart, picks, reclassified, warning_lines

__all__ = [
    "CEILING_TEXT", "CSV_COLUMNS", "INTRO", "NEW_COLUMNS", "OLD_COLUMNS", "OPTIONAL_COLUMNS", "STATE_TEXT",
    "TABLE_COLUMNS", "Block", "Group", "Overhead", "blocks", "build", "cells", "csv_text", "episodes",
    "error_only", "error_table", "first_in_process", "fmt_gb", "fmt_gbps", "fmt_pct", "fmt_ratio",
    "fmt_s", "headline", "kept_apart", "markdown", "picks", "pod_overhead", "pod_times",
    "rank_lines", "reclassified", "repeat_tables", "repeats", "scaling", "table", "terminal",
    "warning_lines",
]
