"""What the headline tables leave out, reported apart: repeats in a warm process, error documents.

Why apart: a pod is one process and pays for its first load only, so a
process's later loads (`index_in_process` >= 1: warm allocator, warm
imports, maybe warm caches) would flatter every median they joined; they get
their own table, beside the first-in-process median of the same row. And a
document with status error and no verified trial measured nothing (a typo in
LIBRARIES, a library not installed, a missing checkpoint): it never makes a
group of its own, and is listed once per reason instead.
"""

from __future__ import annotations

import pandas as pd

from loadbench.analysis import stats
from loadbench.analysis.fmt import fmt_ratio, fmt_s, shorten
from loadbench.analysis.groups import GROUP_KEYS, error_only, headline, repeats

REPEAT_HEADER = ["library", "index in process", "n", "median s", "p5 s", "p95 s", "verified",
                 "first-in-process median s", "first-in-process n", "× first"]
ERROR_HEADER = ["library", "label", "run ids", "reason", "documents"]
REASON_LIMIT = 120   # characters of an error's type and message shown as its reason


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & df["total_s"].notna()]


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}–{high}"


def repeat_tables(df: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]]]]:
    """(group title, header, rows) per model, device and cache state that has repeats: per
    row, the median of its verified repeats and n, beside its first-in-process median."""
    later = repeats(df)
    if later.empty:
        return []
    first = _ok(headline(df))
    out = []
    for (model, device, state), part in later.groupby(GROUP_KEYS, sort=True):
        base = first[(first["model"] == model) & (first["device"] == device)
                     & (first["cache_state"] == state)]
        rows = []
        for row, mine in part.groupby("row", sort=True):
            ok = _ok(mine)
            s = stats.summarize(ok["total_s"])
            b = base[base["row"] == row]["total_s"]
            first_median = stats.median(b)
            median = s.get("median")
            rows.append([str(row), _span(mine["index_in_process"].dropna()), str(s["n"]), fmt_s(median),
                         fmt_s(s.get("p5")), fmt_s(s.get("p95")),
                         f"{len(ok)}/{int(mine['trial'].notna().sum())}", fmt_s(first_median),
                         str(len(b)),
                         fmt_ratio(median / first_median if median and first_median else None)])
        out.append((f"{model} on {device}, {state}", REPEAT_HEADER, rows))
    return out


def error_table(df: pd.DataFrame, limit: int | None = REASON_LIMIT) -> list[list[str]]:
    """Documents with status error and no verified trial, one row per library, label and
    reason (the error's type and message, shortened to `limit` characters; None: whole),
    with how many documents gave it."""
    if df.empty:
        return []
    bad = df[error_only(df)].drop_duplicates("doc")
    if bad.empty:
        return []
    bad = bad.assign(reason=[e if isinstance(e, str) and e else "error" for e in bad["doc_error"]])
    rows = []
    for (library, label, reason), part in bad.groupby(["library", "label", "reason"], sort=True):
        runs = ", ".join(sorted(set(part["run_id"].dropna().astype(str)))) or "-"
        rows.append([str(library), str(label), shorten(runs, REASON_LIMIT),
                     shorten(reason, limit) if limit else str(reason), str(len(part))])
    return sorted(rows, key=lambda r: (-int(r[-1]), r[0], r[1], r[3]))
