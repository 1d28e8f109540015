"""One rule per kind of number, and the names of ceilings and cache states, for every view.

Why a module of its own: summary.md, summary.csv, the terminal, report.html
and the figures must round a number the same way, or two views of one run
disagree; every formatter writes '-' for a missing value.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

CEILING_TEXT = {"storage_read": "storage read", "page_cache_read": "page-cache read",
                "h2d_pinned": "pinned host-to-device", "h2d_pageable": "pageable host-to-device",
                "s3_get": "GET from object storage"}
STATE_TEXT = {"cold": "cold on this storage", "warm": "warm (checkpoint in the page cache)",
              "partial": "partly cached",
              "object storage, cold": "from object storage, the server's cache cold",
              "object storage, warm": "from object storage, the server's cache warm"}


def missing(v: Any) -> bool:
    """None, NaN, infinity or pandas' NA."""
    return v is None or v is pd.NA or (isinstance(v, float) and not math.isfinite(v))


def fmt_s(v: Any) -> str:
    """Seconds to the millisecond, as every table and figure writes them ('-' when missing)."""
    return "-" if missing(v) else f"{v:.3f}"


def fmt_gbps(v: Any) -> str:
    """GB/s to two decimals, everywhere."""
    return "-" if missing(v) else f"{v:.2f}"


def fmt_pct(v: Any) -> str:
    """A fraction as a whole percentage, everywhere."""
    return "-" if missing(v) else f"{v:.0%}"


def fmt_ratio(v: Any) -> str:
    """A ratio (× reference, TP=N / TP=1) to two decimals."""
    return "-" if missing(v) else f"{v:.2f}"


def fmt_gb(nbytes: Any) -> str:
    """Bytes as GB (10^9): two decimals from 0.1 GB up, three significant digits below."""
    if missing(nbytes):
        return "-"
    gb = float(nbytes) / 1e9
    return f"{gb:.0f}" if gb >= 100 else f"{gb:.2f}" if gb >= 0.1 or gb == 0 else f"{gb:.3g}"


def fmt_count(v: Any) -> str:
    """A whole number ('-' when missing)."""
    return "-" if missing(v) else str(int(v))


def shorten(text: Any, limit: int = 120) -> str:
    """One line of at most `limit` characters, cut with '...'."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."
