"""Object storage against a real S3 server (moto's, on loopback): upload, download, ranged reads,
the GET ceiling, error mapping, and the node cache with a herd of real processes."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import pytest

from loadbench.errors import CheckpointError, ConfigError, Transient, exit_code
from loadbench.schema.manifest import MANIFEST
from loadbench.storage import nodecache, objectstore, s3direct
from loadbench.storage.checkpoint import open_checkpoint
from loadbench.storage.objectstore import ObjectMismatch
from tests.conftest import ROOT

pytest.register_assert_rewrite("tests.s3server")
from tests.s3server import S3Server, free_port  # noqa: E402

pytest_plugins = ("tests.s3server",)  # its fixtures: s3_server, s3_env, bucket

PART = objectstore.MIN_PART_BYTES  # 5 MiB parts: every ~7 MB weight file goes multipart


def tree(root: Path) -> dict[str, str]:
    """Every visible file under root: relative path -> sha256."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not any(p.startswith(".") for p in rel.parts):
            out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


@pytest.fixture
def uploaded(saved_model: Path, s3_env: S3Server, bucket: str) -> str:
    """opt-tiny uploaded for one test, which may damage it."""
    uri = f"s3://{bucket}/models/opt-tiny"
    objectstore.upload_folder(str(saved_model), uri, concurrency=8, part_bytes=PART)
    return uri


@pytest.fixture(scope="module")
def published(saved_model: Path, s3_server: S3Server) -> str:
    """opt-tiny uploaded once for the tests that only read it."""
    uri = f"s3://{s3_server.create_bucket()}/models/opt-tiny"
    objectstore.upload_folder(str(saved_model), uri, concurrency=8, part_bytes=PART, s3=s3_server.client())
    return uri


# --------------------------------------------------------------------------- upload and download

