"""From the trial frame to groups, summary rows and the report's text.

Why this shape: a group is one model on one device in one measured cache
state, and its rows are library configurations (a label, kept apart by
settings when its documents differ). Every number is computed here, from the
raw trials in `frame.frame()`, once; summary.md, summary.csv, the terminal,
report.html and the figures only format what `build()` returns. Error
documents are counted and listed, never dropped silently.

The report's text is a list of blocks (headings, paragraphs, tables, lists)
that `markdown()` and `html.page()` both render, so the page and the file say
the same thing.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from loadbench.analysis import frame as fr
from loadbench.analysis import stats
from loadbench.storage import ceilings as ceiling_rules
from loadbench.terminal import text_table

OLD_COLUMNS = ("library", "version", "n", "median s", "mean s (Tukey)", "removed", "p5 s", "p95 s",
               "GB/s", "% of ceiling", "tokens/s", "verified", "errors")
# Appended after the published ones, so readers of older summary.csv files keep working.
NEW_COLUMNS = ("io mode", "× reference", "first token s", "load + first token s", "mean s", "std s",
               "min s", "max s", "resident before", "binding ceiling", "ceiling GB/s", "pod total s",
               "settings", "run ids", "library name")
CSV_COLUMNS = ("model", "device", "cache_mode") + OLD_COLUMNS + NEW_COLUMNS
TABLE_COLUMNS = ("library", "io mode", "version", "n", "median s", "mean s (Tukey)", "removed", "p5 s",
                 "p95 s", "GB/s", "% of ceiling", "× reference", "first token s",
                 "load + first token s", "tokens/s", "verified", "errors")
# Shown in summary.md and report.html only when some row has a value (schema 1 has none of them).
OPTIONAL_COLUMNS = ("io mode", "× reference", "first token s", "load + first token s", "tokens/s")
CEILING_TEXT = {"storage_read": "storage read", "page_cache_read": "page-cache read",
                "h2d_pinned": "pinned host-to-device", "h2d_pageable": "pageable host-to-device"}
STATE_TEXT = {"cold": "cold on this storage", "warm": "warm (checkpoint in the page cache)",
              "partial": "partly cached"}
MAX_LISTED = 12      # pods listed one by one in the scale-out view; more are counted
WRAP = 48            # terminal cells longer than this wrap onto continuation lines

Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("ul", [text]) | ("table", header, rows) | ("figures", slug)


# --- formatting: one rule per kind of number, used by every view -----------------------------

def fmt_s(v: Any) -> str:
    """Seconds to the millisecond, as every table and figure writes them ('-' when missing)."""
    return "-" if _missing(v) else f"{v:.3f}"


def fmt_gbps(v: Any) -> str:
    """GB/s to two decimals, everywhere."""
    return "-" if _missing(v) else f"{v:.2f}"


def fmt_pct(v: Any) -> str:
    """A fraction as a whole percentage, everywhere."""
    return "-" if _missing(v) else f"{v:.0%}"


def fmt_ratio(v: Any) -> str:
    """A ratio (× reference) to two decimals."""
    return "-" if _missing(v) else f"{v:.2f}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v)) or v is pd.NA


def _count(v: Any) -> str:
    return "-" if _missing(v) else str(int(v))


# --- groups ----------------------------------------------------------------------------------

@dataclass
class Group:
    """One model on one device in one measured cache state, with its computed rows."""
    model: str
    device: str
    state: str
    trials: pd.DataFrame
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    ceilings: dict[str, float] = field(default_factory=dict)
    unreliable: dict[str, float] = field(default_factory=dict)
    bound_name: str | None = None
    bound_gbps: float | None = None
    resident: float = 0.0
    reference_s: float | None = None
    notes: list[str] = field(default_factory=list)
    suffix: str = ""          # set by build() when two groups' names would make one slug

    @property
    def key(self) -> tuple[str, str, str]:
        """(model, device, state): what the group is."""
        return self.model, self.device, self.state

    @property
    def title(self) -> str:
        """The group as a heading says it."""
        return f"{self.model} on {self.device}, {self.state}"

    @property
    def slug(self) -> str:
        """A file-name-safe name for the group's figures, unique among the groups of a report."""
        raw = f"{self.model}-{self.device}-{self.state}"
        return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "-" for c in raw)[:150] \
            + self.suffix

    @property
    def verified(self) -> int:
        """Trials of the group whose every tensor matched the manifest."""
        return int((self.trials["status"] == "ok").sum())

    def ok(self) -> pd.DataFrame:
        """The verified trials (status ok, with a load time)."""
        t = self.trials
        return t[(t["status"] == "ok") & t["total_s"].notna()]

    def model_bytes(self) -> float | None:
        """The checkpoint's bytes, which every GB/s of the group divides."""
        values = self.trials["model_bytes"].dropna()
        return float(values.iloc[0]) if len(values) else None

    def ceiling_note(self) -> str:
        """What the ceilings say, with any beaten one named as unreliable, never as a limit."""
        if not self.ceilings:
            return ""
        parts = []
        for name in sorted(self.ceilings):
            text = f"{CEILING_TEXT.get(name, name)} {self.ceilings[name]:.2f}"
            if name in self.unreliable:
                text += f" (unreliable: beaten, best observed {self.unreliable[name]:.2f})"
            parts.append(text)
        head = "Ceilings (GB/s, best measured in the group): " + ", ".join(parts) + "."
        if self.bound_name and self.bound_gbps:
            head += (f" Binding for this state: {CEILING_TEXT.get(self.bound_name, self.bound_name)} "
                     f"{self.bound_gbps:.2f} GB/s.")
        elif self.bound_name:
            head += (f" The binding one, {CEILING_TEXT.get(self.bound_name, self.bound_name)}, is "
                     f"unreliable (beaten by {self.unreliable[self.bound_name]:.2f} GB/s), so no % of "
                     "ceiling is shown.")
        return head


