"""Object storage without a server: URIs, redaction, the error mapping (on botocore's own
exception types), cache entry names, part and range arithmetic, the client's configuration."""

from __future__ import annotations

import gc
import hashlib
import os
import weakref
from pathlib import Path
from typing import Any

import pytest

from loadbench.errors import CheckpointError, ConfigError, Transient, exit_code
from loadbench.storage import nodecache, objectstore, s3direct
from loadbench.storage.objectstore import ObjectInfo, ObjectMismatch, S3Uri, parse_uri, redact

pytest.importorskip("boto3")


@pytest.mark.parametrize("text,bucket,prefix", [
    ("s3://models/opt-tiny", "models", "opt-tiny"),
    ("s3://my.bucket-1/a/b/c/", "my.bucket-1", "a/b/c"),
    ("s3://abc", "abc", ""),
    ("s3://abc/", "abc", ""),
    ("  s3://abc/x  ", "abc", "x"),
    ("S3://abc/x", "abc", "x"),
])
def test_good_uris_parse(text: str, bucket: str, prefix: str) -> None:
    u = parse_uri(text)
    assert (u.bucket, u.prefix) == (bucket, prefix)
    assert str(parse_uri(str(u))) == str(u)


@pytest.mark.parametrize("text,says", [
    ("", "empty"),
    ("s3://ab/x", "too short"),
    ("s3://" + "a" * 64 + "/x", "3 to 63"),
    ("s3://My_Bucket/x", "characters"),
    ("s3://-abc/x", "begin and end"),
    ("s3://a..b/x", "'..'"),
    ("s3://192.168.1.1/x", "IP address"),
    ("s3:///x", "no bucket"),
    ("gs://abc/x", "scheme 'gs'"),
    ("https://host/abc", "not supported yet"),
    ("/local/path", "scheme 'none'"),
    ("s3://abc/a//b", "empty"),
    ("s3://abc/a/../b", "'..'"),
    ("s3://abc/x?versionId=3", "query string"),
])
def test_bad_uris_name_the_variable_and_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_uri(text)
    assert "MODEL_URI" in str(err.value) and says in str(err.value)
    assert exit_code(err.value) == 2


def test_credentials_in_a_uri_are_refused_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        parse_uri("s3://AKIAEXAMPLE:supersecret@bucket/x")
    assert "supersecret" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    assert "AWS_ACCESS_KEY_ID" in str(err.value)


@pytest.mark.parametrize("text,shown", [
    ("s3://bucket/prefix", "s3://bucket/prefix"),
    ("s3://user:secret@bucket/prefix", "s3://bucket/prefix"),
    ("https://host.example/a/b.bin?X-Amz-Signature=abc&X-Amz-Credential=AKIA",
     "https://host.example/a/b.bin"),
    ("https://acct.blob.core.windows.net/c/m?sv=2020&sig=SECRET#frag", "https://acct.blob.core.windows.net/c/m"),
    ("http://[::1", "<unparseable URI>"),
    ("/local/model", "/local/model"),
])
def test_redact_keeps_only_what_a_document_may_hold(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_a_uri_names_its_objects() -> None:
    u = S3Uri("bucket", "models/opt")
    assert u.key("manifest.json") == "models/opt/manifest.json"
    assert u.child("tensorizer/model.tensors") == S3Uri("bucket", "models/opt/tensorizer/model.tensors")
    assert S3Uri("bucket").key("a/b") == "a/b" and str(S3Uri("bucket")) == "s3://bucket"


# --------------------------------------------------------------------------- error mapping

def client_error(code: str, status: int, operation: str = "GetObject") -> Any:
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": "server says so"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@pytest.mark.parametrize("code,status,kind,words", [
    ("NoSuchBucket", 404, CheckpointError, ["bucket 'bkt' does not exist"]),
    ("NoSuchKey", 404, CheckpointError, ["key 'p/manifest.json'", "bucket 'bkt'"]),
    ("404", 404, CheckpointError, ["key 'p/manifest.json'"]),
    ("InvalidAccessKeyId", 403, ConfigError, ["credentials", "InvalidAccessKeyId"]),
    ("SignatureDoesNotMatch", 403, ConfigError, ["credentials", "AWS_SECRET_ACCESS_KEY"]),
    ("ExpiredToken", 400, ConfigError, ["credentials"]),
    ("AccessDenied", 403, ConfigError, ["credentials", "permission"]),
    ("403", 403, ConfigError, ["credentials"]),
    ("PreconditionFailed", 412, ObjectMismatch, ["changed"]),
    ("InvalidRange", 416, ObjectMismatch, ["shorter"]),
    ("SlowDown", 503, Transient, ["retry later"]),
    ("WeirdServerThing", 502, Transient, ["retry later"]),
    ("InvalidBucketName", 400, ConfigError, ["MODEL_URI"]),
])
def test_server_errors_map_to_exit_codes_in_one_line(
        code: str, status: int, kind: type[Exception], words: list[str]) -> None:
    err = objectstore.error_for(client_error(code, status), "bkt", "p/manifest.json", "http://127.0.0.1:1",
                                "env")
    assert isinstance(err, kind), err
    text = str(err)
    assert "\n" not in text and "s3://bkt/p/manifest.json" in text
    for w in words:
        assert w in text
    assert exit_code(err) == {CheckpointError: 2, ConfigError: 2, Transient: 3, ObjectMismatch: 1}[kind]


