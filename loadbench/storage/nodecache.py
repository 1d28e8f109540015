"""A node-local cache of S3 checkpoints, shared by the pods of a node (S3_CACHE=node).

    <cache_root>/                         MODEL_PATH: a hostPath or a PVC the node's pods share
      .locks/<entry>.lock                 one flock per entry: one pod fills, the others wait
      <bucket>/<prefix...>/               the entry (see entry_path)
        .loadbench-cache.json             the entry's record, renamed in LAST: what is complete
        manifest.json  config.json        as in a checkpoint folder
        <format>/                         each format folder renamed in whole
        .fill.partial-*/                  a fill in progress (or one that was killed)

`ensure_cached(uri, cache_root)` returns the entry for the asked formats, complete:

- hit: the record says the formats are there, every file has its recorded size, and (with
  `revalidate`) the bucket still lists the same ETags and sizes: read locally, no lock;
- otherwise the pod takes the entry's exclusive flock (a killed pod releases it); one that
  finds the entry complete once it holds the lock "waited"; the one that does not "filled":
  it removes what killed fills left (.fill.partial-*), downloads the missing formats into a
  fresh .fill.partial-* folder (objectstore.download_folder: manifest first, sizes checked,
  every GET pinned to the listed ETag; with verify="etag" the files' MD5 ETags too), renames
  each format folder into place, then the manifest, then the record.

A reader sees a format only through the record, and the record names only folders already
renamed in whole: nothing half-written is ever visible. An entry whose objects changed in the
bucket (a re-save) is moved aside and filled again.

S3_CACHE=none is `fetch(..., mode="none")`: a plain download into MODEL_PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from loadbench.errors import ConfigError, Transient
from loadbench.schema.manifest import MANIFEST
from loadbench.storage import objectstore
from loadbench.storage.files import safe_component, write_json_atomic
from loadbench.storage.objectstore import DEFAULT_CONCURRENCY, DEFAULT_PART_BYTES, ObjectInfo, S3Uri

CACHE_MODES = ("none", "node")
MARKER = ".loadbench-cache.json"
MARKER_SCHEMA = "loadbench.nodecache/1"
STAGING = ".fill.partial-"
RETIRED = ".old-"
VERIFY = ("size", "etag")


def parse_cache_mode(text: str | None, variable: str = "S3_CACHE") -> str:
    """'none' (each pod downloads) or 'node' (the node's pods share one copy); unset is none."""
    value = (text or "none").strip().lower()
    if value not in CACHE_MODES:
        raise ConfigError(f"{variable}={text!r} is not one of {', '.join(CACHE_MODES)}: use none (each "
                          "pod downloads into MODEL_PATH) or node (pods on a node share MODEL_PATH)")
    return value


def entry_name(uri: S3Uri | str) -> str:
    """'<bucket>/<prefix components>', each made safe for a path; a short hash of the URI is
    appended to the last component when making it safe changed anything (no two URIs share)."""
    u = objectstore.parse_uri(uri) if isinstance(uri, str) else uri
    raw = [u.bucket, *(u.prefix.split("/") if u.prefix else [])]
    safe = [safe_component(c, "-") for c in raw]
    if safe != raw or any(c.startswith(".") for c in safe):
        safe = [c.lstrip(".") or "-" for c in safe]
        safe[-1] = f"{safe[-1]}-{hashlib.sha256(str(u).encode()).hexdigest()[:8]}"
    return "/".join(safe)


def entry_path(cache_root: str, uri: S3Uri | str) -> str:
    """Where the checkpoint at `uri` lives in the cache: cache_root/<bucket>/<prefix>."""
    return os.path.join(cache_root, *entry_name(uri).split("/"))


def lock_path(cache_root: str, uri: S3Uri | str) -> str:
    name = entry_name(uri)
    readable = safe_component(name.replace("/", "--"), "entry")[:80]
    return os.path.join(cache_root, ".locks",
                        f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:12]}.lock")