def build(df: pd.DataFrame) -> list[Group]:
    """Groups with their rows computed, sorted by model, device and state."""
    groups = []
    if df.empty:
        return groups
    for (model, device, state), part in df.groupby(["model", "device", "cache_state"], sort=True):
        g = Group(str(model), str(device), str(state), part)
        _limits(g)
        groups.append(g)
    # A ceiling is the machine's, not one cache state's: beaten in one group, unreliable in all
    # groups of that model and device.
    beaten: dict[tuple[str, str], dict[str, float]] = {}
    for g in groups:
        for name, seen in g.unreliable.items():
            mine = beaten.setdefault((g.model, g.device), {})
            mine[name] = max(mine.get(name, 0.0), seen)
    for g in groups:
        for name, seen in beaten.get((g.model, g.device), {}).items():
            if name in g.ceilings and name not in g.unreliable:
                g.unreliable[name] = seen
                g.notes.append(f"the {CEILING_TEXT.get(name, name)} ceiling was beaten in another cache "
                               f"state ({seen:.2f} GB/s observed): unreliable here too")
                if g.bound_name == name:
                    g.bound_gbps = None
        g.rows = _rows(g)
    seen: dict[str, int] = {}
    for g in groups:
        n = seen[g.slug.lower()] = seen.get(g.slug.lower(), 0) + 1
        if n > 1:
            g.suffix = f"-{n}"
    return groups


def _limits(g: Group) -> None:
    docs = g.trials.drop_duplicates("doc")
    for name in fr.CEILING_NAMES:
        best = docs[f"ceiling_{name}_gbps"].max()
        if isinstance(best, float) and math.isfinite(best) and best > 0:
            g.ceilings[name] = best
    resident = stats.median(g.trials["resident_before"])
    g.resident = resident if resident is not None else float(g.state not in ("cold",))
    fastest = g.ok()["gbps"].max() if len(g.ok()) else math.nan
    limits = ceiling_rules.limits_for(g.resident)
    for name in limits:
        if name in g.ceilings and fastest > g.ceilings[name] * (1 + ceiling_rules.BEATEN_MARGIN):
            g.unreliable[name] = float(fastest)
    flagged = {n for flags in docs["ceilings_unreliable"].dropna() for n in str(flags).split(",") if n}
    for name in sorted(flagged - set(g.unreliable)):
        pods = int(docs["ceilings_unreliable"].fillna("").str.contains(name, regex=False).sum())
        g.notes.append(f"{pods} document(s) flagged their own {CEILING_TEXT.get(name, name)} measurement "
                       f"as beaten by a trial; the best measurement in the group held")
    candidates = [(n, g.ceilings[n]) for n in limits if n in g.ceilings]
    if candidates:
        name, value = min(candidates, key=lambda c: c[1])
        g.bound_name = name
        g.bound_gbps = None if name in g.unreliable else value


