#!/usr/bin/env python3
"""Time loading the saved checkpoint with each library; one result document each (`--help`)."""

import sys

from loadbench.cli import bench_main

if __name__ == "__main__":
    sys.exit(bench_main())
