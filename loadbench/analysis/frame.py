"""Result documents -> one pandas DataFrame with one row per trial.

Why one flat table: summary.md, summary.csv, the figures, report.html and a
notebook all read the same rows, so they cannot disagree, and anyone can ask
a new question with pandas instead of walking nested JSON. A document without
trials (a run that failed before its first load) still gets one row, with
`trial` missing, so failures are counted and never dropped.

Rows carry their group keys flattened: model, device, `cache_state` (what the
page cache held before the load, measured: cold below 5% resident, warm above
95%, partial between; the requested `cache_mode` is kept beside it, because a
pod that found a neighbour's pages resident was not cold whatever it asked
for), and `row`: the label, plus the settings that set its documents apart
when documents of one label were run with different settings (they are never
pooled; `settings_key` holds each document's settings fingerprint).

Every row also says where its trial stood in its process: `index_in_process`
(how many loads the process made before it; 0 is what a pod pays, the only
trials the headline tables use), read from the trial, else its position in
its document (schema 1 and 2 documents, one process per document). TP trials
keep their ranks' byte counts in `ranks`, and every row its document's
`tp_size`.

Library roles (which library is loadbench's own reference instrument, which
is the baseline most users load with today), the SKIP_* settings and the
trial keys read as they are all come from the loaders' registry and the
result schema, here in one place; analysis code never spells a library name.
"""

from __future__ import annotations

import json
import math
import os
import re
import typing
from typing import Any, Callable, Iterable

import pandas as pd

from loadbench import loaders
from loadbench.config.settings import model_slug
from loadbench.schema.result import PACKAGE, TRIAL_KEYS, Trial

COLD_BELOW = 0.05     # resident fraction under which a load counts as cold
WARM_ABOVE = 0.95     # ... and over which it counts as warm; between: "partial"
MAX_PHASES = 24       # distinct pod-phase names kept as columns; the rest are summed as "other"

# Settings that never set two documents' measurements apart: who ran them and where
# (identity, paths of results), which libraries ran beside them (LIBRARIES and the
# registry's SKIP_* variables, added by `ignored_settings()`), how the report or the
# extras were made (ceilings, inference), and what the group keys already say (the
# cache state is measured per trial; the device by its name). Library option variables
# are replaced by the document's own `options`, so another library's sweep never matters.
IGNORED_FIXED = frozenset({
    "JOB_NAME", "JOB_COMPLETION_INDEX", "POD_NAME", "POD_UID", "NODE_NAME", "POD_NAMESPACE",
    "RES_PATH", "RUN_ID", "DEVICE", "DEVICE_RESOLVED", "LIBRARIES",
    "USE_FP16", "CACHE_MODE", "CEILINGS", "CEILING_SECONDS", "SKIP_INFERENCE", "MAX_NEW_TOKENS",
    "INFERENCE_RUNS", "RESULT_LINES",
})


def ignored_settings() -> frozenset[str]:
    """IGNORED_FIXED and the registry's SKIP_* variables (read now: a library registered at
    run time brings its own)."""
    return IGNORED_FIXED | frozenset(loaders.SKIP_VARS)


