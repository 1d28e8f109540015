"""Tensor parallel in the report: bytes each rank read, and how time scales with TP_SIZE.

Why: the question users ask most about loaders under tensor parallelism is
whether every rank reads the whole checkpoint. A TP trial's rank records
carry the storage bytes each rank read (/proc/self/io) and its share of the
weights (`bytes`), so the report says "rank r read X GB of storage for a Y GB
share". Where one label was run at TP_SIZE 1 and N > 1 in one group (model,
device, cache state), the scaling table divides the TP=N median by the TP=1
median, first-in-process trials only, as every headline number. Both views
appear only when such documents are there.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from loadbench.analysis import stats
from loadbench.analysis.fmt import fmt_gb, fmt_ratio, fmt_s
from loadbench.analysis.groups import Group

SCALING_HEADER = ["group", "library", "TP", "TP=1 median s", "TP=1 n", "TP=N median s", "TP=N n",
                  "TP=N / TP=1", "read GB, TP=1 (storage + page cache)",
                  "read per rank GB, TP=N (storage + page cache)", "share per rank GB, TP=N"]


def _ranks(part: pd.DataFrame) -> list[dict[str, Any]]:
    return [r for ranks in part["ranks"] if isinstance(ranks, tuple) for r in ranks]


def _read(storage: float | None, cached: float | None) -> str:
    """'storage + page cache' in GB; '-' when neither was recorded."""
    if storage is None and cached is None:
        return "-"
    return f"{fmt_gb(storage)} + {fmt_gb(cached)}"


def rank_lines(g: Group) -> list[str]:
    """Per row whose TP trials recorded storage bytes per rank: 'rank r read X GB of storage
    for a Y GB share', medians over the row's verified first-in-process loads."""
    lines = []
    for row, part in g.ok().groupby("row", sort=True):
        records = _ranks(part)
        if not any(stats.finite([r.get("storage_read_bytes")]).size for r in records):
            continue
        said = []
        for rank in sorted({r["rank"] for r in records}):
            mine = [r for r in records if r["rank"] == rank]
            read = stats.median(r.get("storage_read_bytes") for r in mine)
            share = stats.median(r.get("bytes") for r in mine)
            cached = stats.median(r.get("cache_read_bytes") for r in mine)
            text = f"rank {rank} read {fmt_gb(read)} GB of storage for a {fmt_gb(share)} GB share"
            if cached:
                text += f" (and {fmt_gb(cached)} GB from the page cache)"
            said.append(text)
        n = int(part["ranks"].map(lambda x: isinstance(x, tuple)).sum())
        lines.append(f"{row}: " + "; ".join(said) + f" (median of {n} load(s))")
    return lines


def scaling(groups: list[Group]) -> list[list[str]]:
    """One row per label and N > 1 run at TP_SIZE 1 and N in one group: both medians, their
    ratio, and the bytes read from storage and from the page cache (whole at TP=1, per rank at
    TP=N) beside each rank's share."""
    rows = []
    for g in groups:
        ok = g.ok()
        for label, part in ok.groupby("label", sort=True):
            sizes = sorted(int(s) for s in part["tp_size"].dropna().unique())
            if 1 not in sizes:
                continue
            one = part[part["tp_size"] == 1]
            one_median = stats.median(one["total_s"])
            for size in (s for s in sizes if s > 1):
                many = part[part["tp_size"] == size]
                median = stats.median(many["total_s"])
                ranks = _ranks(many)
                rows.append([
                    g.title, str(label), str(size), fmt_s(one_median), str(len(one)), fmt_s(median),
                    str(len(many)),
                    fmt_ratio(median / one_median if median and one_median else None),
                    _read(stats.median(one["storage_read_bytes"]), stats.median(one["cache_read_bytes"])),
                    _read(stats.median(r.get("storage_read_bytes") for r in ranks),
                          stats.median(r.get("cache_read_bytes") for r in ranks)),
                    fmt_gb(stats.median(r.get("bytes") for r in ranks))])
    return rows
