#!/usr/bin/env python3
"""Turn a folder of result documents into figures, summary.md and summary.csv.

    python plot_results.py RESULTS_DIR [--out DIR] [--format png,svg] [--title TEXT]
"""

import sys

from loadbench.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
