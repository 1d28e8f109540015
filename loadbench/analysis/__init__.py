"""Statistics, summary tables, figures and report.html, all from one pandas frame.

In a notebook:

    from loadbench.analysis import load, table
    df = load("results/")     # one row per trial; df.attrs["skipped"] lists files that are not documents
    table(df)                 # one row per library configuration and cache state, every statistic
                              # (of first-in-process trials: df["index_in_process"] == 0)

`loadbench.analysis.frame.frame(docs)` builds the same trial frame from documents already in memory.
The names are imported on first use, so `plot_results.py --help` never waits for pandas.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build", "load", "table"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from loadbench.analysis.frame import load
        return load
    if name in ("build", "table"):
        from loadbench.analysis import summary
        return getattr(summary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
