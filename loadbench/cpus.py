"""The CPUs a process may keep busy: a ground-floor helper (no loadbench imports), used by the
machine's metadata and by the reference's default thread count."""

from __future__ import annotations

import os


def usable(cgroup: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs this process may keep busy: its affinity mask, bounded by a cgroup v2 quota (a
    pod's CPU limit) where one is set. os.cpu_count() is the node's, whatever the pod's limit."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open(cgroup) as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def parse_list(text: str) -> set[int]:
    """The kernel's list format ("0-3,8,10-11", as in /sys/devices/system/node/has_cpu)."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            out.update(range(int(first), int(last or first) + 1))
    return out
