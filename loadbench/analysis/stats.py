"""Summaries of raw samples, each statistic with its rule named.

Percentiles use linear interpolation between closest ranks (numpy's
default, "type 7"); the outlier rule is Tukey's fences: samples outside
[Q1 - 1.5 IQR, Q3 + 1.5 IQR] are left out of `tukey_mean`, and
`tukey_removed` says how many were.
"""

from __future__ import annotations

import math
from typing import Sequence

OUTLIER_RULE = "Tukey 1.5xIQR fences"
MIN_RUNS = 5          # fewer than this and a summary is flagged (as pyperf's check does)
MAX_REL_STD = 0.10    # std above 10% of the mean is flagged as unstable


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def tukey(values: Sequence[float]) -> tuple[list[float], int]:
    """(kept samples, how many removed) under Tukey's 1.5xIQR fences."""
    s = sorted(values)
    if len(s) < 4:
        return list(s), 0
    q1, q3 = percentile(s, 25), percentile(s, 75)
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    kept = [v for v in s if low <= v <= high]
    return kept, len(s) - len(kept)


def summarize(values: Sequence[float]) -> dict[str, float | int | str | None]:
    s = sorted(float(v) for v in values)
    n = len(s)
    if n == 0:
        return {"n": 0}
    mean = sum(s) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in s) / (n - 1)) if n > 1 else 0.0
    kept, removed = tukey(s)
    return {
        "n": n, "median": percentile(s, 50), "mean": mean, "std": std,
        "p5": percentile(s, 5), "p95": percentile(s, 95), "min": s[0], "max": s[-1],
        "tukey_mean": sum(kept) / len(kept), "tukey_removed": removed,
        "outlier_rule": OUTLIER_RULE,
    }


def warnings(summary: dict, what: str) -> list[str]:
    """pyperf-style checks: too few runs, too much spread."""
    out = []
    n = summary.get("n", 0)
    if n < MIN_RUNS:
        out.append(f"{what}: only {n} run(s); {MIN_RUNS} or more are needed for a stable median")
    mean = summary.get("mean")
    if n > 1 and mean and summary["std"] > MAX_REL_STD * mean:
        out.append(f"{what}: std is {summary['std'] / mean:.0%} of the mean "
                   f"(> {MAX_REL_STD:.0%}): the results are unstable")
    return out
