"""Pods reading their checkpoint from object storage, end to end, against a real S3 server
(moto's, on loopback): save_models.py uploads, deserialize_benchmark.py downloads and loads
inside the clock, every tensor verified; a node cache filled once and read after; bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadbench import schema
from tests.conftest import result_lines, run_script

pytest.register_assert_rewrite("tests.s3server")
from tests.s3server import S3Server  # noqa: E402

pytest_plugins = ("tests.s3server",)

LIBS = "safetensors,tensorizer,reference"


@pytest.fixture(scope="module")
def uploaded(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, S3Server]:
    """opt-tiny saved by the real script with MODEL_URI set: saved locally, then uploaded."""
    bucket = s3_server.create_bucket("ckpt")
    uri = f"s3://{bucket}/models/opt-tiny"
    local = tmp_path_factory.mktemp("save") / "opt-tiny"
    proc = run_script("save_models.py", {**s3_server.env(), "MODEL_ID": "random/opt-tiny",
                                         "MODEL_PATH": str(local), "MODEL_URI": uri,
                                         "LIBRARIES": "safetensors,tensorizer", "S3_CONCURRENCY": "4"})
    assert proc.returncode == 0, proc.stderr
    assert "uploaded" in proc.stderr and uri in proc.stderr
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert "models/opt-tiny/manifest.json" in keys and any(k.endswith(".tensors") for k in keys)
    return uri, s3_server


def bench(uri: str, server: S3Server, model_path: Path, res: Path, **extra: str):
    env = {**server.env(), "MODEL_ID": "random/opt-tiny", "MODEL_PATH": str(model_path),
           "MODEL_URI": uri, "RES_PATH": str(res), "LIBRARIES": LIBS, "SKIP_INFERENCE": "1",
           "CEILINGS": "0", **extra}
    return run_script("deserialize_benchmark.py", env)


def test_every_library_loads_from_s3_verified_with_the_download_inside_the_clock(uploaded, tmp_path):
    uri, server = uploaded
    proc = bench(uri, server, tmp_path / "pod", tmp_path / "res", NUM_TRIALS="2", S3_READ="download")
    assert proc.returncode == 0, proc.stderr
    docs = result_lines(proc.stdout)
    assert sorted(d["library"] for d in docs) == sorted(LIBS.split(","))
    for doc in docs:
        assert not schema.problems(doc), schema.problems(doc)
        assert doc["source"]["uri"] == uri and doc["source"]["cache"] == "none"
        assert doc["source"]["read"] == "download"
        assert server.secret_key not in str(doc) and server.access_key not in str(doc)
        for t in doc["trials"]:
            assert t["status"] == "ok" and t["tensors_verified"] > 0 and not t["mismatches"]
            assert 0 < t["download_s"] < t["total_s"]  # a phase of the timed load
            assert t["resident_before"] == 0.0  # every trial downloads afresh (S3_CACHE=none)
            assert t["library_info"]["fetch"]["role"] == "download"


NATIVE = ["tensorizer", "reference", "runai-streamer"]


def test_libraries_that_read_s3_themselves_do_so_verified_with_nothing_written_locally(uploaded, tmp_path):
    """S3_READ=native (the default): tensorizer's stream_io, the Run:ai streamer's S3 backend and
    the reference's ranged GETs read the bucket directly; safetensors still downloads then loads."""
    uri, server = uploaded
    pod = tmp_path / "pod"
    proc = bench(uri, server, pod, tmp_path / "res", LIBRARIES=",".join([*NATIVE, "safetensors"]))
    assert proc.returncode == 0, proc.stderr
    by = {d["library"]: d for d in result_lines(proc.stdout)}
    assert sorted(by) == sorted([*NATIVE, "safetensors"])
    for lib, doc in by.items():
        assert not schema.problems(doc), schema.problems(doc)
        assert doc["source"]["read"] == "native" and server.secret_key not in str(doc)
        (trial,) = doc["trials"]
        assert trial["status"] == "ok" and trial["tensors_verified"] > 0 and not trial["mismatches"], lib
        if lib in NATIVE:
            assert trial["download_s"] is None and "fetch" not in trial["library_info"], lib
            assert server.endpoint in doc["io_mode"] or "S3" in doc["io_mode"], doc["io_mode"]
        else:
            assert 0 < trial["download_s"] < trial["total_s"]
    # the native loads wrote no weights: only safetensors' download (removed after its trial)
    assert not list(pod.glob("tensorizer/*.tensors"))
    assert by["reference"]["trials"][0]["library_info"]["requests"] >= 3
    # the reference's shape from object storage is the client's (S3_CONCURRENCY, S3_PART_BYTES),
    # not its file defaults (usable CPUs less 4 threads, 8 MiB): 16 requests of 64 MiB in flight
    assert "16 in flight, 64 MiB ranges" in by["reference"]["io_mode"], by["reference"]["io_mode"]