def _kind(annotation: Any) -> str | None:
    """'number', 'text' or 'flag' for a scalar field of the schema's Trial; None otherwise."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind(args[0])
    if origin is typing.Literal:
        return "text"
    if origin is typing.Union and len(args) == 1:
        return _kind(args[0])
    if annotation is bool:
        return "flag"
    if annotation in (int, float):
        return "number"
    if annotation is str:
        return "text"
    return None


# Trial keys whose values are read as they are (numbers, text, flags), by the schema's own
# types: a key the schema adds becomes a column with no edit here.
PLAIN_TRIAL = {k: kind for k in TRIAL_KEYS if (kind := _kind(Trial.model_fields[k].annotation))}
TEXT_LIMITS = {"status": 20, "cache_mode": 32, "ceiling": 40}   # the rest: 60 characters
# The trial columns as first published; `trial`, `load_first_token_s` and `load_end` are
# derived, `mismatches` (a count) and `error` (one line) are read from the trial's lists.
PUBLISHED_TRIAL = (
    "trial", "status", "cache_mode", "resident_before", "skeleton_s", "weights_s", "total_s", "gbps",
    "ceiling", "ceiling_gbps", "ceiling_fraction", "ceiling_beaten", "cache_s", "verify_s",
    "first_token_s", "load_first_token_s", "tokens_per_s", "inference_s", "peak_rss_bytes",
    "peak_device_bytes", "tensors_verified", "mismatches", "error", "started_at", "finished_at",
    "load_end")
DERIVED_TRIAL = frozenset({"trial", "load_first_token_s", "load_end"})   # the rest: trial keys (a test)
# Newer plain trial keys (index_in_process, byte counts, ...), appended after the published
# columns so that a column's position never moves.
LATER_TRIAL = tuple(k for k in PLAIN_TRIAL if k not in PUBLISHED_TRIAL)

# The columns of `frame()`, in order; phase columns (pod_<phase>_s, then pod_earlier_s) follow
# pod_total_s, and LATER_COLUMNS follow them.
COLUMNS = (
    "doc", "model", "device", "cache_state", "row", "label", "library", "io_mode", "version", "options",
    "run_id", "settings_key", "settings_variant", "node", "pod", "pod_uid", "job", "completion_index",
    "path", "schema", "doc_status", "doc_error", "model_id", "model_bytes", "dtype", "params",
    "device_type", "torch", "python",
    *PUBLISHED_TRIAL,
    "ceilings_source", "ceilings_unreliable", "ceiling_storage_read_gbps",
    "ceiling_page_cache_read_gbps", "ceiling_h2d_pinned_gbps", "ceiling_h2d_pageable_gbps",
    "ceiling_s3_get_gbps",
    "pod_started_at", "pod_total_s",
)
# `ranks`: a TP trial's ranks as (rank, bytes, storage_read_bytes, cache_read_bytes) dicts.
# `pod_packages`: (phase, package) pairs, the third-party packages each pod phase imported first.
LATER_COLUMNS = (*LATER_TRIAL, "tp_size", "ranks", "pod_packages")
RANK_NUMBERS = ("bytes", "storage_read_bytes", "cache_read_bytes", "total_s")
MAX_PACKAGES_READ = 500  # package names read per phase of a document: a pod imports a few dozen
CEILING_NAMES = ("storage_read", "page_cache_read", "h2d_pinned", "h2d_pageable", "s3_get")
NUMERIC = ("model_bytes", "params", "load_first_token_s", "mismatches", "pod_total_s") + tuple(
    k for k, kind in PLAIN_TRIAL.items() if kind == "number") + tuple(
    f"ceiling_{n}_gbps" for n in CEILING_NAMES)
INTEGERS = ("trial", "index_in_process", "tp_size")


# --- library roles, from the registry -------------------------------------------------------

def reference_libraries() -> frozenset[str]:
    """Libraries the registry gives the role "instrument" (loadbench's own reference loader):
    shown as a line to compare with, never as a pick."""
    return frozenset(loaders.with_role("instrument"))


def baseline_library() -> str | None:
    """The library a user compares with first (role "baseline" in the registry:
    `from_pretrained`, as most people load today)."""
    return next(iter(loaders.with_role("baseline")), None)


def describe(library: str) -> str:
    """The registry's one-line description of a library, or '' for one it does not know."""
    lib = loaders.BY_NAME.get(library)
    return lib.describe if lib else ""


def package(library: str) -> str:
    """The distribution whose version a document records for this library."""
    lib = loaders.BY_NAME.get(library)
    return lib.package if lib else library


# --- defensive readers: a hostile value becomes missing, never an exception ------------------

def _num(value: Any) -> float:
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan
    return f if math.isfinite(f) and f >= 0 else math.nan


def _text(value: Any, limit: int = 500) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# Loads read from object storage form groups of their own: their ceiling is the GET ceiling, and
# their state is the server's, as the pod was run (this node's residency is 0% whatever it held).
REMOTE_PREFIX = "object storage, "


def remote_state(requested: str | None) -> str:
    """The cache state of a load from object storage: the mode its pod was run in."""
    return f"{REMOTE_PREFIX}{requested or 'unknown'}"


def is_remote(state: str) -> bool:
    return str(state).startswith(REMOTE_PREFIX)


def cache_state(resident: float | None, requested: str | None) -> str:
    """cold / warm / partial by measured residency; the requested mode when none was measured."""
    if isinstance(resident, (int, float)) and math.isfinite(resident):
        if resident < COLD_BELOW:
            return "cold"
        if resident > WARM_ABOVE:
            return "warm"
        return "partial"
    return requested or "unknown"


def fingerprint(doc: dict[str, Any]) -> str:
    """The settings that could change what a document measured, as one canonical string:
    two documents of one label with different fingerprints are never pooled."""
    option_envs = {o.env for _, o in loaders.all_options()}
    ignored = ignored_settings()
    settings = {k: v for k, v in _dict(doc.get("settings")).items()
                if k not in ignored and k not in option_envs and v is not None}
    if settings.get("MODEL_URI"):  # MODEL_PATH is then the pod's download target or node cache,
        settings.pop("MODEL_PATH", None)  # not where the weights come from: MODEL_URI says that
    options = doc.get("options") if "options" in doc else doc.get("tuning")
    for k, v in _dict(options).items():
        if v is not None:
            settings[f"option {k}"] = v
    return json.dumps(settings, sort_keys=True, default=str)


def _error_line(err: Any) -> str | None:
    e = _dict(err)
    if not e:
        return None
    return _text(f"{e.get('type') or 'error'}: {e.get('message') or ''}".rstrip(": "))


def _phase_column(name: str) -> str:
    return "pod_" + (re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "phase") + "_s"


def _doc_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """Everything a document's rows share."""
    settings = _dict(doc.get("settings"))
    model = _dict(doc.get("model"))
    device = _dict(doc.get("device"))
    ident = _dict(doc.get("identity"))
    versions = _dict(doc.get("versions"))
    ceilings = _dict(doc.get("ceilings"))
    pod = _dict(doc.get("pod"))
    source = _dict(doc.get("source"))
    library = _text(doc.get("library"), 200) or "unknown"
    who = ident.get("pod") or (f"{ident.get('hostname') or ident.get('node') or 'host'}"
                               f":{ident.get('pid') if ident.get('pid') is not None else '?'}")
    options = doc.get("options") if "options" in doc else doc.get("tuning")
    version = versions.get(package(library))
    out = {
        "model": _text(model.get("name"), 100) or model_slug(str(settings.get("MODEL_ID") or "unknown")),
        "device": _text(device.get("name"), 100),
        "label": _text(doc.get("label"), 200) or library, "library": library,
        "io_mode": _text(doc.get("io_mode"), 200), "version": _text(version, 60),
        "options": json.dumps(_dict(options), sort_keys=True, default=str),
        "run_id": _text(doc.get("run_id"), 200), "settings_key": fingerprint(doc),
        "node": _text(ident.get("node"), 200), "pod": _text(who, 200),
        "pod_uid": _text(ident.get("pod_uid"), 200), "job": _text(ident.get("job"), 200),
        "completion_index": _text(ident.get("completion_index"), 40),
        "path": doc.get("_path"), "schema": _text(doc.get("schema"), 40),
        "doc_status": _text(doc.get("status"), 20), "doc_error": _error_line(doc.get("error")),
        "model_id": _text(model.get("id") or settings.get("MODEL_ID"), 300),
        "model_bytes": _num(model.get("bytes")), "dtype": _text(model.get("dtype"), 20),
        "params": _num(model.get("params")), "device_type": _text(device.get("type"), 20),
        "torch": _text(versions.get("torch"), 60), "python": _text(versions.get("python"), 60),
        "ceilings_source": _text(ceilings.get("source"), 20),
        "ceilings_unreliable": ",".join(sorted(str(x) for x in _list(ceilings.get("unreliable")))),
        "pod_started_at": _text(pod.get("process_started_at"), 60),
        "pod_total_s": _num(pod.get("total_s")),
        "tp_size": _count(doc.get("tp_size"), 1),
        "requested": _text(_dict(doc.get("settings")).get("CACHE_MODE"), 32),
        # read from object storage, not through a node cache (see REMOTE_PREFIX; a trial that
        # filled the node cache inside its load counts as read from object storage too)
        "remote": bool(source.get("uri")) and source.get("cache") != "node",
    }
    for name in CEILING_NAMES:
        out[f"ceiling_{name}_gbps"] = _num(_dict(ceilings.get(name)).get("gbps"))
    phases: dict[str, float] = {}
    packages: set[tuple[str, str]] = set()  # (phase column, package), bounded per document
    for p in _list(pod.get("phases")):
        p = _dict(p)
        seconds = _num(p.get("seconds"))
        if isinstance(p.get("name"), str) and not math.isnan(seconds):
            phases[p["name"]] = phases.get(p["name"], 0.0) + seconds
            if len(phases) <= MAX_PHASES:
                col = _phase_column(p["name"])
                packages.update((col, n) for n in _list(p.get("packages"))[:MAX_PACKAGES_READ]
                                if isinstance(n, str) and PACKAGE.fullmatch(n))
    out["_phases"] = phases
    out["pod_packages"] = tuple(sorted(packages))
    return out


def _count(value: Any, default: int | None = None) -> int | None:
    """A non-negative whole number, else `default`."""
    f = _num(value)
    return int(f) if not math.isnan(f) and f == int(f) and f < 2**62 else default


def _ranks(value: Any) -> tuple[dict[str, Any], ...] | None:
    """A TP trial's rank records, reduced to what the report reads (numbers or NaN)."""
    out = []
    for r in _list(value):
        r = _dict(r)
        rank = _count(r.get("rank"))
        if rank is not None:
            out.append({"rank": rank, **{k: _num(r.get(k)) for k in RANK_NUMBERS}})
    return tuple(out) or None


def _trial_fields(t: dict[str, Any], i: int | None, nbytes: float) -> dict[str, Any]:
    out: dict[str, Any] = {"trial": i}
    for key, kind in PLAIN_TRIAL.items():
        value = t.get(key)
        out[key] = (_num(value) if kind == "number" else _text(value, TEXT_LIMITS.get(key, 60))
                    if kind == "text" else value if isinstance(value, bool) else None)
    total = out["total_s"]
    out["status"] = out["status"] or "unknown"
    # Recomputed from the model's bytes, so every rate in a report has one definition.
    if nbytes > 0 and total > 0:
        out["gbps"] = nbytes / total / 1e9
    out["load_first_token_s"] = total + out["first_token_s"]
    out["mismatches"] = float(len(_list(t.get("mismatches"))))
    out["error"] = _error_line(t.get("error"))
    # Its place in its process: recorded (schema 3), else its position in its document.
    out["index_in_process"] = _count(t.get("index_in_process"), i)
    out["ranks"] = _ranks(t.get("ranks"))
    # a node cache filled (or waited for) inside this load: it read the bucket, not this node
    out["fetched"] = _dict(_dict(t.get("library_info")).get("fetch")).get("role") in ("filled", "waited")
    return out


def _empty_trial() -> dict[str, Any]:
    out = _trial_fields({}, None, math.nan)
    out["status"] = "error"
    return out


def frame(docs: Iterable[dict[str, Any]], progress: Callable[[int], None] | None = None
          ) -> pd.DataFrame:
    """One row per trial (one per trial-less document), group keys flattened; see the module
    docstring for the columns that need explaining. `progress(n)` is called every 500 documents."""
    records: list[dict[str, Any]] = []
    phase_names: list[str] = []
    for k, doc in enumerate(docs):
        if progress and k and k % 500 == 0:
            progress(k)
        if not isinstance(doc, dict):
            continue
        shared = _doc_fields(doc)
        shared["doc"] = k
        _merge_order(phase_names, list(shared["_phases"]))
        trials = [t for t in _list(doc.get("trials")) if isinstance(t, dict)]
        if not trials:
            records.append({**shared, **_empty_trial()})
        for i, t in enumerate(trials):
            records.append({**shared, **_trial_fields(t, i, shared["model_bytes"])})
    kept = phase_names[:MAX_PHASES]
    phase_cols: dict[str, list[str]] = {}
    for name in kept:
        phase_cols.setdefault(_phase_column(name), []).append(name)
    for r in records:
        phases = r.pop("_phases")
        r["pod_packages"] = tuple(p for p in r["pod_packages"] if p[0] in phase_cols)
        for col, names in phase_cols.items():
            r[col] = sum(phases.get(n, 0.0) for n in names) if phases else math.nan
        if len(phase_names) > MAX_PHASES:
            other = [v for n, v in phases.items() if n not in kept]
            r["pod_more_phases_s"] = sum(other) if phases else math.nan
    if len(phase_names) > MAX_PHASES:
        phase_cols["pod_more_phases_s"] = ["other phases"]
    columns = list(COLUMNS) + list(phase_cols) + list(LATER_COLUMNS) + ["requested", "remote", "fetched"]
    df = pd.DataFrame.from_records(records, columns=columns)
    df.attrs["phases"] = {col: " + ".join(names) for col, names in phase_cols.items()}
    df = _derive(df)
    if phase_cols:
        # What the document's own phases leave out of its pod's total: the libraries the pod ran
        # before this one, and writing their documents. With it, the phases add up to the total.
        named = df[list(phase_cols)].sum(axis=1, min_count=1)
        df.insert(len(COLUMNS) + len(phase_cols), "pod_earlier_s",
                  (df["pod_total_s"] - named).clip(lower=0))
        df.attrs["phases"]["pod_earlier_s"] = "earlier libraries in the pod"
    return df


def _merge_order(order: list[str], names: list[str]) -> None:
    """Add names to `order`, each new one right after the name it followed in `names`,
    so phases keep the order pods ran them in whichever document showed them first."""
    previous = None
    for name in names:
        if name not in order:
            order.insert(order.index(previous) + 1 if previous is not None else 0, name)
        previous = name


def _derive(df: pd.DataFrame) -> pd.DataFrame:
    """Columns computed across documents: types, cache state, devices of failed runs, rows."""
    for col in NUMERIC + tuple(df.attrs.get("phases", {})):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in INTEGERS:
        df[col] = pd.array([None if v is None or v != v else int(v) for v in df[col]], dtype="Int64")
    for col in ("started_at", "finished_at", "pod_started_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="ISO8601")
    try:
        df["load_end"] = df["started_at"] + pd.to_timedelta(df["total_s"], unit="s", errors="coerce")
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):  # past pandas' year 2262
        df["load_end"] = [_end(s, t) for s, t in zip(df["started_at"], df["total_s"])]
    asked = [m if isinstance(m, str) else q if isinstance(q, str) else None
             for m, q in zip(df["cache_mode"], df["requested"])]
    df["cache_state"] = [remote_state(a) if remote is True or fetched is True else cache_state(r, a)
                         for r, a, remote, fetched in zip(df["resident_before"], asked, df["remote"],
                                                          df["fetched"])]
    df = df.drop(columns=["requested", "remote", "fetched"])
    # A run that failed before it saw its device joins a group of the same model and state.
    known = (df.dropna(subset=["device"]).groupby(["model", "cache_state"])["device"].first().to_dict()
             if len(df) else {})
    missing = df["device"].isna()
    df.loc[missing, "device"] = [known.get((m, s), "unknown") for m, s in
                                 zip(df.loc[missing, "model"], df.loc[missing, "cache_state"])]
    df["settings_variant"] = ""
    df["row"] = df["label"]
    for _, part in df.groupby(["model", "device", "cache_state", "label"], sort=False):
        # Only documents that measured something decide whether a label splits; a run that
        # failed before its first trial joins the row of its own settings, else its label's.
        measured = list(part[part["trial"].notna()]["settings_key"].unique())
        if len(measured) < 2:
            continue
        names = variant_names(list(dict.fromkeys(measured + list(part["settings_key"]))))
        variant = part["settings_key"].map(names)
        df.loc[part.index, "settings_variant"] = variant
        df.loc[part.index, "row"] = part["label"] + " [" + variant + "]"
    return df.reset_index(drop=True)


def _end(start: Any, seconds: float) -> Any:
    try:
        return start + pd.Timedelta(seconds=seconds)
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        return pd.NaT


def variant_names(keys: list[str], limit: int = 3) -> dict[str, str]:
    """For fingerprints that differ, a short name each: only the settings that differ."""
    parsed = {k: json.loads(k) for k in keys}
    names = sorted(set().union(*parsed.values()))
    differ = [n for n in names if len({json.dumps(p.get(n), sort_keys=True, default=str)
                                       for p in parsed.values()}) > 1]
    out = {}
    for k, p in parsed.items():
        parts = [f"{n}={_short(p.get(n, 'unset')) or '(empty)'}" for n in differ[:limit]]
        if len(differ) > limit:
            parts.append(f"+{len(differ) - limit} more")
        out[k] = ", ".join(parts)
    if len(set(out.values())) < len(out):  # never two rows of one name
        for i, k in enumerate(sorted(out)):
            out[k] = f"{out[k]} #{i + 1}"
    return out


def _short(value: Any, limit: int = 32) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = "".join(c for c in text if c.isprintable() and c not in "[]$")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def differing_settings(keys: Iterable[str]) -> dict[str, list[str]]:
    """Setting -> the distinct values it took across these fingerprints (only those that differ)."""
    parsed = [json.loads(k) for k in set(keys)]
    names = sorted(set().union(*parsed)) if parsed else []
    out = {}
    for n in names:
        values = sorted({_short(p.get(n, "unset"), 80) for p in parsed})
        if len(values) > 1:
            out[n] = values
    return out


def load(root: str | os.PathLike[str], progress: Callable[[int], None] | None = None
         ) -> pd.DataFrame:
    """Every result document under `root` as `frame()` rows; files that are not valid
    documents are listed, with why, in `df.attrs["skipped"]` as (path, reason) pairs."""
    from loadbench import schema
    docs, skipped = schema.read_many(os.fspath(root))
    df = frame(docs, progress)
    df.attrs["skipped"] = list(skipped)
    df.attrs["documents"] = len(docs)
    return df