def _first_problem(part: pd.DataFrame) -> str:
    bad = part[part["status"] != "ok"]
    for _, t in bad.iterrows():
        if t["error"]:
            return str(t["error"])
        if t["status"] == "mismatch":
            return f"mismatch: {_count(t['mismatches'])} tensor(s) differ from the manifest"
        if t["doc_error"]:
            return str(t["doc_error"])
    errs = part[part["doc_status"] == "error"]["doc_error"].dropna()
    return str(errs.iloc[0]) if len(errs) else ""


def _rows(g: Group) -> pd.DataFrame:
    nbytes = g.model_bytes()
    refs = fr.reference_libraries()
    out = []
    for row, part in g.trials.groupby("row", sort=True):
        ok = part[(part["status"] == "ok") & part["total_s"].notna()]
        s = stats.summarize(ok["total_s"])
        median = s.get("median")
        gbps = nbytes / median / 1e9 if median and nbytes else None
        trials = part[part["trial"].notna()]
        failed = trials[trials["status"] != "ok"]
        error_docs = part[(part["doc_status"] == "error")].drop_duplicates("doc")
        silent = error_docs[~error_docs["doc"].isin(failed["doc"])]
        library = str(part["library"].iloc[0])
        versions = sorted(set(part["version"].dropna().astype(str)))
        io_modes = sorted(set((ok if len(ok) else part)["io_mode"].dropna().astype(str)))
        tokens = [v for v in stats.finite(ok["tokens_per_s"]) if v > 0]
        docs = part.drop_duplicates("doc")
        out.append({
            "model": g.model, "device": g.device, "cache_state": g.state, "row": str(row),
            "label": str(part["label"].iloc[0]), "library": library,
            "version": ", ".join(versions) or "-", "io_mode": "; ".join(io_modes) or None,
            "settings_variant": str(part["settings_variant"].iloc[0]),
            "run_ids": ", ".join(sorted(set(part["run_id"].dropna().astype(str)))),
            "is_reference": library in refs,
            "n": s["n"], "median_s": median, "mean_s": s.get("mean"), "std_s": s.get("std"),
            "tukey_mean_s": s.get("tukey_mean"), "tukey_removed": s.get("tukey_removed"),
            "p5_s": s.get("p5"), "p95_s": s.get("p95"), "min_s": s.get("min"), "max_s": s.get("max"),
            "gbps": gbps,
            "ceiling": g.bound_name, "ceiling_gbps": g.bound_gbps,
            "ceiling_fraction": gbps / g.bound_gbps if gbps and g.bound_gbps else None,
            "first_token_s": stats.median(ok["first_token_s"]),
            "load_first_token_s": stats.median(ok["load_first_token_s"]),
            "tokens_per_s": float(np.median(tokens)) if tokens else None,
            "resident_before": stats.median(ok["resident_before"]),
            "pod_total_s": stats.median(docs["pod_total_s"]),
            "verified": len(ok), "trials": len(trials), "errors": len(failed) + len(silent),
            "problem": _first_problem(part),
            "few_runs": bool(s["n"]) and stats.too_few(s), "rel_std": stats.unstable(s),
            "warnings": stats.warnings(s, f"{g.title}, {row}") if s["n"] else [],
        })
    rows = pd.DataFrame(out)
    ref = rows[rows["is_reference"] & rows["median_s"].notna()]["median_s"]
    g.reference_s = float(ref.min()) if len(ref) else None
    rows["x_reference"] = rows["median_s"] / g.reference_s if g.reference_s else None
    return rows


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Every group's summary rows in one DataFrame: what a notebook asks for after `load()`."""
    groups = build(df)
    if not groups:
        return pd.DataFrame()
    return pd.concat([g.rows for g in groups], ignore_index=True)


# --- the cells of a row ----------------------------------------------------------------------

