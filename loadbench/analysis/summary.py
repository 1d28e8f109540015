"""From result documents to groups, rows and tables (summary.md, summary.csv).

A group is one model on one device kind in one cache mode; rows are library
configurations. Every number is computed here from raw trials; error
documents are counted and listed, never dropped silently.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Sequence

from loadbench.analysis import stats
from loadbench.storage import ceilings
from loadbench.config import model_slug

COLUMNS = ("library", "version", "n", "median s", "mean s (Tukey)", "removed", "p5 s", "p95 s",
           "GB/s", "% of ceiling", "tokens/s", "verified", "errors")


@dataclass
class Group:
    model: str
    device: str
    mode: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.device, self.mode

    @property
    def title(self) -> str:
        return f"{self.model} on {self.device}, {self.mode}"

    @property
    def slug(self) -> str:
        raw = f"{self.model}-{self.device}-{self.mode}"
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in raw)

    def labels(self) -> list[str]:
        return sorted({d["label"] for d in self.docs + self.errors})

    def trials(self, label: str) -> list[dict[str, Any]]:
        return [t for d in self.docs if d["label"] == label for t in d["trials"]
                if t.get("status") == "ok"]

    def model_bytes(self) -> int | None:
        for d in self.docs:
            if d.get("model"):
                return d["model"]["bytes"]
        return None

    def ceilings(self) -> dict[str, float]:
        """Best measured value of each ceiling across the group's documents."""
        best: dict[str, float] = {}
        for d in self.docs:
            for name, c in (d.get("ceilings") or {}).items():
                if isinstance(c, dict) and c.get("gbps"):
                    best[name] = max(best.get(name, 0.0), c["gbps"])
        return best

    def resident(self) -> float:
        """Median measured residency before the group's loads (what bounds them)."""
        values = [t["resident_before"] for d in self.docs for t in d["trials"]
                  if t.get("resident_before") is not None]
        return stats.percentile(sorted(values), 50) if values else float(self.mode != "cold")

    def bound(self) -> tuple[str | None, float | None]:
        """The binding ceiling, by the same rule each trial uses (ceilings.bound)."""
        return ceilings.bound({n: {"gbps": v} for n, v in self.ceilings().items()}, self.resident())


def _mode(doc: dict[str, Any]) -> str:
    modes = {t.get("cache_mode") for t in doc.get("trials", [])} - {None}
    if len(modes) == 1:
        return modes.pop()
    return (doc.get("settings") or {}).get("CACHE_MODE") or "unknown"


def _model_name(doc: dict[str, Any]) -> str:
    name = (doc.get("model") or {}).get("name")
    return str(name or model_slug(str((doc.get("settings") or {}).get("MODEL_ID") or "unknown")))


def group(docs: list[dict[str, Any]]) -> list[Group]:
    """Groups by model, device and cache mode. An error document, which may
    not know its device, joins a group of the same model and mode."""
    groups: dict[tuple[str, str, str], Group] = {}
    for doc in sorted(docs, key=lambda d: d["status"] != "ok"):
        model, mode = _model_name(doc), _mode(doc)
        device = (doc.get("device") or {}).get("name")
        if doc["status"] != "ok" and not device:
            device = next((k[1] for k in groups if k[0] == model and k[2] == mode), "unknown")
        key = (model, str(device or "unknown"), mode)
        g = groups.setdefault(key, Group(*key))
        (g.docs if doc["status"] == "ok" else g.errors).append(doc)
    return [groups[k] for k in sorted(groups)]


def _version(docs: list[dict[str, Any]], library: str) -> str:
    package = {"huggingface": "transformers", "huggingface-bin": "transformers",
               "runai-streamer": "runai-model-streamer"}.get(library, library)
    versions = {str((d.get("versions") or {}).get(package)) for d in docs}
    return ", ".join(sorted(versions)) or "-"


