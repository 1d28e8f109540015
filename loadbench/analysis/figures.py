"""Figures of a group, built from the same summary rows as the tables.

Why they look the way they do (issue 13.7): libraries are bars or boxes on
horizontal rows, so long labels and their I/O mode stay readable; an axis
spans the libraries, never a far-away ceiling that would squash them (a
ceiling beyond the axis is written as text beside the bars, and the axis
turns logarithmic when the libraries alone span more than 10×); a ceiling that
a trial beat is written as unreliable, never drawn as a limit; loadbench's
reference loader is a line, not a contender; titles say what was measured;
numbers round as in the tables. Like the tables, they show first-in-process
trials only (a group's `trials`). matplotlib is imported only when drawing.
"""

from __future__ import annotations

import io
import math
import os
import re
import textwrap
from typing import Any

import pandas as pd

from loadbench.analysis import frame as fr
from loadbench.analysis import stats
from loadbench.analysis.fmt import CEILING_TEXT, STATE_TEXT, fmt_gbps, fmt_pct, fmt_s
from loadbench.analysis.groups import Group

LOG_SPAN = 10.0            # libraries spanning more than this ratio get a log axis
HEADROOM = 1.45            # the axis ends this far beyond the longest bar (room for its text)
MAX_POD_NAMES = 24         # pods named on the timeline's axis; more are only counted
CEILING_SPAN = 3.0         # a ceiling within this factor of the longest bar is drawn on the axis
STATE_COLOURS = {"cold": "#4c72b0", "warm": "#dd8452", "partial": "#8172b3",
                 "object storage, cold": "#55a868", "object storage, warm": "#c44e52"}
REFERENCE_COLOUR = "#2a2a2a"
CEILING_COLOUR = "#c44e52"


def _state(state: str) -> str:
    """A group's state as a figure title says it: the page cache's, or the server's."""
    return STATE_TEXT.get(state, state) if fr.is_remote(state) else f"{state} page cache"


LEGEND_GAP_IN = 0.55       # a legend below an axis starts this far under it: below its x label


def _below(ax: Any) -> float:
    """The axes-fraction y a legend under `ax` starts at: a fixed distance in inches, so a short
    axis (one bar) does not put its legend over its own x label."""
    height = ax.figure.get_size_inches()[1] * ax.get_position().height
    return -LEGEND_GAP_IN / height if height > 0 else -0.12


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def esc(text: Any) -> str:
    """Text as matplotlib shows it literally ('$' would start mathtext)."""
    return str(text).replace("$", r"\$")


def _lines(text: str, width: int, most: int = 2) -> list[str]:
    """Wrapped onto at most `most` lines; what does not fit ends in '...'."""
    lines = textwrap.wrap(text, width)
    if len(lines) > most:
        lines = lines[:most]
        lines[-1] = lines[-1][:width - 3] + "..."
    return lines


def _label(r: pd.Series) -> str:
    """A library's tick label: its row name, then its I/O mode, as the tables name them."""
    mode = r["io_mode"] if isinstance(r["io_mode"], str) else ""
    return esc("\n".join(_lines(str(r["row"]), 34) + _lines(mode, 40)))


def _title(g: Group, what: str) -> str:
    return f"{what}\n{g.model} on {g.device}, {_state(g.state)}, n={g.verified} verified loads"