def _cells(r: dict[str, Any] | pd.Series) -> dict[str, str]:
    removed = r.get("tukey_removed")
    return {
        "library": str(r["row"]), "version": str(r["version"]), "n": str(int(r["n"])),
        "median s": fmt_s(r["median_s"]), "mean s (Tukey)": fmt_s(r["tukey_mean_s"]),
        "removed": "-" if _missing(removed) else str(int(removed)),
        "p5 s": fmt_s(r["p5_s"]), "p95 s": fmt_s(r["p95_s"]), "GB/s": fmt_gbps(r["gbps"]),
        "% of ceiling": fmt_pct(r["ceiling_fraction"]),
        "tokens/s": "-" if _missing(r["tokens_per_s"]) else f"{r['tokens_per_s']:.1f}",
        "verified": f"{int(r['verified'])}/{int(r['trials'])}", "errors": str(int(r["errors"])),
        "io mode": r["io_mode"] if isinstance(r["io_mode"], str) else "-",
        "× reference": fmt_ratio(r["x_reference"]),
        "first token s": fmt_s(r["first_token_s"]),
        "load + first token s": fmt_s(r["load_first_token_s"]),
        "mean s": fmt_s(r["mean_s"]), "std s": fmt_s(r["std_s"]), "min s": fmt_s(r["min_s"]),
        "max s": fmt_s(r["max_s"]), "resident before": fmt_pct(r["resident_before"]),
        "binding ceiling": str(r["ceiling"] or "-"), "ceiling GB/s": fmt_gbps(r["ceiling_gbps"]),
        "pod total s": fmt_s(r["pod_total_s"]), "settings": r["settings_variant"] or "-",
        "run ids": r["run_ids"] or "-", "library name": str(r["library"]),
    }


def _table_rows(g: Group, columns: Sequence[str]) -> list[list[str]]:
    return [[_cells(r)[c] for c in columns] for _, r in g.rows.iterrows()]


def csv_text(groups: list[Group]) -> str:
    """summary.csv: the published columns first, new ones appended."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for g in groups:
        for _, r in g.rows.iterrows():
            c = _cells(r)
            w.writerow([g.model, g.device, g.state] + [c[k] for k in OLD_COLUMNS + NEW_COLUMNS])
    return buf.getvalue()


# --- views beside the main table -------------------------------------------------------------

def pod_times(g: Group, phases: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Median seconds per document of each pod phase, per row: what a cluster pays per pod.
    Empty when no document recorded its pod's time (schema 1)."""
    docs = g.trials.drop_duplicates("doc")
    docs = docs[docs["pod_total_s"].notna()]
    if docs.empty:
        return [], []
    cols = [c for c in phases if docs[c].notna().any()]
    header = ["library", "documents"] + [phases[c] for c in cols] + ["pod total"]
    rows = []
    for row, part in docs.groupby("row", sort=True):
        rows.append([str(row), str(len(part))] + [fmt_s(stats.median(part[c])) for c in cols]
                    + [fmt_s(stats.median(part["pod_total_s"]))])
    return header, rows


