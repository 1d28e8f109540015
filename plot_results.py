#!/usr/bin/env python3
"""Turn a folder of result documents into summary.md, summary.csv, report.html and figures.

    python plot_results.py RESULTS_DIR [--out DIR] [--format png,svg] [--title TEXT] [--no-plots]

`--help` says more (exit codes, examples, the notebook API); the work is in loadbench/analysis.
"""

import sys

from loadbench.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
