#!/usr/bin/env python3
"""Save MODEL_ID in every format the requested libraries read, then the manifest.

Configured by environment variables only (see README or loadbench/settings.py).
Exit codes: 0 saved; 1 failed while writing; 2 bad configuration or model id.
"""

import sys

from loadbench.cli import save_main

if __name__ == "__main__":
    sys.exit(save_main())