def episodes(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Concurrent pods: loads of different pods that overlap in time, per model and device.

    Loads are linked when their spans (start to start + load time) overlap; a
    linked set with two or more pods is one episode. Each pod's residency is
    reported as measured, so a pod that found a neighbour's pages is not cold.
    """
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
        for label, part in g.trials.groupby("label", sort=True):
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
    """Trials whose measured residency differs from the cache mode they asked for."""
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
        if base is not None and len(base):
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


# --- the report's blocks -----------------------------------------------------------------------

INTRO = (
    "Load time is skeleton + weights until the device is synchronized. Each group is one model on one "
    "device in one measured cache state: a trial is cold when less than {cold:.0%} of the checkpoint "
    "was in the page cache just before the load, warm above {warm:.0%}, partial between, whatever its "
    "pod asked for. Mean after outlier removal uses {rule} ('removed' counts the runs left out); "
    "p5/p95 interpolate linearly between closest ranks. GB/s is model bytes over the median time; % of "
    "ceiling divides it by the lower of the storage read (cold) or page-cache read (warm) ceiling and "
    "the pinned host-to-device ceiling, best values measured in the group; a ceiling that a trial beat "
    "by more than {margin:.0%} is shown as unreliable, never as a limit. × reference is the median time "
    "over loadbench's reference loader's (an instrument: what this machine achieves end to end). "
    "'verified' counts trials whose every tensor matched the manifest bit for bit. Documents of one "
    "label run with different settings are kept apart, never pooled.")


def blocks(groups: list[Group], skipped: list[tuple[str, str]], title: str = "loadbench summary",
           phases: dict[str, str] | None = None, eps: list[dict[str, Any]] | None = None) -> list[Block]:
    """The report, as blocks that markdown() and html.page() render alike."""
    out: list[Block] = [("h1", title), ("p", INTRO.format(
        cold=fr.COLD_BELOW, warm=fr.WARM_ABOVE, rule=stats.OUTLIER_RULE,
        margin=ceiling_rules.BEATEN_MARGIN))]
    for g in groups:
        out.append(("h2", g.title))
        if g.ceiling_note():
            out.append(("p", g.ceiling_note()))
        if g.reference_s:
            out.append(("p", f"Reference (loadbench's instrument, not a product): {fmt_s(g.reference_s)} s "
                             "median; the × reference column divides by it."))
        cells = _table_rows(g, TABLE_COLUMNS)
        keep = [i for i, c in enumerate(TABLE_COLUMNS)
                if c not in OPTIONAL_COLUMNS or any(row[i] != "-" for row in cells)]
        out.append(("table", [TABLE_COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in cells]))
        notes = list(g.notes)
        moved = reclassified(g)
        if moved:
            notes.append(moved)
        notes += warning_lines(g)
        for _, r in g.rows.iterrows():
            if "," in r["run_ids"]:
                notes.append(f"{r['row']}: pooled from run ids {r['run_ids']} (same settings)")
        for _, d in g.trials[g.trials["doc_status"] == "error"].drop_duplicates("doc").iterrows():
            notes.append(f"error document {d['path'] or '?'}: {d['doc_error']}")
        if notes:
            out.append(("ul", notes))
        header, rows = pod_times(g, phases or {})
        if rows:
            out += [("h3", "Pod time (median seconds per document)"),
                    ("p", "Pod total runs from process start to this library's document. Startup "
                          "and device init are the pod's, shared by every library it ran; ceilings "
                          "appear in the document that measured them; earlier libraries in the pod is "
                          "what the pod spent on the libraries it ran before this one."),
                    ("table", header, rows)]
        out.append(("figures", g.slug))
    if eps:
        out += [("h2", "Concurrent pods (scale-out)"),
                ("p", "Loads of different pods that overlapped in time. Aggregate GB/s is the bytes "
                      "of every load over the episode's span; each pod's residency is as measured "
                      "before its load, so a pod that found a neighbour's pages is not counted as cold."),
                ("table", ["episode", "model", "device", "libraries", "asked", "pods", "peak at once",
                           "loads", "span s", "aggregate GB/s", "p50 s", "p95 s", "resident before"],
                 [[str(e["episode"]), e["model"], e["device"], e["labels"], e["requested"], str(e["pods"]),
                   str(e["peak_concurrent"]), str(e["loads"]), fmt_s(e["span_s"]),
                   fmt_gbps(e["aggregate_gbps"]), fmt_s(e["p50_s"]), fmt_s(e["p95_s"]), e["residency"]]
                  for e in eps]),
                ("figures", "concurrent")]
    apart = kept_apart(groups)
    if apart:
        out += [("h2", "Runs kept apart"), ("ul", apart)]
    chosen = picks(groups)
    if chosen:
        out += [("h2", "Which loader to pick"),
                ("p", "Computed from the medians above; loadbench's reference loader is an "
                      "instrument and never a pick."), ("ul", chosen)]
    if skipped:
        out += [("h2", "Skipped files"), ("ul", [f"{p}: {why}" for p, why in skipped])]
    return out


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown(bl: list[Block]) -> str:
    """summary.md from the blocks (figures are left to the HTML page)."""
    lines: list[str] = []
    for b in bl:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            lines += [{"h1": "#", "h2": "##", "h3": "###"}[kind] + " " + b[1], ""]
        elif kind == "p":
            lines += [b[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in b[1]] + [""]
        elif kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
            lines.append("")
    return "\n".join(lines)


def terminal(groups: list[Group]) -> str:
    """The terminal's tables: fewer columns, whole error messages wrapped, never cut."""
    columns = ("library", "io mode", "n", "median s", "p95 s", "GB/s", "% of ceiling", "× reference",
               "verified", "errors")
    parts = []
    for g in groups:
        rows = [[_cells(r)[c] for c in columns] + [r["problem"] or ""] for _, r in g.rows.iterrows()]
        parts.append(g.title + "\n" + text_table([list(columns) + ["problem"]] + rows, wrap=WRAP))
    return "\n\n".join(parts) + "\n"
