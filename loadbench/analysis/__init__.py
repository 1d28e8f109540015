"""Statistics, summary tables, figures and report.html, all from one pandas frame.

In a notebook:

    from loadbench.analysis import load, table
    df = load("results/")     # one row per trial; df.attrs["skipped"] lists files that are not documents
    table(df)                 # one row per library configuration and cache state, every statistic

`loadbench.analysis.frame.frame(docs)` builds the same trial frame from documents already in memory.
"""

from loadbench.analysis.frame import load
from loadbench.analysis.summary import build, table

__all__ = ["build", "load", "table"]
