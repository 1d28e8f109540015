"""Object storage (S3 and S3-compatible servers): the checkpoint's remote side.

A checkpoint in a bucket is the checkpoint folder's files under a prefix:

    s3://bucket/prefix/manifest.json         written LAST: without it the upload is incomplete
    s3://bucket/prefix/config.json
    s3://bucket/prefix/<format>/<file>       one key per file of each format folder

A few small functions, each doing one thing:

- `parse_uri`, `redact`: a MODEL_URI checked, and the URI as recorded (never credentials);
- `client`: a boto3 S3 client configured the AWS way (AWS_ENDPOINT_URL, the
  AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY pair, or the pod's role: boto3's default chain),
  with bounded retries and a connection pool as large as the concurrency asked;
- `upload_folder`: every file in parallel with multipart (boto3's transfer manager),
  the destination's old manifest deleted first and the new one written last;
- `download_folder`: manifest first (the file list comes from it), then every file in
  parallel, each written under a temporary name and renamed, the local manifest last;
- `read_ranges`, `read_object`: N parallel ranged GETs into caller-provided buffers;
- `get_ceiling`: GET throughput for 1, 8 and 32 parallel ranged requests, best and spread.

Errors say what was wrong, where, and what to do, and carry the exit code
(`loadbench.errors`): a missing bucket or key is a `CheckpointError` (2), rejected
credentials a `ConfigError` (2) that never holds the secret, an unreachable endpoint
`Transient` (3), an object that changed or is shorter than the manifest says
`ObjectMismatch` (1).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit, urlunsplit

from loadbench.errors import CheckpointError, ConfigError, Transient
from loadbench.schema.manifest import MANIFEST
from loadbench.schema.manifest import problems as manifest_problems
from loadbench.storage.ceilings import run_workers

Buffer = Union[bytearray, memoryview]
Progress = Optional[Callable[[str], None]]

MiB = 1 << 20
DEFAULT_CONCURRENCY = 16
DEFAULT_PART_BYTES = 64 * MiB
DEFAULT_RANGE_BYTES = 16 * MiB
MIN_PART_BYTES = 5 * MiB      # S3's smallest multipart part (but the last)
MAX_PART_BYTES = 5 << 30      # S3's largest part
MAX_CONCURRENCY = 1024
READ_CHUNK = 1 * MiB          # one readinto() of a response body
PART_BYTES_METADATA = "loadbench-part-bytes"  # x-amz-meta-*: the part size an upload used
PARTIAL = ".partial-"          # temporary files: .<name>.partial-<random>


class ObjectMismatch(RuntimeError):
    """An object that changed or is shorter than the manifest or listing says: exit 1.

    A re-run may pass (a save was writing the prefix), so it is not bad input."""


@dataclass(frozen=True)
class S3Uri:
    """s3://bucket/prefix: the prefix has no leading or trailing '/' and may be empty."""
    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, name: str = "") -> str:
        """The key of `name` ('a/b.bin') under this prefix."""
        name = name.strip("/")
        if not self.prefix:
            return name
        return f"{self.prefix}/{name}" if name else self.prefix

    def child(self, name: str) -> S3Uri:
        """The URI of `name` under this prefix (an object's own URI, for read_ranges)."""
        return S3Uri(self.bucket, self.key(name))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    bytes: int
    etag: str


# --------------------------------------------------------------------------- URIs

