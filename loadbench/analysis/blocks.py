"""The report's text: the cells of a row, summary.csv, and the blocks of summary.md and report.html.

Why blocks: the report is a list of blocks (headings, paragraphs, tables,
lists, figure places) that `markdown()` here and `html.page()` both render,
so the page and the file say the same thing. Nothing is computed here that
groups.py and the views do not already say; this module only words and
formats it.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import pandas as pd

from loadbench.analysis import apart, pods, stats, tp, views
from loadbench.analysis import frame as fr
from loadbench.analysis.fmt import fmt_gbps, fmt_pct, fmt_ratio, fmt_s, missing
from loadbench.analysis.groups import Group
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
WRAP = 48            # terminal cells longer than this wrap onto continuation lines

# ("h1"|"h2"|"h3"|"p", text) | ("ul", [text]) | ("table", header, rows) | ("figures", slug)
Block = tuple[Any, ...]


# --- the cells of a row ----------------------------------------------------------------------

def cells(r: dict[str, Any] | pd.Series) -> dict[str, str]:
    """A summary row's values as every table writes them, by column name."""
    removed = r.get("tukey_removed")
    return {
        "library": str(r["row"]), "version": str(r["version"]), "n": str(int(r["n"])),
        "median s": fmt_s(r["median_s"]), "mean s (Tukey)": fmt_s(r["tukey_mean_s"]),
        "removed": "-" if removed is None or missing(removed) else str(int(removed)),
        "p5 s": fmt_s(r["p5_s"]), "p95 s": fmt_s(r["p95_s"]), "GB/s": fmt_gbps(r["gbps"]),
        "% of ceiling": fmt_pct(r["ceiling_fraction"]),
        "tokens/s": "-" if missing(r["tokens_per_s"]) else f"{r['tokens_per_s']:.1f}",
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
    return [[cells(r)[c] for c in columns] for _, r in g.rows.iterrows()]


def csv_text(groups: list[Group]) -> str:
    """summary.csv: the published columns first, new ones appended; first-in-process trials."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for g in groups:
        for _, r in g.rows.iterrows():
            c = cells(r)
            w.writerow([g.model, g.device, g.state] + [c[k] for k in OLD_COLUMNS + NEW_COLUMNS])
    return buf.getvalue()


# --- the report's blocks -----------------------------------------------------------------------

INTRO = (
    "Load time is skeleton + weights until the device is synchronized. Each group is one model on one "
    "device in one measured cache state: a trial is cold when less than {cold:.0%} of the checkpoint "
    "was in the page cache just before the load, warm above {warm:.0%}, partial between, whatever its "
    "pod asked for. Tables, picks and figures use first-in-process trials only (the process's first "
    "load: what a pod pays; a trial's index in its process as recorded, or for schema 1 and 2 its "
    "position in its document); later loads of a process are reported apart, as repeats in a warm "
    "process. n counts verified trials; median s is their median; mean after outlier removal uses "
    "{rule} ('removed' counts the runs left out); "
    "p5/p95 interpolate linearly between closest ranks. GB/s is model bytes over the median time; % of "
    "ceiling divides it by the lower of the storage read (cold) or page-cache read (warm) ceiling and "
    "the pinned host-to-device ceiling, best values measured in the group; a ceiling that a trial beat "
    "by more than {margin:.0%} is shown as unreliable, never as a limit. × reference is the median time "
    "over loadbench's reference loader's (an instrument: what this machine achieves end to end). "
    "'verified' counts trials whose every tensor matched the manifest bit for bit. Documents of one "
    "label run with different settings are kept apart, never pooled; documents with status error "
    "and no verified trial are listed under Errors, never in a table.")
REMOTE_TEXT = (
    "Loads read from object storage (not through a node cache) form groups of their own, "
    "'object storage, cold' and 'object storage, warm': this node's page cache holds none of their "
    "checkpoint, so the state is the one their pod was run in, the server's; their % of ceiling "
    "divides by the lower of the GET ceiling (best try of parallel ranged GETs from the endpoint) and "
    "the pinned host-to-device ceiling.")
REPEATS_TEXT = (
    "Loads after the first in their process ({n} trial(s)): a pod pays only for its first, so these "
    "are kept out of the tables, picks and figures above. Median of the verified repeats and n per "
    "library; × first divides by the first-in-process median of the same row and state.")
OVERHEAD_TEXT = (
    "What a cluster pays for each pod beyond its load: per pod that verified a load, its total (process "
    "start to its last document) minus the load time of every trial it ran, first loads and repeats "
    "alike; then the median over pods ('pods' counts them). Each phase is the median over the pods "
    "that ran it, so the rows do not add up; a phase that every document of a pod reports alike "
    "(such as startup) counts once per pod, the others are summed over the pod's libraries. Cold pods "
    "also evict the page cache inside their trials.")
ERRORS_TEXT = (
    "Documents with status error and no verified trial: they measured nothing, so they are kept out "
    "of the groups and tables above. Each reason once, with how many documents gave it.")
TP_TEXT = (
    "Labels run at TP_SIZE 1 and N in one group: TP=N median time over TP=1 median time, "
    "first-in-process trials (below 1: faster with more ranks; 1/N would be perfect scaling). "
    "Bytes read are what /proc/self/io counted, from storage and from the page cache: at TP=1 for "
    "the load, at TP=N per rank, beside each rank's share of the weights; a rank that reads more "
    "than its share reads other ranks' bytes.")


def blocks(groups: list[Group], skipped: list[tuple[str, str]], title: str = "loadbench summary",
           phases: dict[str, str] | None = None, eps: list[dict[str, Any]] | None = None,
           df: pd.DataFrame | None = None) -> list[Block]:
    """The report, as blocks that markdown() and html.page() render alike. With `df` (the trial
    frame the groups came from): repeats in a warm process, pod overhead and errors too."""
    out: list[Block] = [("h1", title), ("p", INTRO.format(
        cold=fr.COLD_BELOW, warm=fr.WARM_ABOVE, rule=stats.OUTLIER_RULE,
        margin=ceiling_rules.BEATEN_MARGIN))]
    if any(fr.is_remote(g.state) for g in groups):
        out.append(("p", REMOTE_TEXT))
    for g in groups:
        out += _group(g, phases or {})
    if df is not None:
        out += _repeats(df) + _overhead(df, phases or {})
    if eps:
        out += [("h2", "Concurrent pods (scale-out)"),
                ("p", "Loads of different pods that overlapped in time, first in their process. "
                      "Aggregate GB/s is the bytes of every load over the episode's span; each pod's "
                      "residency is as measured before its load, so a pod that found a neighbour's "
                      "pages is not counted as cold."),
                ("table", ["episode", "model", "device", "libraries", "asked", "pods", "peak at once",
                           "loads", "span s", "aggregate GB/s", "p50 s", "p95 s", "resident before"],
                 [[str(e["episode"]), e["model"], e["device"], e["labels"], e["requested"], str(e["pods"]),
                   str(e["peak_concurrent"]), str(e["loads"]), fmt_s(e["span_s"]),
                   fmt_gbps(e["aggregate_gbps"]), fmt_s(e["p50_s"]), fmt_s(e["p95_s"]), e["residency"]]
                  for e in eps]),
                ("figures", "concurrent")]
    scaled = tp.scaling(groups)
    if scaled:
        out += [("h2", "Tensor parallel scaling"), ("p", TP_TEXT), ("table", tp.SCALING_HEADER, scaled)]
    kept = views.kept_apart(groups)
    if kept:
        out += [("h2", "Runs kept apart"), ("ul", kept)]
    chosen = views.picks(groups)
    if chosen:
        out += [("h2", "Which loader to pick"),
                ("p", "Computed from the medians above; loadbench's reference loader is an "
                      "instrument and never a pick."), ("ul", chosen)]
    errors = apart.error_table(df) if df is not None else []
    if errors:
        out += [("h2", "Errors"), ("p", ERRORS_TEXT), ("table", apart.ERROR_HEADER, errors)]
    if skipped:
        out += [("h2", "Skipped files"), ("ul", [f"{p}: {why}" for p, why in skipped])]
    return out


def _group(g: Group, phases: dict[str, str]) -> list[Block]:
    out: list[Block] = [("h2", g.title)]
    if g.ceiling_note():
        out.append(("p", g.ceiling_note()))
    if g.reference_s:
        out.append(("p", f"Reference (loadbench's instrument, not a product): {fmt_s(g.reference_s)} s "
                         "median; the × reference column divides by it."))
    table = _table_rows(g, TABLE_COLUMNS)
    keep = [i for i, c in enumerate(TABLE_COLUMNS)
            if c not in OPTIONAL_COLUMNS or any(row[i] != "-" for row in table)]
    out.append(("table", [TABLE_COLUMNS[i] for i in keep], [[row[i] for i in keep] for row in table]))
    notes = list(g.notes)
    moved = views.reclassified(g)
    if moved:
        notes.append(moved)
    notes += views.warning_lines(g)
    for _, r in g.rows.iterrows():
        if "," in r["run_ids"]:
            notes.append(f"{r['row']}: pooled from run ids {r['run_ids']} (same settings)")
    for _, d in g.documents()[lambda d: d["doc_status"] == "error"].iterrows():
        notes.append(f"error document {d['path'] or '?'}: {d['doc_error']}")
    if notes:
        out.append(("ul", notes))
    ranks = tp.rank_lines(g)
    if ranks:
        out += [("h3", "Bytes read per rank (tensor parallel)"), ("ul", ranks)]
    header, rows = pods.pod_times(g, phases)
    if rows:
        out += [("h3", "Pod time (median seconds per document)"),
                ("p", "Pod total runs from process start to this library's document. Startup "
                      "and device init are the pod's, shared by every library it ran; ceilings "
                      "appear in the document that measured them; earlier libraries in the pod is "
                      "what the pod spent on the libraries it ran before this one."),
                ("table", header, rows)]
    out.append(("figures", g.slug))
    return out


def _repeats(df: pd.DataFrame) -> list[Block]:
    tables = apart.repeat_tables(df)
    if not tables:
        return []
    n = sum(int(row[2]) for _, _, rows in tables for row in rows)
    out: list[Block] = [("h2", "Repeat in a warm process"), ("p", REPEATS_TEXT.format(n=n))]
    for title, header, rows in tables:
        out += [("h3", title), ("table", header, rows)]
    return out


def _overhead(df: pd.DataFrame, phases: dict[str, str]) -> list[Block]:
    found = pods.pod_overhead(df, phases)
    if not found:
        return []
    out: list[Block] = [("h2", "Pod overhead"), ("p", OVERHEAD_TEXT)]
    for o in found:
        if len(found) > 1:
            out.append(("h3", f"{o.model} on {o.device}"))
        out.append(("p", f"Median outside the timed loads: {fmt_s(o.outside_s)} s over {len(o.pods)} "
                         f"pod(s)."))
        header, rows = o.table()
        out.append(("table", header, rows))
        shown = "; ".join(f"{name}: {_some(o.packages[col])}" for col, name in o.phases.items()
                          if col in o.packages)
        if shown:
            out.append(("p", f"What the imports were (the third-party packages each phase imported "
                             f"first, in at least half of the pods): {shown}."))
    return out


def _some(names: list[str], most: int = 40) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


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


def terminal(groups: list[Group], df: pd.DataFrame | None = None) -> str:
    """The terminal's tables: fewer columns, whole error messages wrapped, never cut; with `df`,
    the error documents kept out of them too, their reasons whole."""
    columns = ("library", "io mode", "n", "median s", "p95 s", "GB/s", "% of ceiling", "× reference",
               "verified", "errors")
    parts = []
    for g in groups:
        rows = [[cells(r)[c] for c in columns] + [r["problem"] or ""] for _, r in g.rows.iterrows()]
        parts.append(g.title + "\n" + text_table([list(columns) + ["problem"]] + rows, wrap=WRAP))
    errors = apart.error_table(df, limit=None) if df is not None else []
    if errors:
        parts.append("Errors (documents that measured nothing)\n"
                     + text_table([apart.ERROR_HEADER] + errors, wrap=WRAP))
    return "\n\n".join(parts) + "\n"
