"""Summaries of raw samples, each statistic with its rule named.

Why a module of its own: every table, figure and notebook must compute a
median the same way, or two views of one run disagree. Percentiles are
numpy's default, linear interpolation between closest ranks ("type 7"); the
outlier rule is Tukey's fences: samples outside [Q1 - 1.5 IQR, Q3 + 1.5 IQR]
are left out of `tukey_mean`, and `tukey_removed` says how many were. Values
that are not finite numbers are dropped before anything is computed, so a
hostile document can never turn a summary into NaN or a traceback.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

OUTLIER_RULE = "Tukey 1.5xIQR fences"
MIN_RUNS = 5          # fewer than this and a summary is flagged (as pyperf's check does)
MAX_REL_STD = 0.10    # std above 10% of the mean is flagged as unstable
MIN_FOR_FENCES = 4    # below this, quartiles say nothing: no sample is removed


def finite(values: Iterable[Any]) -> np.ndarray:
    """The finite real numbers among `values`, as floats (booleans and text are not numbers)."""
    out = []
    for v in values:
        if isinstance(v, bool) or v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError, OverflowError):
            continue
        if np.isfinite(f):
            out.append(f)
    return np.asarray(out, dtype=float)


def tukey(values: Iterable[Any]) -> tuple[list[float], int]:
    """(kept samples, sorted; how many removed) under Tukey's 1.5xIQR fences."""
    a = np.sort(finite(values))
    if len(a) < MIN_FOR_FENCES:
        return a.tolist(), 0
    q1, q3 = np.percentile(a, [25, 75])
    low, high = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
    kept = a[(a >= low) & (a <= high)]
    return kept.tolist(), int(len(a) - len(kept))


def summarize(values: Iterable[Any]) -> dict[str, Any]:
    """n, median, mean, std (n-1), p5, p95, min, max and the fenced mean of the samples."""
    a = finite(values)
    n = len(a)
    if n == 0:
        return {"n": 0, "outlier_rule": OUTLIER_RULE}
    kept, removed = tukey(a)
    p5, p50, p95 = np.percentile(a, [5, 50, 95])
    return {
        "n": n, "median": float(p50), "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if n > 1 else 0.0,
        "p5": float(p5), "p95": float(p95), "min": float(a.min()), "max": float(a.max()),
        "tukey_mean": float(np.mean(kept)), "tukey_removed": removed,
        "outlier_rule": OUTLIER_RULE,
    }


def median(values: Iterable[Any]) -> float | None:
    """The median of the finite samples, or None when there are none."""
    a = finite(values)
    return float(np.median(a)) if len(a) else None


def too_few(summary: dict[str, Any]) -> bool:
    """Fewer runs than a stable median needs."""
    return int(summary.get("n", 0)) < MIN_RUNS


def unstable(summary: dict[str, Any]) -> float | None:
    """std / mean when it is above MAX_REL_STD, else None."""
    n, mean = summary.get("n", 0), summary.get("mean")
    if n > 1 and mean and summary["std"] > MAX_REL_STD * mean:
        return float(summary["std"] / mean)
    return None


def warnings(summary: dict[str, Any], what: str) -> list[str]:
    """pyperf-style checks, so a reader is told when a median is not to be trusted:
    too few runs, or too much spread."""
    out = []
    if too_few(summary):
        out.append(f"{what}: only {summary.get('n', 0)} run(s); {MIN_RUNS} or more are needed for a "
                   "stable median")
    rel = unstable(summary)
    if rel is not None:
        out.append(f"{what}: std is {rel:.0%} of the mean (> {MAX_REL_STD:.0%}): the results are unstable")
    return out
