"""A checkpoint folder to and from a bucket: `upload_folder` (every file in parallel with
multipart, boto3's transfer manager; the destination's old manifest deleted first and the new one
written last) and `download_folder` (manifest first, the file list coming from it, then every
file in parallel, each written under a temporary name and renamed, the local manifest last).
Part of loadbench.storage.objectstore.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from loadbench.errors import CheckpointError, ConfigError
from loadbench.schema.manifest import MANIFEST
from loadbench.schema.manifest import problems as manifest_problems
from loadbench.storage.s3client import _errors, _rate, client, list_objects
from loadbench.storage.s3types import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_BYTES,
    MAX_CONCURRENCY,
    MAX_PART_BYTES,
    MIN_PART_BYTES,
    PART_BYTES_METADATA,
    PARTIAL,
    MiB,
    ObjectInfo,
    ObjectMismatch,
    Progress,
    S3Uri,
)
from loadbench.storage.s3uri import _CONTROL, _as_uri, redact


def _check_transfer(concurrency: int, part_bytes: int) -> None:
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"S3_CONCURRENCY={concurrency}: use 1 to {MAX_CONCURRENCY}")
    if not MIN_PART_BYTES <= part_bytes <= MAX_PART_BYTES:
        raise ConfigError(f"S3_PART_BYTES={part_bytes}: S3 parts are {MIN_PART_BYTES} (5 MiB) to "
                          f"{MAX_PART_BYTES} (5 GiB) bytes")


def _transfer_config(concurrency: int, part_bytes: int) -> Any:
    from boto3.s3.transfer import TransferConfig
    return TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes,
                          max_concurrency=concurrency, use_threads=True,
                          preferred_transfer_client="classic")


# --------------------------------------------------------------------------- upload

def _local_files(local_dir: str) -> list[str]:
    """Relative '/'-separated paths of the folder's regular files, hidden ones (staging folders,
    temporary files) skipped, sorted."""
    found: list[str] = []
    for root, dirs, files in os.walk(local_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not os.path.islink(os.path.join(root, d)))
        for name in files:
            path = os.path.join(root, name)
            if name.startswith(".") or os.path.islink(path) or not os.path.isfile(path):
                continue
            found.append(os.path.relpath(path, local_dir).replace(os.sep, "/"))
    return sorted(found)


def upload_folder(local_dir: str, uri: S3Uri | str, *, concurrency: int = DEFAULT_CONCURRENCY,
                  part_bytes: int = DEFAULT_PART_BYTES, progress: Progress = None,
                  s3: Any = None) -> dict[str, Any]:
    """Upload a saved checkpoint folder under `uri`: every file, multipart and in parallel
    (`concurrency` requests in flight, `part_bytes` parts), the manifest last.

    The destination's manifest.json is deleted before anything else, so while this runs (and
    if it dies) the prefix reads as incomplete; the new one is written only after every other
    object is complete. Hidden files and folders (a save's staging) are not uploaded.
    Returns what it did, for the record."""
    u = _as_uri(uri)
    _check_transfer(concurrency, part_bytes)
    if not os.path.isfile(os.path.join(local_dir, MANIFEST)):
        raise CheckpointError(f"{os.path.join(local_dir, MANIFEST)} is missing: the save did not finish; "
                              "run save_models.py before uploading")
    rels = [r for r in _local_files(local_dir) if r != MANIFEST]
    sizes = {r: os.path.getsize(os.path.join(local_dir, r)) for r in rels}
    c = s3 or client(concurrency=concurrency)
    say = progress or (lambda _msg: None)
    from boto3.s3.transfer import create_transfer_manager

    start = time.perf_counter()
    with _errors(c, u.bucket, u.key(MANIFEST)):
        c.delete_object(Bucket=u.bucket, Key=u.key(MANIFEST))  # the prefix reads incomplete from now
    say(f"upload: {len(rels) + 1} files, {sum(sizes.values())} bytes to {u} "
        f"({concurrency} in flight, {part_bytes // MiB} MiB parts)")
    extra = {"Metadata": {PART_BYTES_METADATA: str(part_bytes)}}
    with create_transfer_manager(c, _transfer_config(concurrency, part_bytes)) as tm:
        futures = [(r, tm.upload(os.path.join(local_dir, r), u.bucket, u.key(r), extra_args=extra))
                   for r in rels]
        for rel, future in futures:
            with _errors(c, u.bucket, u.key(rel)):
                future.result()
            say(f"upload: {rel} ({sizes[rel]} bytes)")
    with open(os.path.join(local_dir, MANIFEST), "rb") as f:
        manifest = f.read()
    with _errors(c, u.bucket, u.key(MANIFEST)):
        c.put_object(Bucket=u.bucket, Key=u.key(MANIFEST), Body=manifest,
                     ContentType="application/json")
    seconds = time.perf_counter() - start
    total = sum(sizes.values()) + len(manifest)
    say(f"upload: {MANIFEST} last; {total} bytes in {seconds:.2f} s")
    return {"uri": str(u), "endpoint": redact(c.meta.endpoint_url), "files": len(rels) + 1,
            "bytes": total, "seconds": seconds, "gbps": _rate(total, seconds),
            "concurrency": concurrency, "part_bytes": part_bytes,
            "method": f"boto3 transfer manager: multipart ({part_bytes // MiB} MiB parts), "
                      f"{concurrency} requests in flight; {MANIFEST} written last"}


# --------------------------------------------------------------------------- download

def read_remote_manifest(uri: S3Uri | str, s3: Any = None,
                         listing: dict[str, ObjectInfo] | None = None) -> tuple[dict[str, Any], bytes]:
    """The checkpoint's manifest.json, checked (parsed and validated), and its raw bytes."""
    u = _as_uri(uri)
    c = s3 or client()
    key = u.key(MANIFEST)
    if listing is not None and MANIFEST not in listing:
        raise CheckpointError(f"s3://{u.bucket}/{key}: key {key!r} is not in bucket {u.bucket!r}: the "
                              "upload is incomplete or never ran (the manifest is written last); run "
                              "save_models.py with this MODEL_URI")
    args: dict[str, Any] = {"Bucket": u.bucket, "Key": key}
    if listing is not None and listing[MANIFEST].etag:
        args["IfMatch"] = listing[MANIFEST].etag
    with _errors(c, u.bucket, key):
        raw = c.get_object(**args)["Body"].read()
    try:
        manifest = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"s3://{u.bucket}/{key} is not JSON ({e}); run save_models.py again") from e
    bad = manifest_problems(manifest)
    if bad:
        raise CheckpointError(f"s3://{u.bucket}/{key} is not a valid manifest ({'; '.join(bad[:3])}); "
                              "run save_models.py again")
    return manifest, raw