def test_a_node_cache_is_filled_by_the_first_pod_and_read_by_the_next(uploaded, tmp_path):
    uri, server = uploaded
    node = tmp_path / "node-cache"
    roles, graded = [], []
    for _pod in ("first", "second"):
        proc = bench(uri, server, node, tmp_path / "res", LIBRARIES="safetensors", S3_CACHE="node",
                     CACHE_MODE="asis", CEILINGS="reuse", CEILING_SECONDS="0.2")
        assert proc.returncode == 0, proc.stderr
        (doc,) = result_lines(proc.stdout)
        assert doc["source"]["cache"] == "node"
        (trial,) = doc["trials"]
        roles.append(trial["library_info"]["fetch"]["role"])
        graded.append(trial["ceiling"])
        assert trial["tensors_verified"] > 0
    assert roles == ["filled", "hit"], roles
    # the fill read the bucket inside its load; the hit read local files (no local ceiling on a CPU)
    assert graded[0] == "s3_get" and graded[1] != "s3_get", graded


def test_the_get_ceiling_is_measured_once_per_node_and_endpoint_then_reused(uploaded, tmp_path):
    """CEILINGS=reuse for pods reading a bucket: the first measures the GET ceiling under a lock
    into RES_PATH/ceilings/, the next pod (another run) reuses it, and grades against it."""
    uri, server = uploaded
    res, got = tmp_path / "res", []
    for run in ("first", "second"):
        proc = bench(uri, server, tmp_path / run, res, LIBRARIES="reference", CEILINGS="reuse",
                     CEILING_SECONDS="0.2", RUN_ID=run, NODE_NAME="node-a")
        assert proc.returncode == 0, proc.stderr
        (doc,) = result_lines(proc.stdout)
        assert not schema.problems(doc), schema.problems(doc)
        got.append(doc)
    first, second = (d["ceilings"] for d in got)
    assert (first["source"], second["source"]) == ("measured", "reused")
    assert first["s3_get"]["gbps"] > 0 and second["s3_get"] == first["s3_get"]
    assert second["file"] == first["file"] and "-s3-" in Path(first["file"]).name
    assert server.secret_key not in Path(first["file"]).read_text()
    assert got[1]["trials"][0]["ceiling"] == "s3_get"
    ceilings_phase = [[p["seconds"] for p in d["pod"]["phases"] if p["name"] == "ceilings"] for d in got]
    assert ceilings_phase[1][0] < ceilings_phase[0][0]


@pytest.mark.parametrize("uri, code, words", [
    ("s3://no-such-bucket-lb/m", 2, ["no-such-bucket-lb"]),
    ("s3://x/m", 2, ["MODEL_URI"]),  # a bucket name needs 3 characters: a configuration error
])
def test_bad_object_storage_input_exits_2_in_one_line(uploaded, tmp_path, uri, code, words):
    _, server = uploaded
    proc = bench(uri, server, tmp_path / "pod", tmp_path / "res")
    assert proc.returncode == code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert all(w in last for w in words), last
    assert "Traceback" not in proc.stderr


def test_o_direct_reads_of_a_bucket_are_refused_in_one_line_with_an_error_document(uploaded, tmp_path):
    """REF_DIRECT=1 reads local files; the reference's own reads of a bucket have none. The pod
    refuses the settings before any work (exit 2, no retry can fix them), its last line and its
    error document say what to change, and nothing is downloaded."""
    uri, server = uploaded
    pod = tmp_path / "pod"
    proc = bench(uri, server, pod, tmp_path / "res", LIBRARIES="reference", REF_DIRECT="1")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "REF_DIRECT='1' is for local files" in last and "unset REF_DIRECT" in last, last
    assert "Traceback" not in proc.stderr
    (doc,) = result_lines(proc.stdout)
    assert not schema.problems(doc) and doc["status"] == "error"
    assert "S3_READ=download" in doc["error"]["message"]
    assert not list(pod.rglob("*.safetensors"))


def test_an_unreachable_endpoint_is_transient(uploaded, tmp_path):
    from tests.s3server import free_port
    uri, server = uploaded
    gone = S3Server(f"http://127.0.0.1:{free_port()}")
    proc = bench(uri, gone, tmp_path / "pod", tmp_path / "res", LIBRARIES="safetensors")
    assert proc.returncode == 3, proc.stderr


