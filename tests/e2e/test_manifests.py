"""The manifests are the product's front door: valid, linted, safe, and in step with the code."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadbench import settings
from tests.conftest import ROOT

MANIFESTS = ["benchmark-pvc.yaml", "save-models-job.yaml", "benchmark-job.yaml",
             "benchmark-networkpolicy.yaml"]
BIN = Path(sys.executable).parent


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / name).read_text()) if d]


def jobs(name: str) -> list[dict]:
    return [d for d in docs(name) if d["kind"] == "Job"]


def tool(name: str) -> str:
    found = shutil.which(name) or (str(BIN / name) if (BIN / name).exists() else None)
    assert found, f"{name} is not installed: run `make setup` (see README)"
    return found


def test_every_document_validates_strictly_against_kubernetes_1_33():
    proc = subprocess.run([tool("kubernetes-validate"), "--strict", "-k", "1.33.0", *MANIFESTS],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == sum(len(docs(m)) for m in MANIFESTS)


def test_yamllint():
    proc = subprocess.run([tool("yamllint"), "-s", *MANIFESTS, ".yamllint"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_checkov_kubernetes_checks_pass_or_are_justified():
    proc = subprocess.run([tool("checkov"), "--quiet", "--compact", "--framework", "kubernetes",
                           *sum((["-f", m] for m in MANIFESTS), [])],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for job in jobs("benchmark-job.yaml") + jobs("save-models-job.yaml"):
        for key, value in job["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, why = value.partition("=")
                assert len(why) > 20, f"{check} is skipped without a reason"


def test_hadolint_and_dockerfile_copies_what_exists():
    proc = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+:\S+", text, re.M), "the base image is pinned by tag"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "-r requirements.txt" in text and "USER 10001" in text
    for job in jobs("benchmark-job.yaml") + jobs("save-models-job.yaml"):
        script = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        assert script.startswith("/app/") and (ROOT / script[5:]).exists()
        assert script[5:] in text, f"the image does not contain {script}"


def test_every_env_var_a_manifest_sets_is_declared():
    for name in ("save-models-job.yaml", "benchmark-job.yaml"):
        for job in jobs(name):
            for env in job["spec"]["template"]["spec"]["containers"][0]["env"]:
                assert env["name"] in settings.BY_NAME, f"{name}: {env['name']} is not in settings.py"


@pytest.mark.parametrize("job", jobs("benchmark-job.yaml"), ids=lambda j: j["metadata"]["name"])
def test_benchmark_jobs_follow_the_rules(job):
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 100
    assert spec["parallelism"] == 1
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] >= 1
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["operator"] == "In"
               and r["onExitCodes"]["values"] == [2] for r in rules)
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget"
               for r in rules)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nodeSelector" not in pod and "affinity" not in pod  # placement stays a commented knob
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e for e in c["env"]}
    assert "JOB_COMPLETION_INDEX" not in env  # set by Kubernetes, read in Python
    for name, path in [("POD_NAME", "metadata.name"), ("POD_UID", "metadata.uid"),
                       ("NODE_NAME", "spec.nodeName"), ("POD_NAMESPACE", "metadata.namespace")]:
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == path
    assert not any("$(" in str(e.get("value", "")) for e in c["env"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    models = next(m for m in mounts.values() if env["MODEL_PATH"]["value"].startswith(m["mountPath"]))
    results = next(m for m in mounts.values() if env["RES_PATH"]["value"].startswith(m["mountPath"]))
    assert models["readOnly"] is True
    assert volumes[models["name"]]["persistentVolumeClaim"]["readOnly"] is True
    assert not results.get("readOnly")
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")
                and "persistentVolumeClaim" in volumes[m["name"]]]
    assert writable == [results], "only the results path may be writable on the PVC"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_one_job_per_core_library():
    libs = {e["value"] for j in jobs("benchmark-job.yaml")
            for e in j["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "LIBRARIES"}
    assert {"tensorizer", "safetensors", "huggingface"} <= libs


def test_readme_states_the_minimum_kubernetes_version():
    assert "Kubernetes 1.33" in (ROOT / "README.md").read_text()
