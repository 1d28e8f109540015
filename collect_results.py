#!/usr/bin/env python3
"""Bring result documents from a cluster to a local folder.

    python collect_results.py --from-pvc loadbench-nvme --image REGISTRY/loadbench:TAG --out results/
    python collect_results.py --from-logs -l app.kubernetes.io/name=loadbench --out results/
"""

import sys

from loadbench.cluster.cli import main

if __name__ == "__main__":
    sys.exit(main())