def test_tp_ranks_read_only_their_own_bytes_from_the_bucket(s3_server: S3Server, tmp_path):
    """TP_SIZE=2 from MODEL_URI: tensorizer's ranks each stream their per-rank object, the
    reference's ranks GET only their ranges (rows of a strided slice in one covering GET); every
    slice verified, nothing written locally. A library that cannot is refused, exit 2."""
    bucket = s3_server.create_bucket("tpckpt")
    uri = f"s3://{bucket}/models/llama-tiny"
    saved = run_script("save_models.py", {**s3_server.env(), "MODEL_ID": "random/llama-tiny",
                                          "MODEL_PATH": str(tmp_path / "save"), "MODEL_URI": uri,
                                          "LIBRARIES": "tensorizer,safetensors", "TP_SIZE": "2"})
    assert saved.returncode == 0, saved.stderr
    pod = tmp_path / "pod"
    env = {**s3_server.env(), "MODEL_ID": "random/llama-tiny", "MODEL_PATH": str(pod), "MODEL_URI": uri,
           "RES_PATH": str(tmp_path / "res"), "TP_SIZE": "2", "SKIP_INFERENCE": "1", "CEILINGS": "0",
           "CACHE_MODE": "cold"}
    proc = run_script("deserialize_benchmark.py", {**env, "LIBRARIES": "tensorizer,reference"}, timeout=180)
    assert proc.returncode == 0, proc.stderr
    by = {d["library"]: d for d in result_lines(proc.stdout)}
    assert sorted(by) == ["reference", "tensorizer"]
    for lib, doc in by.items():
        assert not schema.problems(doc), schema.problems(doc)
        assert doc["tp_size"] == 2 and doc["source"]["read"] == "native", lib
        assert s3_server.secret_key not in str(doc)
        (trial,) = doc["trials"]
        assert trial["status"] == "ok" and not trial["mismatches"], (lib, trial.get("error"))
        assert [r["rank"] for r in trial["ranks"]] == [0, 1]
        assert all(r["status"] == "ok" and r["tensors_verified"] > 0 for r in trial["ranks"])
        assert trial["resident_before"] is None or trial["resident_before"] == 0.0
        assert "from " in doc["io_mode"] and ("GET" in doc["io_mode"] or "stream_io" in doc["io_mode"])
    assert by["tensorizer"]["trials"][0]["library_info"]["file"] == "rank-0-of-2.tensors"
    ref = by["reference"]["trials"][0]["library_info"]  # rank 0's
    model_bytes = by["reference"]["model"]["bytes"]
    assert ref["strided_tensors"] > 0 and ref["bytes_read"] < 0.75 * model_bytes  # about half
    assert ref["bytes_read"] <= ref["bytes_fetched"] < model_bytes  # gaps of covered rows, never all
    assert not list(pod.glob("**/*.tensors")) and not list(pod.glob("**/*.safetensors"))
    # each pod's manifest and downloads were its own (pods may share MODEL_PATH), gone at its end
    assert not list((pod / ".loadbench-pods").glob("*")), list((pod / ".loadbench-pods").glob("*"))

    refused = run_script("deserialize_benchmark.py", {**env, "LIBRARIES": "safetensors"}, timeout=120)
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "TP_SIZE=2" in last and "tensorizer, reference" in last, last
    (doc,) = result_lines(refused.stdout)  # an error document, schema-valid, with no trial run
    assert doc["status"] == "error" and not schema.problems(doc) and doc["trials"] == []
    assert "tensorizer, reference" in doc["error"]["message"]


def test_the_references_strided_rows_come_in_covering_gets_of_at_most_a_part(s3_server: S3Server):
    """A rank's rows of a strided slice: grouped into GETs no larger than S3_PART_BYTES (never a
    GET per row, never one unbounded cover), the rows gathered back to back, gaps counted."""
    from loadbench.loaders.context import Remote
    from loadbench.loaders.reference_lib import Objects
    bucket = s3_server.create_bucket("rows")
    body = bytes(range(256)) * 64  # 16 KiB, byte i is i % 256
    s3_server.client().put_object(Bucket=bucket, Key="m/f/x.safetensors", Body=body)
    remote = Remote(uri=f"s3://{bucket}/m/f", client=s3_server.client(), endpoint_url=s3_server.endpoint,
                    concurrency=1, part_bytes=1024, objects=(("x.safetensors", len(body)),))
    objects = Objects(remote)
    spans = tuple((100 + r * 300, 40) for r in range(20))  # 20 rows of 40 bytes, 300 apart
    out = bytearray(20 * 40)
    objects.read("x.safetensors", spans, memoryview(out))
    assert bytes(out) == b"".join(body[off:off + n] for off, n in spans)
    # a GET covers at most 1024 bytes: 4 rows (900 + 40 = 940 bytes) each, so 5 GETs for 20 rows
    assert objects.requests == 5 and objects.fetched == 5 * (3 * 300 + 40)
    wide = tuple((r * 2000, 8) for r in range(3))  # rows further apart than a part: a GET each
    objects.read("x.safetensors", wide, memoryview(bytearray(24)))
    assert objects.requests == 8 and objects.fetched == 5 * 940 + 24
