#!/usr/bin/env python3
"""Save MODEL_ID in every format the requested libraries read, then the manifest (`--help`)."""

import sys

from loadbench.cli import save_main

if __name__ == "__main__":
    sys.exit(save_main())
