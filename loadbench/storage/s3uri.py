"""MODEL_URI checked and recorded: `parse_uri` (`s3://bucket/prefix`, bucket naming rules, a prefix
of plain path components) and `redact` (the URI as a document may record it, never credentials).
Part of loadbench.storage.objectstore (the facade callers import).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from loadbench.errors import ConfigError
from loadbench.storage.s3types import S3Uri

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
