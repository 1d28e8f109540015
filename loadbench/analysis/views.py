"""Views beside a group's table, computed from the groups: concurrent pods, warnings, runs kept
apart, trials reclassified by measured residency, and which loader to pick.

Why apart from groups.py: these read the computed rows and say something
about them in words; every one uses first-in-process trials only, as the
tables do, so a line never disagrees with the table above it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from loadbench.analysis import frame as fr
from loadbench.analysis import stats
from loadbench.analysis.fmt import CEILING_TEXT, STATE_TEXT, fmt_gbps, fmt_pct, fmt_s
from loadbench.analysis.groups import Group, headline

MAX_LISTED = 12      # pods listed one by one in the scale-out view; more are counted


def episodes(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Concurrent pods: loads of different pods that overlap in time, per model and device.

    Loads are linked when their spans (start to start + load time) overlap; a
    linked set with two or more pods is one episode. Each pod's residency is
    reported as measured, so a pod that found a neighbour's pages is not cold.
    Only first-in-process loads count, as in the tables: what each pod pays.
    """
    df = headline(df)
    ok = df[(df["status"] == "ok") & df["started_at"].notna() & df["load_end"].notna()]
    out: list[dict[str, Any]] = []
    for (model, device), part in ok.groupby(["model", "device"], sort=True):
        part = part.sort_values("started_at")
        starts = part["started_at"].to_numpy()
        ends = part["load_end"].to_numpy()
        cluster = np.zeros(len(part), dtype=int)
        reach, k = None, 0
        for i in range(len(part)):
            if reach is not None and starts[i] >= reach:
                k += 1
            cluster[i] = k
            reach = ends[i] if reach is None or starts[i] >= reach else max(reach, ends[i])
        for _, ep in part.groupby(cluster):
            pods = ep["pod"].nunique()
            if pods < 2:
                continue
            out.append(_episode(str(model), str(device), ep, len(out) + 1))
    return out


def _episode(model: str, device: str, ep: pd.DataFrame, number: int) -> dict[str, Any]:
    span = (ep["load_end"].max() - ep["started_at"].min()).total_seconds()
    events = sorted([(t, 1) for t in ep["started_at"]] + [(t, -1) for t in ep["load_end"]],
                    key=lambda e: (e[0], e[1]))
    active = peak = 0
    for _, delta in events:
        active += delta
        peak = max(peak, active)
    per_pod = ep.groupby("pod")["resident_before"].median()
    states = {p: fr.cache_state(v, None) if not math.isnan(v) else "unknown" for p, v in per_pod.items()}
    counts = pd.Series(list(states.values())).value_counts().to_dict()
    s = stats.summarize(ep["total_s"])
    if len(per_pod) <= MAX_LISTED:
        residency = ", ".join(f"{p} {fmt_pct(v)} ({states[p]})" for p, v in per_pod.items())
    else:
        residency = ", ".join(
            f"{n} {state} ({fmt_pct(per_pod[[p for p in per_pod.index if states[p] == state]].min())}"
            f"–{fmt_pct(per_pod[[p for p in per_pod.index if states[p] == state]].max())})"
            for state, n in sorted(counts.items()))
    return {
        "episode": number, "model": model, "device": device,
        "labels": ", ".join(sorted(set(ep["row"].astype(str)))),
        "requested": ", ".join(sorted(set(ep["cache_mode"].dropna().astype(str)))) or "-",
        "pods": int(per_pod.size), "peak_concurrent": peak, "loads": len(ep), "span_s": span,
        "aggregate_gbps": float(ep["model_bytes"].sum()) / span / 1e9 if span > 0 else None,
        "p50_s": s.get("median"), "p95_s": s.get("p95"), "states": counts, "residency": residency,
        "trials": ep,
    }


def warning_lines(g: Group) -> list[str]:
    """The pyperf-style checks of a group, one line per kind rather than one per row."""
    out = []
    few = g.rows[g.rows["few_runs"]]
    if len(few):
        by_n = few.groupby("n")["row"].apply(lambda s: ", ".join(s.astype(str)))
        out.append("only " + "; ".join(f"{int(n)} run(s): {names}" for n, names in by_n.items())
                   + f"; {stats.MIN_RUNS} or more are needed for a stable median")
    for _, r in g.rows[g.rows["rel_std"].notna()].iterrows():
        out.append(f"{r['row']}: std is {r['rel_std']:.0%} of the mean (> {stats.MAX_REL_STD:.0%}): "
                   "the results are unstable")
    return out


