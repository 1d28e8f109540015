"""The S3 client and what its failures mean: `client` (a boto3 S3 client configured the AWS way:
AWS_ENDPOINT_URL, the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY pair, or the pod's role: boto3's
default chain, with bounded retries and a connection pool as large as the concurrency asked),
`describe`, `error_for` (a botocore failure as a loadbench error with its exit code) and the
listing calls `list_objects` and `object_info`. Part of loadbench.storage.objectstore.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from loadbench.errors import CheckpointError, ConfigError, Transient
from loadbench.storage.s3types import DEFAULT_CONCURRENCY, MAX_CONCURRENCY, ObjectInfo, ObjectMismatch, S3Uri
from loadbench.storage.s3uri import _as_uri, redact

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
        # (Older botocore has neither option nor the trailers: set only what this one knows.)
        for key in ("request_checksum_calculation", "response_checksum_validation"):
            if key in Config.OPTION_DEFAULTS and not os.environ.get(f"AWS_{key.upper()}"):
                options[key] = "when_required"
    # SigV4 for presigned URLs too (tensorizer's stream and the direct reads sign one): unless
    # told, botocore presigns S3 URLs with SigV2, which AWS regions opened since 2014 refuse
    options["signature_version"] = UNSIGNED if anonymous else "s3v4"
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
    text = re.sub(r"\?[^\s\"'<>]*", "", " ".join(str(text).split()))  # the URL's quote stays
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