def wanted_files(manifest: dict[str, Any], listing: dict[str, ObjectInfo], uri: S3Uri,
                 formats: Sequence[str] | None = None) -> dict[str, ObjectInfo]:
    """What a download fetches besides the manifest: each asked format's files (named by the
    manifest, sizes checked against the listing) and the files beside the manifest."""
    names = list(manifest["formats"]) if formats is None else list(formats)
    missing = [f for f in names if f not in manifest["formats"]]
    if missing:
        raise CheckpointError(f"{uri}/{MANIFEST} has no {', '.join(map(repr, missing))} checkpoint (it has: "
                              f"{', '.join(manifest['formats']) or 'none'}); run save_models.py with "
                              "that library in LIBRARIES")
    out = {rel: info for rel, info in listing.items()  # the files beside the manifest (config.json)
           if "/" not in rel and rel != MANIFEST and not rel.startswith(".") and "\\" not in rel
           and not _CONTROL.search(rel)}
    for fmt in names:
        for entry in manifest["formats"][fmt]["files"]:
            rel = f"{fmt}/{entry['name']}"
            info = listing.get(rel)
            if info is None:
                raise CheckpointError(f"s3://{uri.bucket}/{uri.key(rel)}: key {uri.key(rel)!r} is not in "
                                      f"bucket {uri.bucket!r} but the manifest names it: the upload is "
                                      "incomplete; run save_models.py again")
            if info.bytes != entry["bytes"]:
                raise ObjectMismatch(f"s3://{uri.bucket}/{uri.key(rel)} is {info.bytes} bytes, the manifest "
                                     f"says {entry['bytes']}: truncated or replaced since the save; run "
                                     "save_models.py again")
            out[rel] = info
    return out


