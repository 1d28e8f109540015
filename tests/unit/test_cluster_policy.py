"""localjob's decisions without running a pod: the Job's failure rules, the GPU pool, derived paths."""

from __future__ import annotations

import os
import threading

import pytest

from loadbench.cluster.manifests import ManifestError, load_jobs
from loadbench.cluster.podspec import derived_paths
from loadbench.cluster.policy import JobPolicy, failure_action
from loadbench.cluster.runner import GPUPool
from loadbench.config import settings as config
from loadbench.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TRANSIENT
from tests.conftest import ROOT


def benchmark_job() -> dict:
    return next(j for j in load_jobs(str(ROOT / "benchmark-job.yaml"))
                if j["metadata"]["name"] == "loadbench-safetensors")


def test_the_benchmark_jobs_policy_fails_the_job_on_bad_input_and_retries_the_rest():
    policy = JobPolicy.of(benchmark_job())
    assert (policy.name, policy.container, policy.indexed) == ("loadbench-safetensors", "benchmark", True)
    assert policy.action(EXIT_BAD_INPUT) == "FailJob"
    assert policy.action(EXIT_FAILED) == policy.action(EXIT_TRANSIENT) == "Count"
    assert policy.backoff_per_index == 2
    assert [policy.index_exhausted(a) for a in range(4)] == [False, False, True, True]


def test_completions_cap_the_job_and_parallelism_replaces_its_own():
    job = benchmark_job()
    assert JobPolicy.of(job).completions == job["spec"]["completions"]
    assert JobPolicy.of(job, completions=3).completions == 3
    assert JobPolicy.of(job, completions=10_000).completions == job["spec"]["completions"]
    assert JobPolicy.of(job).parallelism == job["spec"]["parallelism"]
    assert JobPolicy.of(job, parallelism=4).parallelism == 4
    assert JobPolicy.of(job, parallelism=0).parallelism == job["spec"]["parallelism"]


def test_a_plain_job_counts_failures_job_wide():
    job = {"metadata": {"name": "j"},
           "spec": {"backoffLimit": 1, "maxFailedIndexes": 1,
                    "template": {"spec": {"containers": [{"name": "c"}]}}}}
    policy = JobPolicy.of(job)
    assert policy.backoff_per_index is None and not policy.index_exhausted(100)
    assert [policy.too_many_failures(n) for n in (1, 2)] == [False, True]
    assert [policy.too_many_failed_indexes(n) for n in (1, 2)] == [False, True]
    assert policy.grace_s == 30.0 and policy.completions == 1 and policy.action(EXIT_BAD_INPUT) == "Count"


def test_not_in_rules_never_match_success_and_name_their_container():
    rules = [{"action": "FailIndex",
              "onExitCodes": {"containerName": "other", "operator": "In", "values": [5]}},
             {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}}]
    assert failure_action(rules, "c", 5) == "FailJob"       # the first rule is another container's
    assert failure_action(rules, "other", 5) == "FailIndex"
    assert failure_action(rules, "c", 1) == "Count"
    assert failure_action(rules, "c", EXIT_OK) == "Count"


def test_the_gpu_pool_keeps_a_pod_pending_until_a_gpu_is_given_back():
    pool, stop = GPUPool(["0", "1"]), threading.Event()
    assert pool.take(2, stop) == ["0", "1"]
    got: list[list[str] | None] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(1, stop)), daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and got == [], "no GPU free: the pod is Pending"
    pool.give(["1"])
    waiter.join(10)
    assert got == [["1"]]
    pool.give(["0"])
    assert pool.free == ["0"]


def test_a_pending_pod_stops_when_the_job_ends_and_cannot_ask_for_more_than_the_node_has():
    pool, stop = GPUPool(["0"]), threading.Event()
    pool.take(1, stop)
    got: list[list[str] | None] = []
    waiter = threading.Thread(target=lambda: got.append(pool.take(1, stop)), daemon=True)
    waiter.start()
    stop.set()
    waiter.join(10)
    assert got == [None]
    with pytest.raises(ManifestError, match="asks for 2 nvidia.com/gpu"):
        pool.take(2, threading.Event())


@pytest.mark.parametrize("env", [{"MODEL_ID": "random/opt-tiny"},
                                 {"MODEL_ID": "random/opt-tiny", "CACHE_MODE": "warm", "RES_PATH": "/r"},
                                 {"MODEL_PATH": "/m", "RUN_ID": "x"}])
def test_localjob_looks_where_the_settings_put_the_model_and_the_results(env):
    settings = config.load(env)
    assert derived_paths(env) == (settings.model_path, os.path.join(settings.res_path, settings.run_id))


def test_a_value_the_settings_refuse_is_taken_as_written():
    assert derived_paths({"MODEL_PATH": "/m", "RUN_ID": "x", "CACHE_MODE": "nonsense"})[0] == "/m"
    assert derived_paths({"MODEL_ID": "a/b", "CACHE_MODE": "nonsense"})[1].endswith("b-nonsense")