@contextlib.contextmanager
def _locked(path: str, timeout: float | None) -> Iterator[float]:
    """Hold an exclusive flock on `path`; yields the seconds spent waiting for it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        start = time.perf_counter()
        if timeout is None:
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.perf_counter() - start > timeout:
                        raise Transient(f"{path}: another pod has been filling this cache entry for "
                                        f"over {timeout:g} s; retry later") from None
                    time.sleep(0.02)
        try:
            yield time.perf_counter() - start
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_record(entry: str) -> dict[str, Any] | None:
    """The entry's record (what a fill completed), or None when there is none or it is unreadable."""
    try:
        with open(os.path.join(entry, MARKER)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("schema") != MARKER_SCHEMA:
        return None
    if not isinstance(record.get("objects"), dict) or not isinstance(record.get("formats"), list):
        return None
    return record


def _relevant(record: dict[str, Any], formats: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The record's objects that a reader of `formats` needs: theirs and the root files."""
    return {rel: o for rel, o in record["objects"].items()
            if "/" not in rel or rel.split("/", 1)[0] in formats}


def problems(entry: str, record: dict[str, Any] | None, formats: Sequence[str] | None,
             listing: dict[str, ObjectInfo] | None) -> list[str]:
    """Why the entry cannot serve `formats` (all the manifest's when None); [] when it can.
    Local sizes are always checked; the listing (when given) must hold the same sizes and ETags."""
    if record is None:
        return ["no complete fill recorded"]
    asked = list(record.get("all_formats") or record["formats"]) if formats is None else list(formats)
    missing = [f for f in asked if f not in record["formats"]]
    if missing:
        return [f"format(s) {', '.join(missing)} not cached"]
    out = []
    for rel, obj in _relevant(record, asked).items():
        path = os.path.join(entry, *rel.split("/"))
        try:
            size = os.path.getsize(path)
        except OSError:
            out.append(f"{rel} is missing")
            continue
        if size != obj.get("bytes"):
            out.append(f"{rel} is {size} bytes, {obj.get('bytes')} were cached")
        if listing is not None:
            remote = listing.get(rel)
            if remote is None:
                out.append(f"{rel} is no longer in the bucket")
            elif remote.bytes != obj.get("bytes") or remote.etag != obj.get("etag"):
                out.append(f"{rel} changed in the bucket (ETag {remote.etag}, cached {obj.get('etag')})")
    return out


def _stale_in_bucket(record: dict[str, Any] | None, listing: dict[str, ObjectInfo]) -> bool:
    """Whether any object the entry holds differs from (or is gone from) the bucket."""
    if record is None:
        return False
    for rel, obj in record["objects"].items():
        remote = listing.get(rel)
        if remote is None or remote.bytes != obj.get("bytes") or remote.etag != obj.get("etag"):
            return True
    return False


def _retire(path: str) -> None:
    """Move a folder aside (one rename, atomic for readers of its parent) and delete it."""
    if not os.path.lexists(path):
        return
    parent, name = os.path.split(path)
    old = tempfile.mkdtemp(dir=parent, prefix=f".{name}{RETIRED}")
    os.rename(path, os.path.join(old, name))
    shutil.rmtree(old, ignore_errors=True)


def remove_stale(entry: str) -> list[str]:
    """Remove what killed fills left in and beside the entry (staging and retired folders, by
    name only). Call only while holding the entry's lock."""
    removed = []
    parent, name = os.path.split(entry)
    candidates = [(entry, n) for n in (os.listdir(entry) if os.path.isdir(entry) else [])
                  if n.startswith(STAGING)]
    candidates += [(parent, n) for n in (os.listdir(parent) if os.path.isdir(parent) else [])
                   if n.startswith(f".{name}{RETIRED}")]
    for folder, n in candidates:
        path = os.path.join(folder, n)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _verify_etags(folder: str, objects: dict[str, ObjectInfo], bucket: str, s3: Any) -> dict[str, Any]:
    """Compare each downloaded file's MD5-based ETag with the listing's; a mismatch raises."""
    checked = unverifiable = 0
    for rel, info in sorted(objects.items()):
        ok = objectstore.etag_matches(os.path.join(folder, *rel.split("/")), info, bucket, s3)
        if ok is None:
            unverifiable += 1
        elif not ok:
            raise objectstore.ObjectMismatch(f"s3://{bucket}/{info.key}: the downloaded bytes do not match "
                                             f"the object's ETag {info.etag}: corrupted in transit or "
                                             "changed; retry")
        else:
            checked += 1
    return {"etags_checked": checked, "etags_unverifiable": unverifiable}


def ensure_cached(uri: S3Uri | str, cache_root: str, *, formats: Sequence[str] | None = None,
                  concurrency: int = DEFAULT_CONCURRENCY, part_bytes: int = DEFAULT_PART_BYTES,
                  verify: str = "size", revalidate: bool = True, lock_timeout: float | None = None,
                  s3: Any = None, progress: objectstore.Progress = None) -> dict[str, Any]:
    """Make the cache entry for `uri` hold `formats` (all the manifest's when None), complete
    and verified, filling it if no pod has; returns the record of what this pod did:

    role: 'hit' (complete at first look, no lock), 'waited' (another pod filled it while this
    one waited for the lock) or 'filled' (this pod downloaded); path (the checkpoint root to
    open, as MODEL_PATH); lock_wait_s, download_s, verify_s, total_s; bytes (downloaded by this
    pod), entry_bytes (what the asked formats occupy); replaced (an entry changed in the bucket
    was refilled). `revalidate` lists the bucket first (one LIST) so a re-save is never served
    stale; verify='etag' also compares the files' MD5 ETags (CPU: about 1 GB/s per core)."""
    if verify not in VERIFY:
        raise ConfigError(f"verify={verify!r}: use one of {', '.join(VERIFY)}")
    u = objectstore.parse_uri(uri) if isinstance(uri, str) else uri
    c = s3 or objectstore.client(concurrency=concurrency)
    say = progress or (lambda _msg: None)
    entry = entry_path(cache_root, u)
    start = time.perf_counter()
    base = {"uri": str(u), "path": entry, "cache": "node", "verify": verify, "concurrency": concurrency,
            "part_bytes": part_bytes}

    def done(role: str, record: dict[str, Any], wait: float, **more: Any) -> dict[str, Any]:
        asked = list(record.get("all_formats") or record["formats"]) if formats is None else list(formats)
        relevant = _relevant(record, asked)
        out = dict(base, role=role, formats=asked, lock_wait_s=wait, download_s=0.0, verify_s=0.0, bytes=0,
                   entry_bytes=sum(int(o["bytes"]) for o in relevant.values()), files=len(relevant),
                   filled_by=record.get("filled_by"), filled_at=record.get("filled_at"), replaced=False)
        out.update(more)
        out["total_s"] = time.perf_counter() - start
        say(f"node cache: {role} {entry} ({out['entry_bytes']} bytes, lock wait {wait:.3f} s)")
        return out

    listing = objectstore.list_objects(u, c) if revalidate else None
    record = read_record(entry)
    if not problems(entry, record, formats, listing):
        assert record is not None
        return done("hit", record, 0.0)

    with _locked(lock_path(cache_root, u), lock_timeout) as waited:
        record = read_record(entry)
        if not problems(entry, record, formats, listing):
            assert record is not None
            return done("waited", record, waited)
        remove_stale(entry)
        listing = objectstore.list_objects(u, c)  # fresh: what this fill will download
        replaced = _stale_in_bucket(record, listing)
        if replaced or (record is None and os.path.exists(entry)):
            say(f"node cache: {entry} no longer matches {u}; filling it again")
            _retire(entry)
            record = None
        manifest, _ = objectstore.read_remote_manifest(u, c, listing)
        all_formats = list(manifest["formats"])
        asked = all_formats if formats is None else list(formats)
        have = [f for f in (record or {}).get("formats", [])
                if not problems(entry, record, [f], None)]
        need = [f for f in asked if f not in have]
        os.makedirs(entry, exist_ok=True)
        staging = tempfile.mkdtemp(dir=entry, prefix=STAGING)
        try:
            say(f"node cache: filling {entry} with {', '.join(need)} from {u}")
            got = objectstore.download_folder(u, staging, concurrency=concurrency, part_bytes=part_bytes,
                                              formats=need, progress=progress, s3=c)
            checked: dict[str, Any] = {}
            verify_start = time.perf_counter()
            if verify == "etag":
                fetched = {rel: listing[rel] for rel in got["objects"]}
                checked = _verify_etags(staging, fetched, u.bucket, c)
            verify_s = time.perf_counter() - verify_start
            for fmt in need:  # each format folder in whole, then the root files, the manifest last
                src = os.path.join(staging, fmt)
                if not os.path.isdir(src):
                    os.makedirs(src)  # a format with no files: still recorded as present
                _retire(os.path.join(entry, fmt))
                os.rename(src, os.path.join(entry, fmt))
            roots = sorted(rel for rel in got["objects"] if "/" not in rel and rel != MANIFEST)
            for rel in roots + [MANIFEST]:
                os.replace(os.path.join(staging, rel), os.path.join(entry, rel))
            objects = {rel: o for rel, o in ((record or {}).get("objects") or {}).items()
                       if "/" in rel and rel.split("/", 1)[0] in have}
            objects.update(got["objects"])
            new_record = {"schema": MARKER_SCHEMA, "uri": str(u), "endpoint": got["endpoint"],
                          "formats": sorted(set(have) | set(need)), "all_formats": all_formats,
                          "objects": objects, "verify": verify,
                          "filled_by": os.environ.get("POD_NAME") or f"pid {os.getpid()}",
                          "filled_at": datetime.now(timezone.utc).isoformat(),
                          "download_s": got["seconds"]}
            write_json_atomic(os.path.join(entry, MARKER), new_record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return done("filled", new_record, waited, download_s=got["seconds"], verify_s=verify_s,
                    bytes=got["bytes"], replaced=replaced, formats_added=need, download=dict(
                        (k, v) for k, v in got.items() if k != "objects"), **checked)


def fetch(uri: S3Uri | str, model_path: str, mode: str = "none",
          **options: Any) -> tuple[str, dict[str, Any]]:
    """The local checkpoint root for `uri` under MODEL_PATH, and the record of getting it:
    mode 'none' downloads into model_path itself (every time: the download is part of the
    load); 'node' goes through the node cache (ensure_cached) rooted at model_path."""
    mode = parse_cache_mode(mode)
    if mode == "node":
        record = ensure_cached(uri, model_path, **options)
        return record["path"], record
    allowed = {"concurrency", "part_bytes", "formats", "progress", "s3"}
    got = objectstore.download_folder(uri, model_path, **{k: v for k, v in options.items() if k in allowed})
    got = {k: v for k, v in got.items() if k != "objects"}
    return model_path, dict(got, role="download", cache="none", path=model_path, download_s=got["seconds"])