def remove_partials(folder: str) -> list[str]:
    """Remove temporary files a killed download left in `folder` (.<name>.partial-*), only those."""
    removed = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.startswith(".") and PARTIAL in name and os.path.isfile(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed.append(path)
    return removed


def _partial_name(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}{PARTIAL}{os.urandom(4).hex()}")


def download_folder(uri: S3Uri | str, local_dir: str, *, concurrency: int = DEFAULT_CONCURRENCY,
                    part_bytes: int = DEFAULT_PART_BYTES, formats: Sequence[str] | None = None,
                    progress: Progress = None, s3: Any = None) -> dict[str, Any]:
    """Download the checkpoint under `uri` into `local_dir`: the manifest first (the file list
    comes from it), then every file of the asked formats (all by default) and the files beside
    the manifest, `concurrency` ranged GETs of `part_bytes` in flight (boto3's transfer manager).

    Each file is written under a temporary name and renamed; every GET is pinned to the listed
    ETag, so an object changed mid-download fails (ObjectMismatch) instead of mixing versions.
    A manifest already in `local_dir` is removed first and the new one is renamed in last.
    The caller owns `local_dir` (nodecache serialises fills with a lock)."""
    u = _as_uri(uri)
    _check_transfer(concurrency, part_bytes)
    c = s3 or client(concurrency=concurrency)
    say = progress or (lambda _msg: None)
    from boto3.s3.transfer import create_transfer_manager
    from s3transfer.subscribers import BaseSubscriber

    class Known(BaseSubscriber):  # the listing's size and ETag: no HEAD, and IfMatch on every GET
        def __init__(self, info: ObjectInfo) -> None:
            self.info = info

        def on_queued(self, future: Any, **kwargs: Any) -> None:
            future.meta.provide_transfer_size(self.info.bytes)
            if self.info.etag:
                future.meta.provide_object_etag(self.info.etag)

    start = time.perf_counter()
    listing = list_objects(u, c)
    manifest, raw = read_remote_manifest(u, c, listing)
    files = wanted_files(manifest, listing, u, formats)
    os.makedirs(local_dir, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(local_dir, MANIFEST))  # incomplete from now until the end
    folders = {os.path.dirname(os.path.join(local_dir, rel)) for rel in files} | {local_dir}
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        remove_partials(folder)
    total = sum(i.bytes for i in files.values())
    say(f"download: {len(files) + 1} files, {total} bytes from {u} ({concurrency} in flight)")
    temps: dict[str, str] = {}
    try:
        with create_transfer_manager(c, _transfer_config(concurrency, part_bytes)) as tm:
            futures = []
            for rel, info in sorted(files.items()):
                temps[rel] = _partial_name(os.path.join(local_dir, rel))
                futures.append((rel, tm.download(u.bucket, info.key, temps[rel],
                                                 subscribers=[Known(info)])))
            for rel, future in futures:
                with _errors(c, u.bucket, files[rel].key):
                    future.result()
                got = os.path.getsize(temps[rel])
                if got != files[rel].bytes:
                    raise ObjectMismatch(f"s3://{u.bucket}/{files[rel].key}: downloaded {got} bytes, "
                                         f"the listing says {files[rel].bytes}: changed or truncated "
                                         "mid-download; retry")
                os.replace(temps[rel], os.path.join(local_dir, rel))
                say(f"download: {rel} ({got} bytes)")
        _write_atomic(os.path.join(local_dir, MANIFEST), raw)
    finally:
        for tmp in temps.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    seconds = time.perf_counter() - start
    total += len(raw)
    say(f"download: {total} bytes in {seconds:.2f} s")
    objects = {rel: {"bytes": i.bytes, "etag": i.etag} for rel, i in sorted(files.items())}
    objects[MANIFEST] = {"bytes": len(raw), "etag": listing[MANIFEST].etag}
    return {"uri": str(u), "endpoint": redact(c.meta.endpoint_url), "files": len(files) + 1,
            "bytes": total, "seconds": seconds, "gbps": _rate(total, seconds),
            "concurrency": concurrency, "part_bytes": part_bytes,
            "formats": list(manifest["formats"]) if formats is None else list(formats),
            "method": f"boto3 transfer manager: ranged GETs of {part_bytes // MiB} MiB, "
                      f"{concurrency} in flight; manifest first, each file renamed into place",
            "objects": objects}


def _write_atomic(path: str, data: bytes) -> None:
    tmp = _partial_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