def rows(g: Group) -> list[dict[str, Any]]:
    """One row per library configuration, with the statistics from raw trials."""
    out = []
    nbytes = g.model_bytes()
    _, ceiling = g.bound()
    for label in g.labels():
        docs = [d for d in g.docs if d["label"] == label]
        errs = [d for d in g.errors if d["label"] == label]
        trials = g.trials(label)
        all_trials = [t for d in docs + errs for t in d.get("trials", [])]
        s = stats.summarize([t["total_s"] for t in trials])
        tok = stats.summarize([t["tokens_per_s"] for t in trials if t.get("tokens_per_s")])
        library = (docs or errs)[0]["library"]
        gbps = nbytes / s["median"] / 1e9 if trials and nbytes else None
        out.append({
            "label": label, "library": library, "version": _version(docs or errs, library),
            "summary": s, "gbps": gbps, "ceiling_fraction": gbps / ceiling if gbps and ceiling else None,
            "tokens_per_s": tok.get("median"), "verified": len(trials), "trials": len(all_trials),
            "errors": len(errs) + sum(1 for t in all_trials if t.get("status") != "ok"),
            "warnings": stats.warnings(s, f"{g.title}, {label}") if trials else [],
        })
    return out


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def row_cells(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    return [r["label"], r["version"], str(s["n"]), _fmt(s.get("median")), _fmt(s.get("tukey_mean")),
            str(s.get("tukey_removed", "-")), _fmt(s.get("p5")), _fmt(s.get("p95")),
            _fmt(r["gbps"], ".2f"),
            "-" if r["ceiling_fraction"] is None else f"{r['ceiling_fraction']:.0%}",
            _fmt(r["tokens_per_s"], ".1f"), f"{r['verified']}/{r['trials']}", str(r["errors"])]


def markdown(groups: list[Group], skipped: list[tuple[str, str]]) -> str:
    lines = ["# loadbench summary", "",
             f"Load time is skeleton + weights until the device is synchronized. Mean after "
             f"outlier removal uses {stats.OUTLIER_RULE} ('removed' counts the runs left out). "
             "GB/s is model bytes over the median time; % of ceiling divides it by the lower of "
             "the storage read (cold) or page-cache read (warm) ceiling and the pinned "
             "host-to-device ceiling, best values measured in the group. 'verified' counts "
             "trials whose every tensor matched the manifest bit for bit.", ""]
    for g in groups:
        name, ceiling = g.bound()
        lines += [f"## {g.title}", ""]
        if ceiling:
            lines += [f"Ceiling: {name} {ceiling:.2f} GB/s. "
                      + ", ".join(f"{k} {v:.2f}" for k, v in sorted(g.ceilings().items())), ""]
        lines.append("| " + " | ".join(COLUMNS) + " |")
        lines.append("|" + "---|" * len(COLUMNS))
        notes = []
        for r in rows(g):
            lines.append("| " + " | ".join(row_cells(r)) + " |")
            notes += r["warnings"]
        for d in g.errors:
            e = d.get("error") or {}
            notes.append(f"error document {d.get('_path', '?')}: {e.get('type')}: {e.get('message')}")
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    if skipped:
        lines += ["## Skipped files", ""] + [f"- {p}: {why}" for p, why in skipped] + [""]
    return "\n".join(lines)


def csv_text(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "device", "cache_mode"] + list(COLUMNS))
    for g in groups:
        for r in rows(g):
            w.writerow([g.model, g.device, g.mode] + row_cells(r))
    return buf.getvalue()


def text_table(table: list[Sequence[str]]) -> str:
    """Left-aligned columns for a terminal; the first row is the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def terminal(groups: list[Group]) -> str:
    return "\n\n".join(g.title + "\n" + text_table([list(COLUMNS)] + [row_cells(r) for r in rows(g)])
                       for g in groups) + "\n"


def overlapping(g: Group) -> bool:
    """Did trials from different documents run at the same time (parallel pods)?"""
    spans = sorted((t["started_at"], t["finished_at"], id(d)) for d in g.docs for t in d["trials"]
                   if t.get("started_at") and t.get("finished_at"))
    return any(b[0] < a[1] and b[2] != a[2] for a, b in zip(spans, spans[1:]))