_BUCKET_CHARS = re.compile(r"^[a-z0-9.-]+$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact(uri: str) -> str:
    """`uri` as a document may record it: no user:password@, no query string (presigned
    signatures, SAS tokens) and no fragment. Never raises."""
    text = str(uri)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable URI>"
    if not parts.scheme:
        return text.split("?", 1)[0].split("#", 1)[0] if "://" in text else text
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _bucket_problem(bucket: str) -> str | None:
    if not bucket:
        return "has no bucket"
    if len(bucket) < 3:
        return f"bucket {bucket!r} is too short: bucket names are 3 to 63 characters"
    if len(bucket) > 63:
        return f"bucket {bucket[:20]!r}... is {len(bucket)} characters: bucket names are 3 to 63"
    if not _BUCKET_CHARS.match(bucket):
        return (f"bucket {bucket!r} has characters buckets cannot have: use lowercase letters, "
                "digits, '.' and '-'")
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return f"bucket {bucket!r} must begin and end with a letter or digit"
    if ".." in bucket or ".-" in bucket or "-." in bucket:
        return f"bucket {bucket!r} has '..', '.-' or '-.', which bucket names cannot have"
    if _IPV4.match(bucket):
        return f"bucket {bucket!r} is formatted as an IP address, which bucket names cannot be"
    return None


def parse_uri(text: str, variable: str = "MODEL_URI") -> S3Uri:
    """`s3://bucket/prefix` checked: bucket naming rules, a prefix of plain path components.

    Raises ConfigError naming `variable` (and never echoing credentials)."""
    shown = f"{variable}={redact(text)!r}" if isinstance(text, str) else f"{variable}"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{variable} is empty: set it to s3://<bucket>/<prefix>")
    text = text.strip()
    try:
        parts = urlsplit(text)
    except ValueError as e:
        raise ConfigError(f"{shown} is not a URI ({e}): use s3://<bucket>/<prefix>") from None
    if parts.scheme.lower() != "s3":
        hint = (" (http(s) sources are not supported yet: serve the bucket through an S3 endpoint "
                "and set AWS_ENDPOINT_URL)" if parts.scheme.lower() in ("http", "https") else "")
        raise ConfigError(f"{shown}: scheme {parts.scheme or 'none'!r} is not s3{hint}; "
                          "use s3://<bucket>/<prefix>")
    if "@" in parts.netloc:
        raise ConfigError(f"{shown}: credentials do not belong in the URI; put them in "
                          "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (from a Secret) and use "
                          "s3://<bucket>/<prefix>")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ConfigError(f"{shown}: a query string or fragment is not allowed; use s3://<bucket>/<prefix>")
    bucket = parts.netloc
    problem = _bucket_problem(bucket)
    if problem:
        raise ConfigError(f"{shown}: {problem}; use s3://<bucket>/<prefix>")
    prefix = parts.path.strip("/")
    if prefix:
        components = prefix.split("/")
        if any(c in ("", ".", "..") for c in components):
            raise ConfigError(f"{shown}: the prefix {prefix!r} has an empty, '.' or '..' component; "
                              "use s3://<bucket>/<folder>/<folder>")
        if _CONTROL.search(prefix):
            raise ConfigError(f"{shown}: the prefix has control characters; use plain names")
        if len(prefix.encode()) > 900:
            raise ConfigError(f"{shown}: the prefix is {len(prefix.encode())} bytes; keys are at most "
                              "1024, so keep the prefix under 900")
    return S3Uri(bucket, prefix)


def _as_uri(uri: S3Uri | str) -> S3Uri:
    return uri if isinstance(uri, S3Uri) else parse_uri(uri)


# --------------------------------------------------------------------------- the client

def endpoint_from_env() -> str | None:
    """The endpoint boto3 would use from the environment (AWS_ENDPOINT_URL_S3 wins), or None."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_LOADER: list[Any] = []
_LOADER_LOCK = threading.Lock()


def _botocore_session() -> Any:
    """A fresh botocore session (credentials resolved anew, from this environment) sharing one
    loader of botocore's service models: a client then takes ~40 ms instead of ~300 ms."""
    import botocore.session
    session = botocore.session.get_session()
    with _LOADER_LOCK:
        if _LOADER:
            session.register_component("data_loader", _LOADER[0])
        else:
            _LOADER.append(session.get_component("data_loader"))
    return session


def client(endpoint: str | None = None, *, concurrency: int = DEFAULT_CONCURRENCY,
           connect_timeout: float = 3.0, read_timeout: float = 60.0, max_attempts: int = 3,
           anonymous: bool = False, region: str | None = None) -> Any:
    """A boto3 S3 client: the endpoint from `endpoint` or AWS_ENDPOINT_URL(_S3) (AWS itself when
    neither is set), credentials from boto3's default chain (environment, shared files, web
    identity or the instance/pod role), unsigned requests when `anonymous`.

    Retries are bounded (`max_attempts` in all, botocore's standard mode, `connect_timeout` each), so
    an unreachable endpoint fails in seconds; the pool holds `concurrency` connections and more."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint = endpoint or endpoint_from_env()
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"AWS_ENDPOINT_URL={redact(endpoint)!r} is not an http(s)://host[:port] URL; "
                              "set it to the S3 endpoint, e.g. http://127.0.0.1:8333")
        if "@" in parts.netloc:
            raise ConfigError("AWS_ENDPOINT_URL holds credentials: put them in AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY instead")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"S3_CONCURRENCY={concurrency}: use 1 to {MAX_CONCURRENCY}")
    options: dict[str, Any] = {
        "max_pool_connections": max(10, concurrency + 4),
        "connect_timeout": connect_timeout, "read_timeout": read_timeout,
        "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        "tcp_keepalive": True,
    }
    if endpoint is not None:
        options["s3"] = {"addressing_style": "path"}  # S3-compatible servers serve path-style
        # botocore >= 1.36 adds CRC32 trailers to every upload: some S3-compatible servers store
        # them inside the object (seaweedfs#6548) or refuse them. Integrity here comes from sizes,
        # ETags and the manifest's tensor checksums; the AWS_* variables still override this.
        if not os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION"):
            options["request_checksum_calculation"] = "when_required"
        if not os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION"):
            options["response_checksum_validation"] = "when_required"
    if anonymous:
        options["signature_version"] = UNSIGNED
    session = boto3.session.Session(botocore_session=_botocore_session())
    return session.client("s3", endpoint_url=endpoint, config=Config(**options),
                          region_name=region or session.region_name or "us-east-1")


def _credential_source(c: Any) -> str:
    """Where the client's credentials came from ('env', 'iam-role', ...), never what they are."""
    creds = getattr(getattr(c, "_request_signer", None), "_credentials", None)
    if creds is None:
        return "none (unsigned requests)"
    return str(getattr(creds, "method", None) or "unknown")


def describe(c: Any) -> dict[str, Any]:
    """What a document records about the source's client: endpoint, region and where the
    credentials came from; never the credentials."""
    return {"endpoint": redact(c.meta.endpoint_url), "region": c.meta.region_name,
            "credentials": _credential_source(c)}


# --------------------------------------------------------------------------- errors

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity",
                "InvalidClientTokenId", "UnrecognizedClientException", "MissingSecurityHeader",
                "ExpiredTokenException"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"}
_MISMATCH = {"PreconditionFailed", "412", "InvalidRange", "416"}
_TRANSIENT = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
              "ThrottlingException", "RequestLimitExceeded", "500", "502", "503", "504"}