def test_upload_then_download_gives_the_same_bytes_and_a_checkpoint_that_opens(
        saved_model: Path, s3_env: S3Server, bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/models/opt-tiny"
    up = objectstore.upload_folder(str(saved_model), uri, concurrency=8, part_bytes=PART)
    local = tree(saved_model)
    assert up["files"] == len(local)
    assert up["bytes"] == sum((saved_model / r).stat().st_size for r in local)
    assert up["concurrency"] == 8 and up["part_bytes"] == PART and up["seconds"] > 0
    assert up["uri"] == uri and "secret" not in json.dumps(up)

    down = objectstore.download_folder(uri, str(tmp_path / "copy"), concurrency=4, part_bytes=PART)
    assert tree(tmp_path / "copy") == local
    assert down["bytes"] == up["bytes"] and down["files"] == up["files"] and down["concurrency"] == 4
    assert not [p for p in (tmp_path / "copy").rglob("*") if objectstore.PARTIAL in p.name]
    for fmt in json.loads((saved_model / MANIFEST).read_text())["formats"]:
        open_checkpoint(str(tmp_path / "copy"), fmt)  # the existing checks: manifest, every size

    only = objectstore.download_folder(uri, str(tmp_path / "st"), formats=["safetensors"])
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == ["config.json", MANIFEST, "safetensors"]
    assert only["formats"] == ["safetensors"]
    open_checkpoint(str(tmp_path / "st"), "safetensors")


def test_the_manifest_is_the_last_object_written(
        saved_model: Path, s3_env: S3Server, bucket: str, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    shutil.copytree(saved_model, folder)
    (folder / "extra.bin").write_bytes(os.urandom(12 << 20))  # 3 parts: a multipart upload
    c = objectstore.client(concurrency=8)
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(params: dict[str, Any], model: Any, **_kwargs: Any) -> None:
        with lock:
            events.append((model.name, params.get("Key", "")))

    for op in ("PutObject", "CompleteMultipartUpload", "DeleteObject"):
        c.meta.events.register(f"provide-client-params.s3.{op}", record)
    objectstore.upload_folder(str(folder), f"s3://{bucket}/ck", concurrency=8, part_bytes=PART, s3=c)
    assert events[0] == ("DeleteObject", f"ck/{MANIFEST}")  # an older manifest goes first
    assert events[-1] == ("PutObject", f"ck/{MANIFEST}")
    written = {key for op, key in events if op != "DeleteObject"}
    assert written == {f"ck/{rel}" for rel in tree(folder)}
    assert ("CompleteMultipartUpload", "ck/extra.bin") in events


def test_an_interrupted_upload_leaves_no_manifest(
        uploaded: str, saved_model: Path, s3_env: S3Server, tmp_path: Path) -> None:
    u = objectstore.parse_uri(uploaded)

    def stop(message: str) -> None:
        if message.startswith("upload: ") and "(" in message and "files" not in message:
            raise KeyboardInterrupt  # killed after the first file

    with pytest.raises(KeyboardInterrupt):
        objectstore.upload_folder(str(saved_model), uploaded, concurrency=2, part_bytes=PART, progress=stop)
    assert MANIFEST not in objectstore.list_objects(u)  # the old one was deleted first
    with pytest.raises(CheckpointError) as err:
        objectstore.download_folder(uploaded, str(tmp_path / "d"))
    msg = one_line(err.value)
    assert u.bucket in msg and u.key(MANIFEST) in msg and "incomplete" in msg
    assert exit_code(err.value) == 2


def test_a_truncated_or_changed_object_is_a_mismatch(uploaded: str, s3_env: S3Server, tmp_path: Path) -> None:
    u = objectstore.parse_uri(uploaded)
    c = s3_env.client()
    key = u.key("safetensors/model.safetensors")
    data = c.get_object(Bucket=u.bucket, Key=key)["Body"].read()
    c.put_object(Bucket=u.bucket, Key=key, Body=data[:-10])
    with pytest.raises(ObjectMismatch) as err:
        objectstore.download_folder(uploaded, str(tmp_path / "d"), formats=["safetensors"])
    assert key in one_line(err.value) and "manifest says" in str(err.value)
    assert exit_code(err.value) == 1
    assert not (tmp_path / "d" / MANIFEST).exists()

    # Same size, other bytes: a GET pinned to the listed ETag refuses the new version.
    old = objectstore.list_objects(u)["tensorizer/model.tensors"]
    body = c.get_object(Bucket=u.bucket, Key=old.key)["Body"].read()
    c.put_object(Bucket=u.bucket, Key=old.key, Body=bytes([body[0] ^ 1]) + body[1:])
    with pytest.raises(ObjectMismatch):
        objectstore.read_ranges(u.child("tensorizer/model.tensors"), [(0, 100)], [bytearray(100)],
                                etag=old.etag)


# --------------------------------------------------------------------------- ranged reads, ceiling

def test_ranged_reads_fill_the_callers_buffers(s3_env: S3Server, bucket: str) -> None:
    data = os.urandom(3 << 20)
    s3_env.client().put_object(Bucket=bucket, Key="obj/blob.bin", Body=data)
    obj = f"s3://{bucket}/obj/blob.bin"
    ranges = [(0, 1000), (5000, 1 << 20), (len(data) - 7, 7), (123, 0)]
    into: list[Union[bytearray, memoryview]] = [bytearray(1000), memoryview(bytearray(2 << 20)),
                                                bytearray(7), bytearray(0)]
    assert objectstore.read_ranges(obj, ranges, into, concurrency=4) == 1000 + (1 << 20) + 7
    assert bytes(into[0]) == data[:1000]
    assert bytes(into[1][:1 << 20]) == data[5000:5000 + (1 << 20)]
    assert bytes(into[2]) == data[-7:]

    whole = bytearray(len(data) - 10)
    info = objectstore.object_info(obj)
    assert info.bytes == len(data)
    n = objectstore.read_object(obj, whole, offset=10, range_bytes=256 << 10, concurrency=4, etag=info.etag)
    assert n == len(whole) and bytes(whole) == data[10:]

    with pytest.raises(ObjectMismatch):  # past the end: the object is shorter than asked
        objectstore.read_ranges(obj, [(len(data) - 5, 10)], [bytearray(10)])
    with pytest.raises(ValueError):
        objectstore.read_ranges(obj, [(0, 10)], [bytearray(5)])


def test_ranged_reads_go_from_the_socket_into_the_buffer_and_errors_to_botocore(
        s3_env: S3Server, bucket: str) -> None:
    """The instrument's client: presigned (SigV4) GETs read with readinto, botocore never asked.
    An answer it cannot use is botocore's to give meaning to: while moto checks signatures, its
    server answers presigned GETs with a 500, so there every read falls back, still right, and
    wrong credentials still fail as credentials."""
    data = os.urandom(2 << 20)
    s3_env.client().put_object(Bucket=bucket, Key="d/blob.bin", Body=data)
    obj = f"s3://{bucket}/d/blob.bin"
    c = objectstore.client(concurrency=4)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in c.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "d/blob.bin"})  # SigV4, not botocore's SigV2
    whole = bytearray(len(data))
    assert objectstore.read_object(obj, whole, range_bytes=256 << 10, concurrency=4, s3=c) == len(data)
    direct = s3direct.for_client(c)
    assert bytes(whole) == data and direct.kind == s3direct.NAME == s3direct.kind(c)
    assert direct.requests == 8 and direct.fallbacks == 0
    with s3_env.authentication() as (key_id, secret):
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key_id, secret
        signed = objectstore.client(concurrency=2)
        part = bytearray(1 << 20)
        assert objectstore.read_object(obj, part, offset=4096, concurrency=2, s3=signed) == len(part)
        assert bytes(part) == data[4096:4096 + len(part)]
        assert s3direct.for_client(signed).fallbacks == s3direct.for_client(signed).requests > 0
        assert s3direct.kind(signed) == s3direct.FALLBACK  # given up after 3 unusable answers
        os.environ["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-q9w8e7"
        wrong = objectstore.client(concurrency=2)
        with pytest.raises(ConfigError) as err:
            objectstore.read_ranges(obj, [(0, 10)], [bytearray(10)], s3=wrong)
        assert "credentials" in one_line(err.value) and "wrong-secret" not in one_line(err.value)
        assert s3direct.for_client(wrong).fallbacks == 1
        os.environ["AWS_SECRET_ACCESS_KEY"] = secret


def test_a_proxy_in_the_environment_leaves_the_reads_to_botocore(
        s3_env: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore sends requests through HTTP(S)_PROXY; a socket of our own would go around it, so
    the direct reader reads nothing where the endpoint's host is proxied, and says so."""
    s3_env.client().put_object(Bucket=bucket, Key="p/blob.bin", Body=b"0123456789")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    c = objectstore.client()  # held: a direct reader lives as long as its client
    proxied = s3direct.for_client(c)
    assert proxied.get(bucket, "p/blob.bin", 0, 10, memoryview(bytearray(10))) == 0
    assert proxied.counters() == (1, 1) and proxied.kind == s3direct.FALLBACK
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    c2 = objectstore.client()
    direct = s3direct.for_client(c2)
    buf = bytearray(10)
    assert direct.get(bucket, "p/blob.bin", 0, 10, memoryview(buf)) == 10 and bytes(buf) == b"0123456789"
    assert direct.kind == s3direct.NAME


class Quiet(http.server.BaseHTTPRequestHandler):
    """A loopback test server's handler: keep-alive HTTP/1.1, no request log."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def loopback(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 with `handler`, for as long as the block; its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_direct_reader_never_places_an_answer_for_another_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hostile server on loopback: a 206 for a range it was not asked, a 200 with the whole
    object for a range that does not start at 0, a chunked body. The bytes are right every time,
    from botocore where the direct reader could not trust the answer; the label says which."""
    data = os.urandom(1 << 16)
    mode = {"how": "shifted"}

    class Hostile(Quiet):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            first, last = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
            presigned = "X-Amz-Signature" in self.path
            if presigned and mode["how"] == "shifted":
                first, last = first + 16, last + 16  # another range than asked, labelled as such
            if presigned and mode["how"] == "whole":
                body, status, extra = data, 200, {}
            else:
                body, status = data[first:last + 1], 206
                extra = {"Content-Range": f"bytes {first}-{first + len(body) - 1}/{len(data)}"}
            self.send_response(status)
            for k, v in {"Content-Type": "application/octet-stream", "ETag": '"0123456789abcdef"',
                         **extra}.items():
                self.send_header(k, v)
            if presigned and mode["how"] == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for at in range(0, len(body), 4096):
                    piece = body[at:at + 4096]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback(Hostile) as endpoint:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "hostile-test")  # signed: the direct reader presigns
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hostile-secret")
        for how, expected in (("shifted", s3direct.FALLBACK), ("whole", s3direct.FALLBACK),
                              ("chunked", s3direct.NAME)):
            mode["how"] = how
            c = objectstore.client(endpoint, read_timeout=5)
            for offset in (100, 5000):
                into = bytearray(3000)
                assert objectstore.read_ranges("s3://hostile/blob", [(offset, 3000)], [into], s3=c) == 3000
                assert bytes(into) == data[offset:offset + 3000], (how, offset)
            assert s3direct.kind(c) == expected, how


def test_a_body_cut_off_mid_stream_is_requested_again_from_where_it_stopped(tmp_path: Path) -> None:
    """A real HTTP server on loopback that sends the headers of the whole range, half of the
    bytes, and closes the connection, once: the ranged read resumes and the bytes are right."""
    data = os.urandom(1 << 20)
    ranges_seen: list[str] = []

    class Flaky(Quiet):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            spec = self.headers["Range"]
            ranges_seen.append(spec)
            first, last = (int(x) for x in spec.split("=")[1].split("-"))
            body = data[first:last + 1]
            self.send_response(206)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            self.end_headers()
            if len(ranges_seen) == 1:  # the first answer breaks off halfway
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    with loopback(Flaky) as endpoint:
        for direct in (True, False):  # the direct reader hands over to botocore; botocore alone
            ranges_seen.clear()
            c = objectstore.client(endpoint, anonymous=True, read_timeout=5)
            s3direct.for_client(c).enabled = direct
            into = bytearray(600_000)
            assert objectstore.read_ranges("s3://flaky/blob", [(1000, len(into))], [into], s3=c) == len(into)
            assert bytes(into) == data[1000:1000 + len(into)]
            assert ranges_seen == ["bytes=1000-600999", "bytes=301000-600999"], (direct, ranges_seen)


def test_the_get_ceiling_is_shaped_like_the_other_ceilings(
        published: str, saved_model: Path, s3_env: S3Server) -> None:
    got = objectstore.get_ceiling(published, streams=(1, 4), range_bytes=(1 << 20, 4 << 20), seconds=0.3)
    assert set(got["tries"]) == {"1x1M", "1x4M", "4x1M", "4x4M"}
    assert got["gbps"] > 0 and got["bytes"] > 0 and got["seconds"] > 0 and "ranged GETs" in got["method"]
    assert got["spread"]["tries"] == 4
    assert 0 < got["spread"]["min_gbps"] <= got["gbps"] == got["spread"]["max_gbps"]
    for t in got["tries"].values():
        assert t["requests"] >= t["streams"] and t["bytes"] > 0
        assert t["client"] == s3direct.NAME and f"({s3direct.NAME})" in t["method"]
    assert got["object"].endswith("model.tensors")  # the largest object by default
    one = objectstore.get_ceiling(published, "config.json", streams=(2,), range_bytes=64, seconds=0.1)
    assert one["object"] == f"{published}/config.json"
    assert one["object_bytes"] == (saved_model / "config.json").stat().st_size
    assert one["tries"]["2x64B"]["gbps"] > 0


# --------------------------------------------------------------------------- bad input

def test_a_missing_bucket_or_key_is_bad_input_in_one_line(
        s3_env: S3Server, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        objectstore.download_folder("s3://no-such-bucket-lb/models/x", str(tmp_path / "d"))
    msg = one_line(err.value)
    assert "no-such-bucket-lb" in msg and "does not exist" in msg and exit_code(err.value) == 2

    with pytest.raises(CheckpointError) as err:  # a HEAD (no body): the bucket asked about apart
        objectstore.object_info("s3://no-such-bucket-lb/models/x/manifest.json")
    assert "bucket 'no-such-bucket-lb' does not exist" in one_line(err.value)

    missing = f"s3://{bucket}/nope/model.tensors"
    for call in (lambda: objectstore.object_info(missing),
                 lambda: objectstore.read_ranges(missing, [(0, 4)], [bytearray(4)])):
        with pytest.raises(CheckpointError) as err:
            call()
        msg = one_line(err.value)
        assert bucket in msg and "nope/model.tensors" in msg and exit_code(err.value) == 2

    with pytest.raises(CheckpointError) as err:  # an empty prefix: no manifest
        objectstore.download_folder(f"s3://{bucket}/empty", str(tmp_path / "e"))
    assert f"{bucket}" in one_line(err.value) and "empty/manifest.json" in str(err.value)


def test_wrong_credentials_say_so_and_never_print_the_secret(s3_env: S3Server, bucket: str) -> None:
    s3_env.client().put_object(Bucket=bucket, Key="p/manifest.json", Body=b"{}")
    with s3_env.authentication() as (key_id, secret):
        for kid, bad_secret in ((key_id, "wrong-secret-a1b2c3d4e5f6"),  # SignatureDoesNotMatch
                                ("AKIAUNKNOWNUNKNOWN01", "another-secret-zz99")):  # InvalidAccessKeyId
            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = kid, bad_secret
            with pytest.raises(ConfigError) as err:
                objectstore.list_objects(f"s3://{bucket}/p", objectstore.client(concurrency=2))
            msg = one_line(err.value)
            assert "credentials" in msg and bucket in msg and exit_code(err.value) == 2
            assert bad_secret not in msg and secret not in msg
            assert "(credentials from: env)" in msg
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key_id, secret
        assert "manifest.json" in objectstore.list_objects(f"s3://{bucket}/p", objectstore.client())


def test_an_unreachable_endpoint_is_transient_within_seconds(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    start = time.perf_counter()
    with pytest.raises(Transient) as err:
        objectstore.download_folder("s3://some-bucket/p", str(tmp_path / "d"))
    assert time.perf_counter() - start < 10
    msg = one_line(err.value)
    assert "unreachable" in msg and "AWS_ENDPOINT_URL" in msg and exit_code(err.value) == 3


# --------------------------------------------------------------------------- the node cache

def test_the_first_pod_fills_the_cache_and_a_later_one_hits(
        published: str, saved_model: Path, s3_env: S3Server, tmp_path: Path) -> None:
    root = tmp_path / "cache"
    first = nodecache.ensure_cached(published, str(root), concurrency=4, part_bytes=PART, verify="etag")
    assert first["role"] == "filled" and first["bytes"] > 0 and first["download_s"] > 0
    assert first["etags_checked"] == first["files"] and first["etags_unverifiable"] == 0
    entry = Path(first["path"])
    assert entry == root / objectstore.parse_uri(published).bucket / "models" / "opt-tiny"
    assert tree(entry) == tree(saved_model)
    assert not [p for p in entry.iterdir() if p.name.startswith(nodecache.STAGING)]

    later = nodecache.ensure_cached(published, str(root))
    assert later["role"] == "hit" and later["bytes"] == 0 and later["lock_wait_s"] == 0
    assert later["entry_bytes"] == first["entry_bytes"] and later["filled_by"] == first["filled_by"]
    open_checkpoint(later["path"], "tensorizer")

    path, rec = nodecache.fetch(published, str(root), "node")
    assert rec["role"] == "hit" and path == str(entry)
    path, rec = nodecache.fetch(published, str(tmp_path / "plain"), "none", formats=["safetensors"])
    assert rec["role"] == "download" and rec["cache"] == "none"
    open_checkpoint(path, "safetensors")


def test_the_cache_adds_formats_and_refills_what_changed_in_the_bucket(
        uploaded: str, s3_env: S3Server, tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    a = nodecache.ensure_cached(uploaded, root, formats=["safetensors"])
    assert a["role"] == "filled" and a["formats"] == ["safetensors"]
    assert not os.path.exists(os.path.join(a["path"], "tensorizer"))
    b = nodecache.ensure_cached(uploaded, root, formats=["tensorizer"])
    assert b["role"] == "filled" and b["formats_added"] == ["tensorizer"]
    assert nodecache.ensure_cached(uploaded, root, formats=["safetensors", "tensorizer"])["role"] == "hit"

    u = objectstore.parse_uri(uploaded)  # a re-save changes an object: the entry is stale
    c = s3_env.client()
    key = u.key("tensorizer/model.tensors")
    body = c.get_object(Bucket=u.bucket, Key=key)["Body"].read()
    c.put_object(Bucket=u.bucket, Key=key, Body=bytes([body[0] ^ 1]) + body[1:])
    again = nodecache.ensure_cached(uploaded, root, formats=["tensorizer"])
    assert again["role"] == "filled" and again["replaced"]
    assert Path(again["path"], "tensorizer", "model.tensors").read_bytes()[0] == body[0] ^ 1

    # a damaged local file is never served
    Path(again["path"], "tensorizer", "model.tensors").write_bytes(b"short")
    fixed = nodecache.ensure_cached(uploaded, root, formats=["tensorizer"], revalidate=False)
    assert fixed["role"] == "filled"


HERD_CHILD = """
import json, os, sys, time
from loadbench.storage import nodecache
ready, go = sys.argv[1], sys.argv[2]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
rec = nodecache.ensure_cached(sys.argv[3], sys.argv[4], formats=["safetensors"], concurrency=4,
                              part_bytes=5 << 20)
print(json.dumps({k: rec[k] for k in ("role", "path", "lock_wait_s", "download_s", "bytes")}))
"""


def child_env(server: S3Server) -> dict[str, str]:
    env = dict(os.environ, **server.env())
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def test_a_herd_of_pods_fills_the_cache_once(
        published: str, saved_model: Path, s3_env: S3Server, tmp_path: Path) -> None:
    n, root = 4, tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", HERD_CHILD, str(tmp_path / f"ready{i}"),
                               str(tmp_path / "go"), published, str(root)], env=child_env(s3_env), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(n)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.01)
    (tmp_path / "go").touch()  # all at once
    records = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err[-3000:]
        records.append(json.loads(out.strip().splitlines()[-1]))
    roles = sorted(r["role"] for r in records)
    assert roles.count("filled") == 1, records
    assert set(roles) <= {"filled", "waited", "hit"}
    assert len({r["path"] for r in records}) == 1
    want = {rel: h for rel, h in tree(saved_model).items()
            if "/" not in rel or rel.startswith("safetensors/")}
    assert tree(Path(records[0]["path"])) == want
    assert sum(r["bytes"] for r in records) == max(r["bytes"] for r in records)  # downloaded once


KILLED_CHILD = """
import os, sys, time
from loadbench.storage import nodecache
def stall(message):
    if message.startswith("download: ") and "(" in message and "files" not in message:
        open(sys.argv[1], "w").close()
        time.sleep(600)
nodecache.ensure_cached(sys.argv[2], sys.argv[3], concurrency=2, part_bytes=5 << 20, progress=stall)
"""


def test_a_killed_fill_leaves_nothing_visible_and_the_next_fill_cleans_up(
        published: str, s3_env: S3Server, tmp_path: Path) -> None:
    root, stuck = tmp_path / "cache", tmp_path / "stuck"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(stuck), published, str(root)],
                            env=child_env(s3_env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not stuck.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    entry = Path(nodecache.entry_path(str(root), published))
    assert nodecache.read_record(str(entry)) is None
    left = [p.name for p in entry.iterdir()]
    assert left and all(name.startswith(nodecache.STAGING) for name in left), left

    rec = nodecache.ensure_cached(published, str(root), lock_timeout=10)  # the lock died with the pod
    assert rec["role"] == "filled"
    assert not [p for p in entry.iterdir() if p.name.startswith(".") and p.name != nodecache.MARKER]


def test_download_etags_match_and_a_changed_file_does_not(
        published: str, s3_env: S3Server, tmp_path: Path) -> None:
    u = objectstore.parse_uri(published)
    objectstore.download_folder(published, str(tmp_path / "d"), formats=["tensorizer"])
    info = objectstore.list_objects(u)["tensorizer/model.tensors"]
    assert info.etag.strip('"').endswith("-2")  # multipart, 5 MiB parts
    path = tmp_path / "d" / "tensorizer" / "model.tensors"
    assert objectstore.etag_matches(str(path), info, u.bucket, s3_env.client())
    assert objectstore.etag_matches(str(path), info) is None  # the part size is unknown: no guess
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    assert objectstore.etag_matches(str(path), info, u.bucket, s3_env.client()) is False


def test_the_client_ab_times_every_client_on_one_object(
        s3_env: S3Server, bucket: str, tmp_path: Path) -> None:
    """benchmarks/s3_client_ab.py: the direct reader, botocore and curl on the same ranges."""
    s3_env.client().put_object(Bucket=bucket, Key="ab/blob.bin", Body=os.urandom(3 << 20))
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "s3_client_ab.py"), f"s3://{bucket}/ab/blob.bin",
                           "--streams", "1,2", "--range-mb", "1", "--seconds", "0.2", "--rounds", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    tries = json.loads(out.read_text())["tries"]
    clients = {t["client"] for t in tries}
    assert {s3direct.NAME, s3direct.FALLBACK} <= clients
    assert ("curl (a process per range)" in clients) == bool(shutil.which("curl"))
    for t in tries:
        assert t["gbps"] > 0 and t["bytes"] >= t["range_bytes"] and not t.get("failed"), t
    assert "GB/s" in proc.stdout