def test_connection_failures_are_transient_and_unknown_errors_pass_through() -> None:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, NoCredentialsError
    err = objectstore.error_for(EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b?X-Amz-Signature=s"),
                                "b", "k", "http://127.0.0.1:1")
    assert isinstance(err, Transient) and "X-Amz-Signature" not in str(err) and "AWS_ENDPOINT_URL" in str(err)
    assert 'endpoint URL: "http://127.0.0.1:1/b")' in str(err)  # the query goes, the quote stays
    assert isinstance(objectstore.error_for(ConnectTimeoutError(endpoint_url="http://x"), "b"), Transient)
    err = objectstore.error_for(NoCredentialsError(), "b", "k")
    assert isinstance(err, ConfigError) and "credentials" in str(err)
    odd = client_error("SomethingNew", 400)
    assert objectstore.error_for(odd, "b", "k") is odd
    plain = ValueError("x")
    assert objectstore.error_for(plain, "b") is plain


# --------------------------------------------------------------------------- the client

def test_the_client_takes_the_endpoint_and_a_pool_for_the_concurrency(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    c = objectstore.client(concurrency=64)
    assert c.meta.endpoint_url == "http://127.0.0.1:8333"
    assert c.meta.config.max_pool_connections >= 64
    assert c.meta.config.retries["total_max_attempts"] == 3 and c.meta.config.connect_timeout <= 5
    assert c.meta.config.s3["addressing_style"] == "path"
    assert c.meta.config.request_checksum_calculation == "when_required"  # seaweedfs#6548
    assert objectstore.describe(c) == {"endpoint": "http://127.0.0.1:8333", "region": c.meta.region_name,
                                       "credentials": "env"}
    assert objectstore.client("http://10.0.0.1:9000").meta.endpoint_url == "http://10.0.0.1:9000"
    assert objectstore.describe(objectstore.client(anonymous=True))["credentials"].startswith("none")


@pytest.mark.parametrize("endpoint", ["localhost:8333", "ftp://host", "http://user:pw@host:1"])
def test_a_bad_endpoint_is_a_config_error(endpoint: str) -> None:
    with pytest.raises(ConfigError) as err:
        objectstore.client(endpoint)
    assert "AWS_ENDPOINT_URL" in str(err.value) and "pw" not in str(err.value)


@pytest.mark.parametrize("concurrency,part", [(0, 8 << 20), (8, 1 << 20), (8, 6 << 30)])
def test_transfer_shapes_are_checked(concurrency: int, part: int, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError):
        objectstore.upload_folder(str(tmp_path), "s3://abc/x", concurrency=concurrency, part_bytes=part)


def test_uploading_a_folder_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        objectstore.upload_folder(str(tmp_path), "s3://abc/x")
    assert "manifest.json" in str(err.value)


# --------------------------------------------------------------------------- arithmetic

def test_split_ranges_covers_the_bytes_once() -> None:
    assert objectstore.split_ranges(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert objectstore.split_ranges(10, 4, offset=100) == [(100, 4), (104, 4), (108, 2)]
    assert objectstore.split_ranges(0, 4) == []


def test_local_etags_are_s3s(tmp_path: Path) -> None:
    data = os.urandom(11 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert objectstore.local_etag(str(path)) == hashlib.md5(data).hexdigest()
    parts = [data[i:i + (5 << 20)] for i in range(0, len(data), 5 << 20)]
    multipart = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
    assert objectstore.local_etag(str(path), 5 << 20, 3) == multipart
    md5 = hashlib.md5(data).hexdigest()
    assert objectstore.etag_matches(str(path), ObjectInfo("k", len(data), f'"{md5}"'))
    assert objectstore.etag_matches(str(path), ObjectInfo("k", len(data), '"' + "0" * 32 + '"')) is False
    assert objectstore.etag_matches(str(path), ObjectInfo("k", len(data), '"not-an-md5"')) is None


def test_remove_partials_removes_only_partials(tmp_path: Path) -> None:
    (tmp_path / ".model.bin.partial-1a2b").write_bytes(b"x")
    (tmp_path / ".model.bin.partial-1a2b.AbCd1234").write_bytes(b"x")
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / ".other").write_bytes(b"x")
    objectstore.remove_partials(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other", "model.bin"]


# --------------------------------------------------------------------------- the node cache

def test_cache_modes() -> None:
    assert nodecache.parse_cache_mode(None) == "none"
    assert nodecache.parse_cache_mode(" Node ") == "node"
    with pytest.raises(ConfigError) as err:
        nodecache.parse_cache_mode("shared")
    assert "S3_CACHE" in str(err.value)


def test_cache_entries_are_plain_folders_and_never_collide(tmp_path: Path) -> None:
    assert nodecache.entry_name("s3://models/opt/tiny") == "models/opt/tiny"
    assert nodecache.entry_path(str(tmp_path), "s3://models/opt") == str(tmp_path / "models" / "opt")
    odd = [nodecache.entry_name(S3Uri("models", p)) for p in ("a b/c", "a-b/c", "a*b/c", ".hidden/x")]
    assert odd[1] == "models/a-b/c" and len(set(odd)) == 4
    assert all(not part.startswith(".") for name in odd for part in name.split("/"))
    assert nodecache.lock_path(str(tmp_path), "s3://models/opt") != nodecache.lock_path(str(tmp_path),
                                                                                          "s3://models/opt2")


def test_an_entry_without_a_record_or_with_a_wrong_size_is_not_served(tmp_path: Path) -> None:
    assert nodecache.problems(str(tmp_path), None, None, None) == ["no complete fill recorded"]
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "m.bin").write_bytes(b"12345")
    (tmp_path / "config.json").write_bytes(b"{}")
    record = {"formats": ["st"], "all_formats": ["st", "tz"],
              "objects": {"st/m.bin": {"bytes": 5, "etag": "e1"}, "config.json": {"bytes": 2, "etag": "e2"},
                          "tz/t.bin": {"bytes": 9, "etag": "e3"}}}
    assert nodecache.problems(str(tmp_path), record, ["st"], None) == []
    assert nodecache.problems(str(tmp_path), record, None, None) == ["format(s) tz not cached"]
    listing = {"st/m.bin": ObjectInfo("p/st/m.bin", 5, "e1"),
               "config.json": ObjectInfo("p/config.json", 2, "e9")}
    assert "changed in the bucket" in nodecache.problems(str(tmp_path), record, ["st"], listing)[0]
    (tmp_path / "st" / "m.bin").write_bytes(b"123")
    assert "is 3 bytes" in nodecache.problems(str(tmp_path), record, ["st"], None)[0]


def test_a_direct_reader_lives_no_longer_than_its_client_and_labels_its_reads():
    c = objectstore.client("http://127.0.0.1:9", anonymous=True)
    reader = s3direct.for_client(c)
    assert s3direct.for_client(c) is reader and reader.kind == s3direct.NAME
    gone = weakref.ref(c)
    del c
    gc.collect()
    assert gone() is None, "the reader keeps its client (and its connection pool) alive"
    assert s3direct.label(0, 0, enabled=False) == s3direct.FALLBACK
    assert s3direct.label(8, 0) == s3direct.NAME and s3direct.label(8, 8) == s3direct.FALLBACK
    assert s3direct.label(8, 3) == f"{s3direct.NAME}; botocore for 3 of 8 requests"