def render(fig: Any, out: str | None, name: str, formats: list[str]) -> tuple[list[str], bytes]:
    """Write the figure in each format; also return its PNG bytes for report.html
    (rendered once: the PNG file and the page share them)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    png = buf.getvalue()
    paths = []
    if out:
        for fmt in formats:
            path = os.path.join(out, f"{name}.{fmt}")
            if fmt == "png":
                with open(path, "wb") as f:
                    f.write(png)
            else:
                fig.savefig(path, dpi=120, bbox_inches="tight")
            paths.append(path)
    _plt().close(fig)
    return paths, png


def _reference_legend(g: Group) -> str:
    """The line's legend: which of the instrument's configurations it is, where it has several."""
    several = int((g.rows["is_reference"] & g.rows["median_s"].notna()).sum()) > 1
    return esc("loadbench reference loader" + (f" ({g.reference_row})" if several else ""))


def _contenders(g: Group) -> pd.DataFrame:
    """Every row but the one drawn as the reference line: the instrument's other configurations
    (a sweep of its settings) stay rows of their own, else they would vanish."""
    rows = g.rows[(g.rows["row"] != g.reference_row) & g.rows["median_s"].notna()]
    return rows.sort_values("median_s", ascending=False)   # fastest at the top of a barh


def _wants_log(values: list[float]) -> bool:
    values = [v for v in values if v and v > 0]
    return len(values) > 1 and max(values) / min(values) > LOG_SPAN


def _log_axis(ax: Any) -> None:
    """A log x axis labelled in plain numbers (0.5, 1, 10), as the tables write them."""
    from matplotlib.ticker import FuncFormatter, LogLocator
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def load_times(g: Group) -> Any | None:
    """Each library's load times: a box over every trial, fastest at the top; the reference
    loader's median as a line."""
    rows = _contenders(g)
    if rows.empty:
        return None
    plt = _plt()
    ok = g.ok()
    data = [ok[ok["row"] == r]["total_s"].tolist() for r in rows["row"]]
    fig, ax = plt.subplots(figsize=(9, 1.0 + 0.62 * len(rows) + 0.8))
    import matplotlib
    found = re.match(r"(\d+)\.(\d+)", matplotlib.__version__)
    newer = found is not None and (int(found[1]), int(found[2])) >= (3, 10)
    flat = {"orientation": "horizontal"} if newer else {"vert": False}  # `vert` is deprecated in 3.11
    ax.boxplot(data, showfliers=False, widths=0.55, **flat)
    for i, values in enumerate(data, start=1):
        jitter = [i + (k % 5 - 2) * 0.05 for k in range(len(values))]
        ax.scatter(values, jitter, s=14, alpha=0.7, zorder=3, color="#4c72b0")
    ax.set_yticks(range(1, len(rows) + 1), [_label(r) for _, r in rows.iterrows()], fontsize=8)
    if g.reference_s:
        ax.axvline(g.reference_s, color=REFERENCE_COLOUR, linestyle="--", linewidth=1.2,
                   label=f"{_reference_legend(g)}, median {fmt_s(g.reference_s)} s")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, _below(ax)), frameon=False)
    values = [v for d in data for v in d] + ([g.reference_s] if g.reference_s else [])
    if _wants_log(values):
        _log_axis(ax)
        ax.set_xlabel("load time, skeleton + weights (s, log scale)")
    else:
        ax.set_xlim(left=0)
        ax.set_xlabel("load time, skeleton + weights (s)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(esc(_title(g, "Load time per library (lower is better)")), fontsize=10)
    return fig


def throughput(g: Group) -> Any | None:
    """Median GB/s per library as horizontal bars with value and % of the binding ceiling
    beside each; reference and in-range ceilings as lines, the rest as text."""
    rows = _contenders(g)
    rows = rows[rows["gbps"].notna()].sort_values("gbps")
    if rows.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.62 * len(rows) + 0.8))
    y = list(range(len(rows)))
    ax.barh(y, rows["gbps"], color=[STATE_COLOURS.get(g.state, "#4c72b0")] * len(rows), height=0.6)
    for yi, (_, r) in zip(y, rows.iterrows()):
        text = f"{fmt_gbps(r['gbps'])} GB/s"
        if r["ceiling_fraction"] is not None and not pd.isna(r["ceiling_fraction"]):
            text += f", {fmt_pct(r['ceiling_fraction'])} of ceiling"
        ax.annotate(text, (r["gbps"], yi), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=8, zorder=4, bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
    ax.set_yticks(y, [_label(r) for _, r in rows.iterrows()], fontsize=8)
    bars = rows["gbps"].tolist()
    ref_gbps = (g.model_bytes() or 0) / g.reference_s / 1e9 if g.reference_s else None
    longest = max(bars + ([ref_gbps] if ref_gbps else []))
    near = [g.ceilings[n] for n in g.limits() if n in g.ceilings and n not in g.unreliable
            and g.ceilings[n] <= longest * CEILING_SPAN]
    top = max([longest * HEADROOM] + [v * 1.08 for v in near])
    log = _wants_log(bars + ([ref_gbps] if ref_gbps else []))
    if ref_gbps:
        ax.axvline(ref_gbps, color=REFERENCE_COLOUR, linestyle="--", linewidth=1.2, zorder=3,
                   label=f"{_reference_legend(g)}, {fmt_gbps(ref_gbps)} GB/s")
    from matplotlib.lines import Line2D
    extra = []
    styles = iter([":", "-.", (0, (1, 3))])
    for name in g.limits():   # the ceilings that bound a load in this state
        if name not in g.ceilings:
            continue
        value, what = g.ceilings[name], CEILING_TEXT.get(name, name)
        if name in g.unreliable:
            extra.append(f"{what} ceiling {value:.2f} GB/s: unreliable, beaten "
                         f"(best observed {g.unreliable[name]:.2f} GB/s)")
        elif value <= top:
            ax.axvline(value, color=CEILING_COLOUR, linestyle=next(styles), linewidth=1.4, zorder=3,
                       label=f"{what} ceiling, {value:.2f} GB/s")
        else:
            extra.append(f"{what} ceiling {value:.2f} GB/s, beyond this axis "
                         f"(the fastest library here reaches {max(bars) / value:.0%} of it)")
    if log:
        _log_axis(ax)
        ax.set_xlim(min(bars) / 2, top * 1.5)
        ax.set_xlabel("GB/s, model bytes / median load time (log scale)")
    else:
        ax.set_xlim(0, top)
        ax.set_xlabel("GB/s, model bytes / median load time")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], linestyle="none") for _ in extra]   # text only, never a line
    labels += extra
    if handles:
        legend = ax.legend(handles, [esc(x) for x in labels], fontsize=8, loc="upper center",
                           bbox_to_anchor=(0.5, _below(ax)), frameon=False, handlelength=2.5)
        for text, label in zip(legend.get_texts(), labels):
            if label in extra:
                text.set_color(CEILING_COLOUR)
    what = "Throughput per library (higher is better)"
    if g.bound_gbps:
        what += f"; % of the binding {CEILING_TEXT.get(g.bound_name or '', g.bound_name)} ceiling"
    ax.set_title(esc(_title(g, what)), fontsize=10)
    return fig


