"""Node ceilings measured once per node and reused: two pods racing for the lock, another run,
an expired file, CEILINGS=fresh. In the slower tier: the storage tries take ~25 s here."""

from __future__ import annotations

import json
import subprocess
import sys

from loadbench import schema
from tests.conftest import ROOT, clean_env, result_lines, run_script
from tests.e2e.test_hardening import bench_env


def test_ceilings_are_measured_once_per_node_and_reused(saved_model, tmp_path):
    env = bench_env(saved_model, tmp_path / "res", LIBRARIES="safetensors", CEILINGS="reuse",
                    CEILING_SECONDS="0.2", NODE_NAME="node-a", RUN_ID="ceil")
    procs = [subprocess.Popen([sys.executable, str(ROOT / "deserialize_benchmark.py")],
                              env=clean_env(env), cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    docs = schema.read_many(str(tmp_path / "res"))[0]
    sources = sorted(d["ceilings"]["source"] for d in docs)
    assert sources == ["measured", "reused"], sources  # the lock: never both measuring
    (node_file,) = (tmp_path / "res" / "ceilings").glob("node-a-cpu-*.json")  # node, device, filesystem
    stored = json.loads(node_file.read_text())
    assert stored["ceilings"]["storage_read"]["gbps"] > 0
    assert stored["ceilings"]["storage_read"]["spread"]["tries"] >= 2
    aggregate = stored["ceilings"]["storage_read_aggregate"]
    assert {"readers-1", "readers-2", "readers-4"} <= set(aggregate["tries"]), aggregate["tries"]
    assert aggregate["tries"]["readers-4"]["gbps"] > 0 and aggregate["gbps"] > 0
    assert node_file.name.endswith(f"-{stored['filesystem']['dev']}.json") and stored["filesystem"]["mount"]
    reused = next(d for d in docs if d["ceilings"]["source"] == "reused")
    assert reused["ceilings"]["storage_read"]["gbps"] == stored["ceilings"]["storage_read"]["gbps"]

    # Another run on the node reuses them; an expired file or CEILINGS=fresh measures again.
    for extra, source in (({"RUN_ID": "another-run"}, "reused"), ({"CEILINGS_TTL": "0"}, "measured"),
                          ({"CEILINGS": "fresh", "RUN_ID": "third"}, "measured")):
        proc = run_script("deserialize_benchmark.py", {**env, **extra})
        assert proc.returncode == 0, proc.stderr
        (doc,) = result_lines(proc.stdout)
        assert doc["ceilings"]["source"] == source, extra
