"""From the trial frame to groups and their summary rows: every headline number, computed once.

Why this shape: a group is one model on one device in one measured cache
state, and its rows are library configurations (a label, kept apart by
settings when its documents differ). The rows summarize first-in-process
trials only (`index_in_process` 0: what a pod, one process, pays); later
trials of a process stay in the group as `repeats`, reported apart. Documents
with status error and no verified trial measured nothing: they never form or
join a group (`error_documents()` lists them for the report's errors section).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loadbench.analysis import frame as fr
from loadbench.analysis import stats
from loadbench.analysis.fmt import CEILING_TEXT, fmt_count
from loadbench.storage import ceilings as ceiling_rules

GROUP_KEYS = ["model", "device", "cache_state"]


# --- which rows count where -----------------------------------------------------------------

def error_only(df: pd.DataFrame) -> pd.Series:
    """Rows of documents with status error and no verified trial (a typo in the settings, a
    library not installed, a missing checkpoint): they measured nothing."""
    if df.empty:
        return pd.Series(False, index=df.index, dtype=bool)
    has_ok = (df["status"] == "ok").groupby(df["doc"]).transform("any")
    return (df["doc_status"] == "error") & ~has_ok


def first_in_process(df: pd.DataFrame) -> pd.Series:
    """Rows the headline uses: a process's first load (index 0), or a document without trials."""
    index = df["index_in_process"]
    return (index.isna() | index.eq(0)).fillna(True).astype(bool)


def repeats(df: pd.DataFrame) -> pd.DataFrame:
    """Later loads of a process ("repeat in a warm process"), of documents that measured something."""
    return df[~first_in_process(df) & ~error_only(df)]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """First-in-process rows of documents that measured something: what every headline uses."""
    return df[first_in_process(df) & ~error_only(df)]


# --- groups ----------------------------------------------------------------------------------

@dataclass
class Group:
    """One model on one device in one measured cache state, with its computed rows.
    `trials` are its first-in-process rows, `repeats` its later loads, `everything` both."""
    model: str
    device: str
    state: str
    trials: pd.DataFrame
    repeats: pd.DataFrame = field(default_factory=pd.DataFrame)
    everything: pd.DataFrame = field(default_factory=pd.DataFrame)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)
    ceilings: dict[str, float] = field(default_factory=dict)
    unreliable: dict[str, float] = field(default_factory=dict)
    bound_name: str | None = None
    bound_gbps: float | None = None
    resident: float = 0.0
    reference_s: float | None = None
    reference_row: str | None = None  # the instrument's fastest configuration: reference_s is its
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
        """First-in-process trials of the group whose every tensor matched the manifest."""
        return int((self.trials["status"] == "ok").sum())

    def ok(self) -> pd.DataFrame:
        """The verified first-in-process trials (status ok, with a load time)."""
        t = self.trials
        return t[(t["status"] == "ok") & t["total_s"].notna()]

    def documents(self) -> pd.DataFrame:
        """One row per document of the group, first loads and repeats alike."""
        return (self.everything if len(self.everything) else self.trials).drop_duplicates("doc")

    def limits(self) -> tuple[str, str]:
        """The two ceilings that bound a load of this group: the read (the GET ceiling for
        loads from object storage), then the pinned host-to-device copy."""
        return ceiling_rules.limits_for(self.resident, "s3" if fr.is_remote(self.state) else "local")

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
    """Groups with their rows computed, sorted by model, device and state. Only groups with a
    first-in-process trial are returned; documents that measured nothing form none."""
    groups: list[Group] = []
    if df.empty:
        return groups
    measured = df[~error_only(df)]
    first = first_in_process(measured)
    for (model, device, state), part in measured.groupby(GROUP_KEYS, sort=True):
        mine = first.loc[part.index]
        if not mine.any():
            continue       # only repeats here: they are reported apart
        g = Group(str(model), str(device), str(state), part[mine], part[~mine], part)
        _limits(g)
        groups.append(g)
    # A ceiling is the machine's, not one cache state's: beaten in one group, unreliable in all
    # groups of that model and device.
    beaten: dict[tuple[str, str], dict[str, float]] = {}
    for g in groups:
        for name, observed in g.unreliable.items():
            mine_beaten = beaten.setdefault((g.model, g.device), {})
            mine_beaten[name] = max(mine_beaten.get(name, 0.0), observed)
    for g in groups:
        for name, observed in beaten.get((g.model, g.device), {}).items():
            if name in g.ceilings and name not in g.unreliable:
                g.unreliable[name] = observed
                g.notes.append(f"the {CEILING_TEXT.get(name, name)} ceiling was beaten in another cache "
                               f"state ({observed:.2f} GB/s observed): unreliable here too")
                if g.bound_name == name:
                    g.bound_gbps = None
        g.rows = _rows(g)
    slugs: dict[str, int] = {}
    for g in groups:
        n = slugs[g.slug.lower()] = slugs.get(g.slug.lower(), 0) + 1
        if n > 1:
            g.suffix = f"-{n}"
    return groups


def _limits(g: Group) -> None:
    """The group's ceilings, from every document and load of it: a repeat that beat a
    ceiling proves it unreliable as well as a first load does."""
    docs = g.documents()
    for name in fr.CEILING_NAMES:
        best = docs[f"ceiling_{name}_gbps"].max()
        if isinstance(best, float) and math.isfinite(best) and best > 0:
            g.ceilings[name] = best
    resident = stats.median(g.trials["resident_before"])
    g.resident = resident if resident is not None else float(g.state not in ("cold",))
    every = g.everything
    ok = every[(every["status"] == "ok") & every["total_s"].notna()]
    fastest = ok["gbps"].max() if len(ok) else math.nan
    limits = g.limits()
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
            return f"mismatch: {fmt_count(t['mismatches'])} tensor(s) differ from the manifest"
        if t["doc_error"]:
            return str(t["doc_error"])
    errs = part[part["doc_status"] == "error"]["doc_error"].dropna()
    return str(errs.iloc[0]) if len(errs) else ""


def _rows(g: Group) -> pd.DataFrame:
    nbytes = g.model_bytes()
    refs = fr.reference_libraries()
    every = g.everything
    failed_anywhere = set(every[every["trial"].notna() & (every["status"] != "ok")]["doc"])
    out = []
    for row, part in g.trials.groupby("row", sort=True):
        ok = part[(part["status"] == "ok") & part["total_s"].notna()]
        s = stats.summarize(ok["total_s"])
        median = s.get("median")
        gbps = nbytes / median / 1e9 if median and nbytes else None
        trials = part[part["trial"].notna()]
        failed = trials[trials["status"] != "ok"]
        # An error document none of whose trials failed (cut short by a signal): one error.
        error_docs = part[(part["doc_status"] == "error")].drop_duplicates("doc")
        silent = error_docs[~error_docs["doc"].isin(failed_anywhere)]
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
    ref = rows[rows["is_reference"] & rows["median_s"].notna()]
    best = ref.loc[ref["median_s"].idxmin()] if len(ref) else None
    g.reference_s = None if best is None else float(best["median_s"])
    g.reference_row = None if best is None else str(best["row"])
    rows["x_reference"] = rows["median_s"] / g.reference_s if g.reference_s else None
    return rows


def table(df: pd.DataFrame) -> pd.DataFrame:
    """Every group's summary rows in one DataFrame: what a notebook asks for after `load()`."""
    groups = build(df)
    if not groups:
        return pd.DataFrame()
    return pd.concat([g.rows for g in groups], ignore_index=True)