def _short(text: str, limit: int = 200) -> str:
    """One line, no query strings (a URL in a message may carry a presigned signature)."""
    text = re.sub(r"\?\S*", "", " ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit] + "..."


def error_for(exc: BaseException, bucket: str, key: str = "", endpoint: str = "",
              credentials: str = "") -> BaseException:
    """The loadbench error (with its exit code) for a botocore or s3transfer failure on
    s3://bucket/key, as one line; `exc` itself when it is none of the known kinds."""
    from botocore import exceptions as bx
    from s3transfer.exceptions import RetriesExceededError

    where = f"s3://{bucket}/{key}" if key else f"s3://{bucket}"
    at = f" at {redact(endpoint)}" if endpoint else ""
    came = f" (credentials from: {credentials})" if credentials else ""
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return ConfigError(f"{where}: no usable credentials found{at}: set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY (from a Secret) or give the pod a role")
    if isinstance(exc, bx.NoRegionError):
        return ConfigError(f"{where}: no region: set AWS_REGION (or AWS_DEFAULT_REGION)")
    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, RetriesExceededError)):
        return Transient(f"{where}: the endpoint{at or ' (AWS_ENDPOINT_URL)'} is unreachable or dropped "
                         f"the connection ({type(exc).__name__}: {_short(str(exc))}); retry later, or "
                         "check AWS_ENDPOINT_URL")
    unknown: BaseException = exc
    if not isinstance(exc, bx.ClientError):
        return unknown
    err = exc.response.get("Error", {}) or {}
    code = str(err.get("Code") or "")
    status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    operation = getattr(exc, "operation_name", "") or "request"
    if code == "NoSuchBucket":
        return CheckpointError(f"{where}: bucket {bucket!r} does not exist{at}: check the bucket in "
                               "MODEL_URI (and AWS_ENDPOINT_URL), or create it and run save_models.py")
    if code in _NOT_FOUND:
        return CheckpointError(f"{where}: key {key!r} is not in bucket {bucket!r}{at}: the upload is "
                               "incomplete or never ran; run save_models.py with this MODEL_URI")
    if code in _CREDENTIALS:
        return ConfigError(f"{where}: the server{at} rejected the credentials ({code}){came}: check "
                           "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the pod's Secret) or its role")
    if code in _DENIED:
        return ConfigError(f"{where}: access denied{at} ({code} on {operation}){came}: the credentials "
                           "are wrong or lack permission for this bucket; check AWS_ACCESS_KEY_ID, "
                           "AWS_SECRET_ACCESS_KEY or the pod's role and the bucket policy")
    if code in _MISMATCH:
        return ObjectMismatch(f"{where}: the object changed or is shorter than expected ({code} on "
                              f"{operation}): it was modified since it was listed or since the manifest "
                              "was written; re-run when no save is writing this prefix, or save again")
    if code == "InvalidBucketName":
        return ConfigError(f"{where}: the server{at} says {bucket!r} is not a valid bucket name; fix "
                           "the bucket in MODEL_URI")
    if code in _TRANSIENT or status >= 500:
        return Transient(f"{where}: the server{at} failed ({code or status} on {operation}); retry later")
    return unknown


