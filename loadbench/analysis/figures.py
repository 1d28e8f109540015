"""Figures for a group of results (matplotlib, imported only when plotting)."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from loadbench.storage.ceilings import limits_for
from loadbench.analysis.summary import Group, rows


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _title(g: Group, what: str) -> str:
    n = sum(len(g.trials(label)) for label in g.labels())
    return f"{what}\n{g.model} on {g.device}, {g.mode} page cache, n={n} verified loads"


def _save(fig: Any, out: str, name: str, formats: list[str]) -> list[str]:
    paths = []
    for fmt in formats:
        path = os.path.join(out, f"{name}.{fmt}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    _plt().close(fig)
    return paths


def load_times(g: Group, out: str, formats: list[str]) -> list[str]:
    """Box plot of load time per library with every trial drawn over it."""
    plt = _plt()
    labels = [lab for lab in g.labels() if g.trials(lab)]
    data = [[t["total_s"] for t in g.trials(lab)] for lab in labels]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels) + 2), 4.5))
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right")
    for i, values in enumerate(data, start=1):
        jitter = [i + (k % 5 - 2) * 0.04 for k in range(len(values))]
        ax.scatter(jitter, values, s=14, alpha=0.7, zorder=3)
    ax.set_ylabel("load time, skeleton + weights (s)")
    ax.set_ylim(bottom=0)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(_title(g, "Load time per library (lower is better)"), fontsize=10)
    return _save(fig, out, f"{g.slug}-load-time", formats)


def throughput(g: Group, out: str, formats: list[str]) -> list[str]:
    """Median GB/s per library, with the measured ceilings as horizontal lines.

    The axis is scaled to the ceiling that binds this mode; a looser one that
    would squash the bars is named in the legend instead of drawn. Values go
    under the bars, where no line can cross them.
    """
    plt = _plt()
    rs = [r for r in rows(g) if r["gbps"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rs) + 2), 4.8))
    ax.bar(range(len(rs)), [r["gbps"] for r in rs], color="#4c72b0")
    ceilings = g.ceilings()
    names = {"storage_read": "storage read", "page_cache_read": "page-cache read",
             "h2d_pinned": "pinned host-to-device"}
    wanted = [n for n in limits_for(g.resident()) if n in ceilings]
    binding = g.bound()[1] or 0.0
    top = max([r["gbps"] for r in rs] + [binding, 1e-9]) * 1.25
    for name, style in zip(wanted, ["--", ":"]):
        value = ceilings[name]
        if value <= top:
            ax.axhline(value, linestyle=style, color="#c44e52", linewidth=1.2,
                       label=f"{names[name]} ceiling, {value:.1f} GB/s")
        else:
            ax.plot([], [], linestyle=style, color="#c44e52",
                    label=f"{names[name]} ceiling, {value:.1f} GB/s (above this axis)")
    ax.set_ylim(0, top)
    ticks = [f"{r['label']}\n{r['gbps']:.2f} GB/s"
             + (f", {r['ceiling_fraction']:.0%}" if r["ceiling_fraction"] else "") for r in rs]
    ax.set_xticks(range(len(rs)), ticks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GB/s (model bytes / median load time)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(_title(g, "Throughput against the machine's limits (GB/s, % of the binding ceiling)"),
                 fontsize=10)
    return _save(fig, out, f"{g.slug}-throughput", formats)


def cdf(g: Group, out: str, formats: list[str]) -> list[str]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in g.labels():
        values = sorted(t["total_s"] for t in g.trials(label))
        if values:
            # Start at 0 on the first sample, so each curve rises from the axis.
            ax.step([values[0]] + values, [0.0] + [(i + 1) / len(values) for i in range(len(values))],
                    where="post", label=f"{label} (n={len(values)})")
    ax.set_xlabel("load time (s)")
    ax.set_ylabel("fraction of loads at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # never over the curves
    ax.set_title(_title(g, "Distribution of load times"), fontsize=10)
    return _save(fig, out, f"{g.slug}-cdf", formats)


def timeline(g: Group, out: str, formats: list[str]) -> list[str]:
    """Parallel pods: each load as a bar in time, and the aggregate GB/s."""
    plt = _plt()
    nbytes = g.model_bytes() or 0
    spans = []
    for d in g.docs:
        who = d["identity"].get("pod") or d["identity"].get("hostname")
        for t in d["trials"]:
            if t.get("status") == "ok" and t.get("total_s"):
                end = datetime.fromisoformat(t["finished_at"]).timestamp()
                start = datetime.fromisoformat(t["started_at"]).timestamp()
                spans.append((start, min(end, start + t["total_s"]), f"{d['label']} {who}"))
    if not spans:
        return []
    t0 = min(s[0] for s in spans)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for i, (start, end, _) in enumerate(sorted(spans)):
        ax1.barh(i, end - start, left=start - t0, height=0.8)
    ax1.set_ylabel("load (one bar each)")
    edges = sorted({s[0] - t0 for s in spans} | {s[1] - t0 for s in spans})
    rate = [sum(nbytes / (e - s) / 1e9 for s, e, _ in spans if s - t0 <= a < e - t0) for a in edges]
    ax2.step(edges, rate, where="post")
    ax2.set_xlabel("time since first load started (s)")
    ax2.set_ylabel("aggregate GB/s")
    ax2.grid(alpha=0.3)
    ax1.set_title(_title(g, "Concurrent loads and their aggregate throughput"), fontsize=10)
    return _save(fig, out, f"{g.slug}-timeline", formats)