def cdf(g: Group) -> Any | None:
    """The distribution of each library's load times; the reference loader dashed."""
    ok = g.ok()
    if ok.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours, k = plt.get_cmap("tab10"), 0
    for _, r in g.rows.sort_values("median_s").iterrows():
        values = sorted(ok[ok["row"] == r["row"]]["total_s"])
        if not values:
            continue
        # Ten colours, then the same ten dotted, then dash-dotted: past ten libraries the default
        # cycle gave the 1st and 11th the same line (instanttensor's two backends, 0.39 and 9.7 s).
        dashed = r["row"] == g.reference_row
        style = dict(color=REFERENCE_COLOUR, linestyle="--") if dashed else dict(
            color=colours(k % 10), linestyle=("-", ":", "-.")[k // 10 % 3])
        k += not dashed
        # Start at 0 on the first sample, so each curve rises from the axis.
        ax.step([values[0]] + values, [0.0] + [(i + 1) / len(values) for i in range(len(values))],
                where="post", label=esc(f"{r['row']} (n={len(values)})"
                                        + (", loadbench's instrument" if r["is_reference"] else "")), **style)
    if _wants_log(ok["total_s"].tolist()):
        _log_axis(ax)
        ax.set_xlabel("load time (s, log scale)")
    else:
        ax.set_xlabel("load time (s)")
    ax.set_ylabel("fraction of loads at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # never over the curves
    ax.set_title(esc(_title(g, "Distribution of load times")), fontsize=10)
    return fig


def pod_time(g: Group, phases: dict[str, str]) -> Any | None:
    """Where each library's pod spent its time: median seconds of each phase, stacked."""
    docs = g.documents()
    docs = docs[docs["pod_total_s"].notna()]
    cols = [c for c in phases if c in docs and docs[c].notna().any()]
    if docs.empty or not cols:
        return None
    plt = _plt()
    names = sorted(docs["row"].unique())
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.5 * len(names) + 0.6))
    left = [0.0] * len(names)
    colours = plt.get_cmap("tab10")
    for k, col in enumerate(cols):
        widths = [stats.median(docs[docs["row"] == n][col]) or 0.0 for n in names]
        ax.barh(range(len(names)), widths, left=left, height=0.6, color=colours(k % 10),
                label=esc(phases[col]))
        left = [a + b for a, b in zip(left, widths)]
    for i, n in enumerate(names):
        total = stats.median(docs[docs["row"] == n]["pod_total_s"])
        ax.text(left[i], i, f" {fmt_s(total)} s pod total", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), [esc(n) for n in names], fontsize=8)
    ax.set_xlim(0, max(left + [1e-9]) * 1.3)
    ax.set_xlabel("seconds (median per document)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, _below(ax)), ncol=min(len(cols), 5),
              frameon=False)
    ax.set_title(esc(f"Pod time by phase, process start to document\n{g.model} on {g.device}, "
                     f"{_state(g.state)}"), fontsize=10)
    return fig