@contextlib.contextmanager
def _errors(c: Any, bucket: str, key: str = "") -> Iterator[None]:
    """Translate botocore/s3transfer failures inside the block with error_for."""
    from botocore import exceptions as bx
    from s3transfer.exceptions import RetriesExceededError
    try:
        yield
    except (bx.BotoCoreError, bx.ClientError, RetriesExceededError) as e:
        endpoint, source = c.meta.endpoint_url, _credential_source(c)
        code = str(((getattr(e, "response", None) or {}).get("Error") or {}).get("Code") or "")
        if code in ("404", "NotFound") and bucket:
            # A HEAD's 404 has no body: ask whether the bucket is the missing part.
            try:
                c.head_bucket(Bucket=bucket)
            except bx.ClientError as he:
                if str(he.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                    raise error_for(bx.ClientError({"Error": {"Code": "NoSuchBucket"}}, "HeadBucket"),
                                    bucket, key, endpoint, source) from e
            except Exception:  # the key's message below is still true
                pass
        translated = error_for(e, bucket, key, endpoint, source)
        if translated is e:
            raise
        raise translated from e


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


def _rate(nbytes: int, seconds: float) -> float | None:
    return nbytes / seconds / 1e9 if seconds > 0 else None


# --------------------------------------------------------------------------- listing

def list_objects(uri: S3Uri | str, s3: Any = None) -> dict[str, ObjectInfo]:
    """Every object under the prefix, by its name relative to the prefix ('tensorizer/model.tensors')."""
    u = _as_uri(uri)
    c = s3 or client()
    start = u.key() + "/" if u.prefix else ""
    out: dict[str, ObjectInfo] = {}
    with _errors(c, u.bucket, u.key()):
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=start):
            for obj in page.get("Contents", []) or []:
                key = obj["Key"]
                if key.endswith("/"):
                    continue  # a "folder" marker some tools write
                out[key[len(start):]] = ObjectInfo(key, int(obj["Size"]), str(obj.get("ETag", "")))
    return out