def kept_apart(groups: list[Group]) -> list[str]:
    """One line per label whose documents were run with different settings."""
    lines = []
    for g in groups:
        for label, part in g.everything.groupby("label", sort=True):
            if not part["settings_variant"].ne("").any():
                continue
            differ = fr.differing_settings(part["settings_key"])
            shown = "; ".join(f"{k}: {', '.join(v)}" for k, v in differ.items())
            variants = ", ".join(f"[{v}] {n} document(s)" for v, n in
                                 part.drop_duplicates("doc")["settings_variant"].value_counts()
                                 .sort_index().items())
            lines.append(f"{g.title}, {label}: documents differ in {shown}; kept apart as {variants}")
    return lines


def reclassified(g: Group) -> str:
    """Trials whose measured residency differs from the cache mode they asked for (loads from
    object storage keep the mode they asked for: see frame.REMOTE_PREFIX)."""
    if fr.is_remote(g.state):
        return ""
    t = g.trials[g.trials["cache_mode"].notna() & (g.trials["cache_mode"] != g.state)
                 & g.trials["resident_before"].notna()]
    if t.empty:
        return ""
    asked = ", ".join(f"{n} asked {m}" for m, n in t["cache_mode"].value_counts().sort_index().items())
    return (f"{len(t)} trial(s) here ({asked}) found {fmt_pct(t['resident_before'].min())}–"
            f"{fmt_pct(t['resident_before'].max())} of the checkpoint resident before the load: they "
            f"are reported as {g.state}, by measured residency (cold < {fr.COLD_BELOW:.0%}, warm > "
            f"{fr.WARM_ABOVE:.0%}, partial between)")


def picks(groups: list[Group]) -> list[str]:
    """'Which loader to pick', one line per group, computed from the medians."""
    baseline = fr.baseline_library()
    lines = []
    for g in groups:
        rows = g.rows[~g.rows["is_reference"] & g.rows["median_s"].notna()].sort_values("median_s")
        if rows.empty:
            continue
        best = rows.iloc[0]
        where = STATE_TEXT.get(g.state, g.state)
        mode = f", {best['io_mode']}" if isinstance(best["io_mode"], str) else ""
        text = (f"{where}, {g.model} on {g.device}: **{best['row']}**{mode}; {fmt_s(best['median_s'])} s "
                f"median, {fmt_gbps(best['gbps'])} GB/s")
        if g.bound_name and g.bound_gbps and best["gbps"]:
            frac = best["gbps"] / g.bound_gbps
            what = CEILING_TEXT.get(g.bound_name, g.bound_name)
            text += f", at {frac:.0%} of the {what} ceiling"
        elif g.bound_name:
            text += (f"; the {CEILING_TEXT.get(g.bound_name, g.bound_name)} ceiling is unreliable "
                     f"(beaten, best observed {g.unreliable[g.bound_name]:.2f} GB/s)")
        base = g.rows[(g.rows["library"] == baseline) & g.rows["median_s"].notna()] if baseline else None
        if baseline and base is not None and len(base):
            b = base.sort_values("median_s").iloc[0]
            if b["row"] == best["row"]:
                text += f"; it is the {baseline} baseline ({fr.describe(baseline)}) itself"
            else:
                text += (f"; {b['median_s'] / best['median_s']:.2f}× faster than {b['row']} "
                         f"({fr.describe(baseline)})")
        if len(rows) > 1:
            second = rows.iloc[1]
            text += f"; runner-up {second['row']} at +{second['median_s'] / best['median_s'] - 1:.0%}"
        if g.reference_s:
            text += (f"; loadbench's reference loader takes {fmt_s(g.reference_s)} s "
                     f"(the pick takes {best['median_s'] / g.reference_s:.2f}× as long)")
        if best["n"] < stats.MIN_RUNS:
            text += f" (only {int(best['n'])} run(s): measure more before choosing)"
        lines.append(text + ".")
    return lines