def aggregate_rate(spans: list[tuple[float, float, float]]) -> tuple[list[float], list[float]]:
    """(times, GB/s in flight from each time on) for (start, end, GB/s) loads: one sweep over
    the sorted starts and ends, so thousands of concurrent pods cost milliseconds."""
    events: dict[float, float] = {}
    for start, end, rate in spans:
        events[start] = events.get(start, 0.0) + rate
        events[end] = events.get(end, 0.0) - rate
    times = sorted(events)
    total, out = 0.0, []
    for t in times:
        total += events[t]
        out.append(max(total, 0.0))
    return times, out


def timeline(ep: list[dict[str, Any]]) -> Any | None:
    """Concurrent pods of one model and device: each load as a bar in time, coloured by its
    measured cache state, and the aggregate GB/s of all loads in flight."""
    spans = []
    for e in ep:
        for _, t in e["trials"].iterrows():
            spans.append((t["started_at"], t["load_end"], str(t["pod"]), t["cache_state"],
                          t["model_bytes"], t["total_s"]))
    if not spans:
        return None
    plt = _plt()
    t0 = min(s[0] for s in spans)
    spans.sort(key=lambda s: s[0])
    pods = list(dict.fromkeys(s[2] for s in spans))   # by first start: a waterfall
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 2.5 + min(len(pods), 40) * 0.12 + 2.5),
                                   sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    row = {p: i for i, p in enumerate(pods)}
    ax1.barh([row[s[2]] for s in spans], [(s[1] - s[0]).total_seconds() for s in spans],
             left=[(s[0] - t0).total_seconds() for s in spans], height=0.8, linewidth=0,
             color=[STATE_COLOURS.get(s[3], "#999999") for s in spans])
    from matplotlib.patches import Patch
    handles = [Patch(color=colour, label=f"{state} (measured before the load)")
               for state, colour in STATE_COLOURS.items() if any(s[3] == state for s in spans)]
    ax1.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax1.set_ylabel(f"pods ({len(pods)})")
    if len(pods) <= MAX_POD_NAMES:
        ax1.set_yticks(range(len(pods)), [esc(p) for p in pods], fontsize=7)
    else:
        ax1.set_yticks([])
    edges, rate = aggregate_rate([((s - t0).total_seconds(), (e - t0).total_seconds(),
                                   b / d / 1e9 if d > 0 and not math.isnan(b) else 0.0)
                                  for s, e, _, _, b, d in spans])
    ax2.step(edges, rate, where="post")
    ax2.set_xlabel("time since the first load started (s)")
    ax2.set_ylabel("aggregate GB/s")
    ax2.grid(alpha=0.3)
    e0 = ep[0]
    peak = max(e["peak_concurrent"] for e in ep)
    ax1.set_title(esc(f"Concurrent loads: {len(pods)} pods, up to {peak} at once, "
                      f"{len(ep)} episode(s)\n{e0['model']} on {e0['device']}"), fontsize=10)
    return fig
