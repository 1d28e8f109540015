"""Ranged GETs read straight into the caller's buffer: the instrument's client.

botocore reads a response body through urllib3, whose `readinto` reads into a new bytes
object and copies it over (urllib3 2.x), with the GIL held for the copy: with 16 GETs in flight
the Python client, not the server, set the GET ceiling, and tensorizer's `curl` readers beat
it (docs/results/2026-12-03-h200-llama-2-7b-fidelity-nodecache). Here boto3 still resolves the
endpoint and the credentials and signs (a presigned URL, as tensorizer streams one), and each
thread keeps one keep-alive `http.client` connection whose body is read with `readinto` into
the destination: one copy, socket to buffer, the GIL released while the kernel copies.

Anything this client cannot read as a plain answer for the range it asked (a 206 whose
Content-Range starts elsewhere, an error status, a reset, a proxy in the way, TLS it cannot
verify) is left to botocore: `get` returns the bytes it did read, and the caller's botocore path
goes on from there, so errors keep their one meaning (loadbench.storage.s3client.error_for) and
nothing here has to know S3's error codes. After GIVE_UP_AFTER such answers in a row it stops
trying (no request pays two round trips for long), and `kind`/`label` say which client read.
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import time
import urllib.request
import weakref
from typing import Any
from urllib.parse import urlsplit

from loadbench.storage.s3types import READ_CHUNK

PRESIGN_SECONDS = 3600
RENEW_AFTER = 600  # a URL is signed again after this: temporary credentials (a pod's role) rotate
GIVE_UP_AFTER = 3  # answers in a row it could not use: botocore reads the rest (no double trips)
NAME = "http.client readinto, presigned"
FALLBACK = "botocore"

_CLIENTS: weakref.WeakKeyDictionary[Any, DirectGets] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends this host's requests through a proxy (botocore honours
    HTTP(S)_PROXY and NO_PROXY; a direct socket would not)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme)) and not urllib.request.proxy_bypass(host)


def label(requests: int, fallbacks: int, enabled: bool = True) -> str:
    """Which client read a run of `requests` ranged GETs, `fallbacks` of them left to botocore."""
    if requests == 0:
        return NAME if enabled else FALLBACK
    if fallbacks == 0:
        return NAME
    if fallbacks >= requests:
        return FALLBACK
    return f"{NAME}; botocore for {fallbacks} of {requests} requests"


def _range_start(content_range: str | None) -> tuple[int, int] | None:
    """(first, last) of a Content-Range header 'bytes first-last/total', or None."""
    try:
        unit, rest = (content_range or "").split(" ", 1)
        first, last = rest.split("/", 1)[0].split("-", 1)
        return (int(first), int(last)) if unit == "bytes" else None
    except ValueError:
        return None


class DirectGets:
    """One client's ranged GETs over presigned URLs, a keep-alive connection per thread.
    `enabled` turns False for good after a TLS failure, or after GIVE_UP_AFTER answers in a row
    it could not use: botocore then reads everything, and `kind` says so. The client is held
    weakly: this reader lives as long as its client, never longer."""

    def __init__(self, s3: Any) -> None:
        self._s3 = weakref.ref(s3)
        config = s3.meta.config
        self.connect_timeout = float(getattr(config, "connect_timeout", 3) or 3)
        self.read_timeout = float(getattr(config, "read_timeout", 60) or 60)
        endpoint = urlsplit(s3.meta.endpoint_url or "")
        self.enabled = endpoint.scheme in ("http", "https")
        self.urls: dict[tuple[str, str], tuple[float, str, str, str, int]] = {}
        self.lock = threading.Lock()
        self.local = threading.local()
        self.requests = self.fallbacks = self.unusable = 0

    @property
    def kind(self) -> str:
        return label(self.requests, self.fallbacks, self.enabled)

    def counters(self) -> tuple[int, int]:
        with self.lock:
            return self.requests, self.fallbacks

    def _url(self, bucket: str, key: str, fresh: bool = False) -> tuple[str, str, int, str]:
        """(scheme, host, port, path with the signature), signed at most RENEW_AFTER ago."""
        now = time.monotonic()
        with self.lock:
            got = None if fresh else self.urls.get((bucket, key))
        if got is None or now - got[0] > RENEW_AFTER:
            s3 = self._s3()
            if s3 is None:
                raise RuntimeError("s3direct: the client is gone")
            url = urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                     ExpiresIn=PRESIGN_SECONDS))
            port = url.port or (443 if url.scheme == "https" else 80)
            got = (now, url.scheme, url.hostname or "", f"{url.path}?{url.query}" if url.query else url.path,
                   port)
            with self.lock:
                self.urls[(bucket, key)] = got
        return got[1], got[2], got[4], got[3]

    def _connection(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
        """(this thread's connection to host:port, whether it is one already used). A new one
        connects within the client's connect timeout, then reads within its read timeout."""
        conn = getattr(self.local, "conn", None)
        if conn is not None and (conn.host, conn.port) == (host, port):
            return conn, True
        self._drop()
        if scheme == "https":
            context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            conn = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        self.local.conn = conn
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout)
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            conn.close()

    def get(self, bucket: str, key: str, offset: int, n: int, into: memoryview, etag: str | None = None,
            wrap: bool = False) -> int:
        """Read bytes [offset, offset + n) of the object into `into` (or, with `wrap`, through
        it over and over: a throughput try keeps nothing). Returns how many bytes it read, n
        unless it left the rest to botocore; a byte it returns is always the object's byte at
        its offset (an answer for another range is never read)."""
        if n <= 0:
            return 0
        with self.lock:
            self.requests += 1
        if not self.enabled:
            return self._fallback(usable=True)
        scheme, host, port, path = self._url(bucket, key)
        if _proxied(scheme, host):
            return self._fallback(usable=True)  # botocore goes through the proxy; a socket would not
        headers = {"Range": f"bytes={offset}-{offset + n - 1}"}
        if etag:
            headers["If-Match"] = etag
        signed_anew = False
        while True:
            try:
                conn, reused = self._connection(scheme, host, port)
            except ssl.SSLError:
                self._drop()
                self.enabled = False  # TLS this client cannot verify: botocore's trust, for good
                return self._fallback()
            except (OSError, http.client.HTTPException):
                self._drop()
                return self._fallback()  # refused or timed out: botocore retries and says what
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                self._drop()
                if reused:
                    continue  # a keep-alive connection the server had closed: once more, anew
                return self._fallback()
            if resp.status in (400, 403) and not signed_anew:
                self._drop()  # perhaps a URL signed with credentials since rotated: sign again
                scheme, host, port, path = self._url(bucket, key, fresh=True)
                signed_anew = True
                continue
            break
        span = _range_start(resp.getheader("Content-Range"))
        if not ((resp.status == 206 and span is not None and span[0] == offset and span[1] <= offset + n - 1)
                or (resp.status == 200 and offset == 0)):
            # an error answer (its body unread), a server that ignored the range, or an answer
            # for another range than asked: botocore gives it its meaning
            self._drop()
            return self._fallback()
        got = 0
        try:
            while got < n:
                if wrap:
                    at = got % len(into)
                    view = into[at:at + min(len(into) - at, n - got)]
                else:
                    view = into[got:got + min(n - got, 64 * READ_CHUNK)]
                k = resp.readinto(view)
                if not k:
                    break
                got += k
        except (OSError, http.client.HTTPException):
            self._drop()  # cut off mid-body: botocore asks for the rest
            return got
        if got < n or not resp.isclosed():  # short, or more body than asked (a 200, chunked)
            self._drop()
        with self.lock:
            self.unusable = 0
        return got

    def _fallback(self, usable: bool = False) -> int:
        with self.lock:
            self.fallbacks += 1
            if not usable:
                self.unusable += 1
                if self.unusable >= GIVE_UP_AFTER:
                    self.enabled = False
        return 0


def for_client(s3: Any) -> DirectGets:
    """The client's direct reader (one per client, kept as long as the client)."""
    with _CLIENTS_LOCK:
        got = _CLIENTS.get(s3)
        if got is None:
            got = _CLIENTS[s3] = DirectGets(s3)
        return got


def kind(s3: Any) -> str:
    """How this client's ranged GETs were read so far (what the documents record)."""
    return for_client(s3).kind