def object_info(uri: S3Uri | str, s3: Any = None) -> ObjectInfo:
    """Size and ETag of one object (its own URI), by a HEAD request."""
    u = _as_uri(uri)
    c = s3 or client()
    with _errors(c, u.bucket, u.prefix):
        head = c.head_object(Bucket=u.bucket, Key=u.prefix)
    return ObjectInfo(u.prefix, int(head["ContentLength"]), str(head.get("ETag", "")))


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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def local_etag(path: str, part_bytes: int | None = None, parts: int = 0) -> str:
    """The ETag S3 gives a file uploaded whole (MD5) or in `parts` parts of `part_bytes`
    (the MD5 of the parts' MD5s, '-N'); the parts are hashed in parallel."""
    import hashlib
    size = os.path.getsize(path)
    if not parts:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 * MiB), b""):
                digest.update(block)
        return digest.hexdigest()
    if not part_bytes:
        raise ValueError("local_etag: a multipart ETag needs the part size")

    def part_md5(offset: int) -> bytes:
        digest = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            f.seek(offset)
            left = min(part_bytes, size - offset)
            while left > 0:
                block = f.read(min(8 * MiB, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
        return digest.digest()

    with ThreadPoolExecutor(max_workers=min(4, max(1, parts))) as pool:
        digests = list(pool.map(part_md5, range(0, size, part_bytes)))
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def etag_matches(path: str, info: ObjectInfo, bucket: str = "", s3: Any = None) -> bool | None:
    """Whether the local file's MD5-based ETag equals the object's; None when the ETag is not
    MD5-based (SSE-KMS, some servers) or the part size is unknown: a multipart object's part
    size comes from the metadata upload_folder writes (a HEAD, given `bucket` and `s3`)."""
    etag = info.etag.strip('"')
    if not re.fullmatch(r"[0-9a-f]{32}(-[0-9]+)?", etag):
        return None
    if "-" not in etag:
        return local_etag(path) == etag
    parts = int(etag.split("-")[1])
    part = None
    if s3 is not None and bucket:
        with contextlib.suppress(Exception):
            meta = s3.head_object(Bucket=bucket, Key=info.key).get("Metadata", {})
            part = int(meta.get(PART_BYTES_METADATA, 0)) or None
    if part is None or _ceil_div(info.bytes, part) != parts:
        return None  # several part sizes give the same count: guessing could call good bytes bad
    return local_etag(path, part, parts) == etag


# --------------------------------------------------------------------------- ranged reads

def _get_into(c: Any, bucket: str, key: str, offset: int, buf: memoryview, etag: str | None) -> int:
    """One ranged GET of len(buf) bytes at `offset`, read into `buf`."""
    n = len(buf)
    if n == 0:
        return 0
    args: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={offset}-{offset + n - 1}"}
    if etag:
        args["IfMatch"] = etag
    with _errors(c, bucket, key):
        body = c.get_object(**args)["Body"]
        got = 0
        try:
            while got < n:
                k = body.readinto(buf[got:got + READ_CHUNK])
                if not k:
                    break
                got += k
        finally:
            body.close()
    if got != n:
        raise ObjectMismatch(f"s3://{bucket}/{key}: a ranged GET at offset {offset} returned {got} of {n} "
                             "bytes: the object is shorter than expected (truncated or replaced); save again")
    return got


def read_ranges(obj: S3Uri | str, ranges: Sequence[tuple[int, int]], into: Sequence[Buffer], *,
                concurrency: int = 8, etag: str | None = None, s3: Any = None,
                pool: ThreadPoolExecutor | None = None) -> int:
    """Read `ranges` [(offset, length), ...] of one object (`obj` is the object's own URI, e.g.
    uri.child('tensorizer/model.tensors')) into `into[i]` (writable, at least `length` bytes:
    bytearray, memoryview, a pinned tensor's numpy view), `concurrency` GETs in flight.

    `etag` pins every GET to that version of the object (a change fails as ObjectMismatch).
    Pass a long-lived `pool` to skip creating threads per call. Returns the bytes read."""
    u = _as_uri(obj)
    if len(ranges) != len(into):
        raise ValueError(f"read_ranges: {len(ranges)} ranges but {len(into)} buffers")
    views = []
    for (offset, length), buf in zip(ranges, into):
        view = memoryview(buf).cast("B")
        if offset < 0 or length < 0 or len(view) < length:
            raise ValueError(f"read_ranges: range ({offset}, {length}) does not fit a "
                             f"{len(view)}-byte buffer")
        if view.readonly:
            raise ValueError("read_ranges: a buffer is read-only")
        views.append((offset, view[:length]))
    c = s3 or client(concurrency=concurrency)
    if len(views) == 1 or concurrency == 1:
        return sum(_get_into(c, u.bucket, u.prefix, off, v, etag) for off, v in views)
    own = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=min(concurrency, len(views)),
                                      thread_name_prefix="loadbench-s3")
    try:
        return sum(pool.map(lambda ov: _get_into(c, u.bucket, u.prefix, ov[0], ov[1], etag), views))
    finally:
        if own:
            pool.shutdown(wait=True)


def split_ranges(nbytes: int, range_bytes: int, offset: int = 0) -> list[tuple[int, int]]:
    """[(offset, length), ...] covering nbytes from `offset` in pieces of at most range_bytes."""
    if range_bytes <= 0:
        raise ValueError("range_bytes must be positive")
    return [(offset + o, min(range_bytes, nbytes - o)) for o in range(0, nbytes, range_bytes)]


def read_object(obj: S3Uri | str, into: Buffer, *, offset: int = 0,
                range_bytes: int = DEFAULT_RANGE_BYTES, concurrency: int = 8, etag: str | None = None,
                s3: Any = None, pool: ThreadPoolExecutor | None = None) -> int:
    """Fill `into` with the object's bytes from `offset` (len(into) of them), as parallel
    ranged GETs of `range_bytes`. Returns the bytes read."""
    view = memoryview(into).cast("B")
    ranges = split_ranges(len(view), range_bytes, offset)
    bufs = [view[o - offset:o - offset + n] for o, n in ranges]
    return read_ranges(obj, ranges, bufs, concurrency=concurrency, etag=etag, s3=s3, pool=pool)


# --------------------------------------------------------------------------- the GET ceiling

def _timed_gets(c: Any, bucket: str, key: str, size: int, streams: int, range_bytes: int,
                seconds: float) -> tuple[int, float, int]:
    """`streams` threads each issuing ranged GETs of range_bytes (walking the object, wrapping
    around) until the time is up; each reads at least one range. (bytes, seconds, requests)."""
    lock = threading.Lock()
    state = {"next": 0, "bytes": 0, "requests": 0}
    errors: list[BaseException] = []
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        scratch = memoryview(bytearray(min(range_bytes, READ_CHUNK * 8, max(size, 1))))
        first = True
        try:
            while first or time.perf_counter() < deadline:
                first = False
                with lock:
                    off = state["next"]
                    state["next"] = 0 if off + range_bytes >= size else off + range_bytes
                n = min(range_bytes, size - off)
                args = {"Bucket": bucket, "Key": key, "Range": f"bytes={off}-{off + n - 1}"}
                with _errors(c, bucket, key):
                    body = c.get_object(**args)["Body"]
                    got = 0
                    try:
                        while True:
                            k = body.readinto(scratch)
                            if not k:
                                break
                            got += k
                    finally:
                        body.close()
                with lock:
                    state["bytes"] += got
                    state["requests"] += 1
        except BaseException as e:  # reported to the caller
            errors.append(e)

    elapsed = run_workers(worker, streams, errors, "loadbench-get")
    return state["bytes"], elapsed, state["requests"]


def largest_object(uri: S3Uri | str, s3: Any = None) -> ObjectInfo:
    """The largest object under the prefix (what a GET ceiling reads by default)."""
    u = _as_uri(uri)
    listing = list_objects(u, s3)
    if not listing:
        raise CheckpointError(f"{u}: no objects under prefix {u.prefix!r} in bucket {u.bucket!r}: run "
                              "save_models.py with this MODEL_URI")
    return max(listing.values(), key=lambda i: i.bytes)


def get_ceiling(uri: S3Uri | str, key: str | None = None, *, streams: Sequence[int] = (1, 8, 32),
                range_bytes: int | Sequence[int] = (16 * MiB, 64 * MiB), seconds: float = 4.0,
                s3: Any = None, progress: Progress = None) -> dict[str, Any]:
    """GET throughput from the endpoint: for each N in `streams` and each range size, N threads
    issue ranged GETs of one object (`key` under the prefix, the largest object by default)
    for about seconds/2; the best is kept, every try and the spread recorded, in the shape of
    the other ceilings (loadbench.storage.ceilings)."""
    u = _as_uri(uri)
    sizes = [range_bytes] if isinstance(range_bytes, int) else list(range_bytes)
    if not streams or not sizes or min(streams) < 1 or min(sizes) < 1:
        raise ConfigError("the GET ceiling needs at least one stream count and one range size, all >= 1")
    c = s3 or client(concurrency=max(streams))
    info = object_info(u.child(key), c) if key else largest_object(u, c)
    if info.bytes == 0:
        raise CheckpointError(f"s3://{u.bucket}/{info.key} is empty: nothing to measure a GET ceiling with")
    say = progress or (lambda _msg: None)
    endpoint = redact(c.meta.endpoint_url)
    per_try = max(seconds / 2, 0.05)
    tries: dict[str, Any] = {}
    for n in streams:
        for size in sizes:
            name = f"{n}x{size // MiB}M" if size >= MiB else f"{n}x{size}B"
            say(f"ceilings: GET {name} from {endpoint} (<= {per_try:g} s)")
            nbytes, elapsed, requests = _timed_gets(c, u.bucket, info.key, info.bytes, n, size, per_try)
            tries[name] = {"gbps": _rate(nbytes, elapsed), "bytes": nbytes, "seconds": elapsed,
                           "requests": requests, "streams": n, "range_bytes": size,
                           "method": f"{n} parallel ranged GETs of {size // MiB} MiB from {endpoint}"}
    rates = [t["gbps"] for t in tries.values() if t.get("gbps")]
    best = max((t for t in tries.values() if t.get("gbps")), key=lambda t: t["gbps"])
    spread = {"min_gbps": min(rates), "max_gbps": max(rates), "tries": len(rates)}
    return dict(best, tries=tries, spread=spread,
                object=f"s3://{u.bucket}/{info.key}", object_bytes=info.bytes, endpoint=endpoint)
