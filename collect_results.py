#!/usr/bin/env python3
"""Bring result documents from a cluster to a local folder.

    python collect_results.py --from-pvc loadbench-nvme --image REGISTRY/loadbench:TAG --out results/
    python collect_results.py --from-logs -l app.kubernetes.io/name=loadbench --out results/

What pods print is treated as untrusted: nothing is written outside --out,
and every malformed line, file or pod is reported and skipped.
"""

import sys

from loadbench.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
