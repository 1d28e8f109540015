"""Ranged GETs read straight into the caller's buffer: the instrument's client.

botocore reads a response body through urllib3, whose `readinto` reads into a new bytes
object and copies it over (urllib3 2.x), with the GIL held for the copy: with 16 GETs in flight
the Python client, not the server, set the GET ceiling, and tensorizer's `curl` readers beat
it (docs/results/2026-12-03-h200-llama-2-7b-fidelity-nodecache). Here boto3 still resolves the
endpoint and the credentials and signs (a presigned URL, as tensorizer streams one), and each
thread keeps one keep-alive `http.client` connection whose body is read with `readinto` into
the destination: one copy, socket to buffer, the GIL released while the kernel copies.

Anything this client cannot read as a plain 200/206 answer (an error status, a reset, a proxy
in the way, TLS it cannot verify) is left to botocore: `get` returns the bytes it did read,
and the caller's botocore path goes on from there, so errors keep their one meaning
(loadbench.storage.s3client.error_for) and nothing here has to know S3's error codes.
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
RENEW_AFTER = 1800  # a URL is signed again after this: credentials (a pod's role) rotate
NAME = "http.client readinto, presigned"
FALLBACK = "botocore"

_CLIENTS: weakref.WeakKeyDictionary[Any, DirectGets] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


def _proxied(scheme: str, host: str) -> bool:
    """Whether the environment sends this host's requests through a proxy (botocore honours
    HTTP(S)_PROXY and NO_PROXY; a direct socket would not)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme)) and not urllib.request.proxy_bypass(host)


class DirectGets:
    """One client's ranged GETs over presigned URLs, a keep-alive connection per thread.
    `enabled` turns False for good after a failure that is not an HTTP answer (TLS, a refused
    connection): botocore then reads everything, and `kind` says so."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        endpoint = urlsplit(s3.meta.endpoint_url or "")
        self.enabled = endpoint.scheme in ("http", "https") and not _proxied(endpoint.scheme,
                                                                             endpoint.hostname or "")
        self.urls: dict[tuple[str, str], tuple[float, str, str, str, int]] = {}
        self.lock = threading.Lock()
        self.local = threading.local()
        self.requests = self.fallbacks = 0

    @property
    def kind(self) -> str:
        return NAME if self.enabled else FALLBACK

    def _url(self, bucket: str, key: str) -> tuple[str, str, int, str]:
        """(scheme, host, port, path with the signature), signed at most RENEW_AFTER ago."""
        now = time.monotonic()
        with self.lock:
            got = self.urls.get((bucket, key))
        if got is None or now - got[0] > RENEW_AFTER:
            url = urlsplit(self.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                          ExpiresIn=PRESIGN_SECONDS))
            port = url.port or (443 if url.scheme == "https" else 80)
            got = (now, url.scheme, url.hostname or "", f"{url.path}?{url.query}" if url.query else url.path,
                   port)
            with self.lock:
                self.urls[(bucket, key)] = got
        return got[1], got[2], got[4], got[3]

    def _connection(self, scheme: str, host: str, port: int) -> tuple[http.client.HTTPConnection, bool]:
        """(this thread's connection to host:port, whether it is one already used)."""
        conn = getattr(self.local, "conn", None)
        if conn is not None and (conn.host, conn.port) == (host, port):
            return conn, True
        self._drop()
        timeout = float(getattr(self.s3.meta.config, "read_timeout", 60) or 60)
        if scheme == "https":
            context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
            conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.local.conn = conn
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
        unless it left the rest to botocore."""
        if not self.enabled or n <= 0:
            return 0
        scheme, host, port, path = self._url(bucket, key)
        headers = {"Range": f"bytes={offset}-{offset + n - 1}"}
        if etag:
            headers["If-Match"] = etag
        with self.lock:
            self.requests += 1
        while True:
            conn, reused = self._connection(scheme, host, port)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                break
            except (OSError, http.client.HTTPException):
                self._drop()
                if reused:
                    continue  # a keep-alive connection the server had closed: once more, anew
                # TLS, a refused or reset connection: botocore retries and says what it means
                self.enabled = False
                return self._fallback()
        if resp.status != 206 and not (resp.status == 200 and offset == 0):
            self._drop()  # an error answer (its body unread), or a server that ignored the range
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
        if got < n or resp.length:  # shorter than asked (or a longer body): the connection is done
            self._drop()
        return got

    def _fallback(self) -> int:
        with self.lock:
            self.fallbacks += 1
        return 0


def for_client(s3: Any) -> DirectGets:
    """The client's direct reader (one per client, kept as long as the client)."""
    with _CLIENTS_LOCK:
        got = _CLIENTS.get(s3)
        if got is None:
            got = _CLIENTS[s3] = DirectGets(s3)
        return got


def kind(s3: Any) -> str:
    """How this client's ranged GETs are read (what the documents record): NAME or FALLBACK."""
    return for_client(s3).kind
