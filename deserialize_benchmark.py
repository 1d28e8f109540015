#!/usr/bin/env python3
"""Time loading the saved checkpoint with each library; one result document each.

Configured by environment variables only (see README or loadbench/settings.py).
Exit codes: 0 all trials ok; 1 a trial failed (retryable); 2 bad configuration
or input that no retry can fix.
"""

import sys

from loadbench.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
