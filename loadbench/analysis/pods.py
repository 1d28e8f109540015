"""A pod's time beyond its loads: per document (pod_times) and per pod (pod_overhead).

Why both: a document's pod total runs from process start to that library's
document, so per document it shows what each library's pod cost; but a pod
is one process that may write several documents, and what a cluster pays
for a pod beyond its load is one number per pod: its total (process start to
its last document) minus the timed loads of all its trials. Pods are told
apart by their identity and their process start; a pod that verified no load
is left to the report's errors. Documents of schema 1 carry no pod time and
are left out of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from loadbench.analysis import stats
from loadbench.analysis.fmt import fmt_s
from loadbench.analysis.groups import Group

EARLIER = "pod_earlier_s"   # frame's "earlier libraries in the pod": per document only


def pod_times(g: Group, phases: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Median seconds per document of each pod phase, per row: what a cluster pays per pod.
    Empty when no document recorded its pod's time (schema 1)."""
    docs = g.documents()
    docs = docs[docs["pod_total_s"].notna()]
    if docs.empty:
        return [], []
    cols = [c for c in phases if c in docs and docs[c].notna().any()]
    header = ["library", "documents"] + [phases[c] for c in cols] + ["pod total"]
    rows = []
    for row, part in docs.groupby("row", sort=True):
        rows.append([str(row), str(len(part))] + [fmt_s(stats.median(part[c])) for c in cols]
                    + [fmt_s(stats.median(part["pod_total_s"]))])
    return header, rows


@dataclass
class Overhead:
    """The pods of one model on one device: each pod's phases, loads and time outside them."""
    model: str
    device: str
    pods: pd.DataFrame                      # one row per pod
    phases: dict[str, str] = field(default_factory=dict)   # column -> phase name, in pod order
    # phase column -> the packages it imported first in at least half of the pods, where told
    packages: dict[str, list[str]] = field(default_factory=dict)

    @property
    def outside_s(self) -> float | None:
        """The median over pods of pod total minus the pod's timed loads."""
        return stats.median(self.pods["outside_s"])

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Rows: each phase, the timed loads, time in no phase, the total, and what is outside
        the loads; columns: median seconds and pods, for all pods and per cache state."""
        states = sorted(set(self.pods["state"]))
        parts: list[tuple[str, pd.DataFrame]] = [("", self.pods)]
        if len(states) > 1:
            parts += [(f", {s}", self.pods[self.pods["state"] == s]) for s in states]
        header = ["pod time"]
        for suffix, _ in parts:
            header += [f"median s{suffix}", f"pods{suffix}"]
        lines = [(name, col) for col, name in self.phases.items()] + [
            ("timed loads (inside the phases above)", "loads_s"),
            ("in no phase (writing documents, between phases)", "unnamed_s"),
            ("pod total (process start to its last document)", "total_s"),
            ("outside the timed loads (pod total − timed loads)", "outside_s")]
        rows = []
        for name, col in lines:
            row = [name]
            for _, part in parts:
                values = part[col].dropna()
                if col in self.phases:
                    values = values[values > 0]    # a pod that never ran the phase
                row += [fmt_s(stats.median(values)), str(len(values))]
            rows.append(row)
        return header, rows


def pod_overhead(df: pd.DataFrame, phases: dict[str, str]) -> list[Overhead]:
    """Per model and device, one row per pod: its total (the largest pod total of its documents),
    its timed loads (the sum of total_s over every trial of its documents, first or repeat),
    what lies outside them, and each phase (a phase every document of the pod reports alike,
    such as startup, is counted once; the others, one per library, are summed)."""
    timed = df[df["pod_total_s"].notna()]
    if timed.empty:
        return []
    cols = [c for c in phases if c != EARLIER and c in timed]
    timed = timed.assign(_key=timed["pod"].astype(str) + "\0" + timed["pod_started_at"].astype(str))
    docs = timed.drop_duplicates("doc").groupby("_key", sort=True)
    pods = docs[["model", "device", "pod"]].first()
    pods["total_s"] = docs["pod_total_s"].max()
    loads = timed[timed["trial"].notna()].groupby("_key")["total_s"].sum()
    pods["loads_s"] = loads.reindex(pods.index).fillna(0.0)
    pods["outside_s"] = (pods["total_s"] - pods["loads_s"]).clip(lower=0)
    if cols:
        alike = docs[cols].nunique() <= 1
        pods[cols] = docs[cols].first().where(alike, docs[cols].sum(min_count=1))
        named = pods[cols].sum(axis=1, min_count=1)
        pods["unnamed_s"] = (pods["total_s"] - named).clip(lower=0)
    else:
        pods["unnamed_s"] = float("nan")
    verified = timed[timed["status"] == "ok"].groupby("_key")["cache_state"]
    states = verified.first().where(verified.nunique() <= 1, "mixed")
    pods["state"] = states.reindex(pods.index)
    pods = pods[pods["state"].notna()]      # a pod that verified no load is in the errors, not here
    if "pod_packages" in timed:
        pairs = docs["pod_packages"].agg(lambda col: frozenset(p for t in col if t for p in t))
        pods["packages"] = pairs.reindex(pods.index)
    else:
        pods["packages"] = [frozenset()] * len(pods)
    out = []
    for (model, device), part in pods.groupby(["model", "device"], sort=True):
        present = {c: phases[c] for c in cols if part[c].fillna(0).gt(0).any()}
        out.append(Overhead(str(model), str(device), part.reset_index(drop=True), present,
                            _common(part["packages"])))
    return out


def _common(pairs: pd.Series) -> dict[str, list[str]]:
    """phase column -> the packages that phase imported first in at least half of the pods."""
    counts: dict[tuple[str, str], int] = {}
    for one in pairs:
        for pair in one if isinstance(one, frozenset) else ():
            counts[pair] = counts.get(pair, 0) + 1
    out: dict[str, list[str]] = {}
    for (phase, package), n in sorted(counts.items()):
        if 2 * n >= len(pairs):
            out.setdefault(phase, []).append(package)
    return out
