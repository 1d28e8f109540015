"""The manifests are the product's front door: valid, linted, safe, one experiment, in step with the code."""

from __future__ import annotations

import copy
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadbench import loaders
from loadbench.cluster import localjob, matrix
from loadbench.config import settings
from tests.conftest import ROOT

JOB_MANIFESTS = ["save-models-job.yaml", "benchmark-job.yaml", "benchmark-matrix-job.yaml",
                 "benchmark-tp-multinode.yaml"]
MANIFESTS = ["benchmark-pvc.yaml", "benchmark-networkpolicy.yaml", "benchmark-egress-networkpolicy.yaml",
             "experiment-configmap.yaml", "s3-credentials-secret.yaml", *JOB_MANIFESTS]
EXPERIMENT = "loadbench-experiment"
BIN = Path(sys.executable).parent
# Rendezvous variables read by torch.distributed (env:// init), as torchrun sets them: not loadbench's.
TORCH_RENDEZVOUS = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"}
GRACE_S = 60  # SIGTERM -> error document -> exit 143 needs time before SIGKILL


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / name).read_text()) if d]


def jobs(name: str) -> list[dict]:
    return [d for d in docs(name) if d["kind"] == "Job"]


ALL_JOBS = [j for m in JOB_MANIFESTS for j in jobs(m)]
PER_LIBRARY = jobs("benchmark-job.yaml")
BENCHMARKS = [j for j in ALL_JOBS if j["metadata"]["name"] != "loadbench-save"]


def container(job: dict) -> dict:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    return c


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(job).get("env", [])}


def experiment() -> dict[str, str]:
    return localjob.read_env_file(str(ROOT / "experiment.env"))


def tool(name: str) -> str:
    for found in (shutil.which(name), BIN / name, ROOT / ".venv-checkov/bin" / name):
        if found and Path(found).exists():
            return str(found)
    pytest.fail(f"{name} is not installed: run `make setup` (see README)")


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.skip("kubectl is not installed (Debian: apt-get install -y kubernetes-client), so "
                    "`kubectl kustomize` cannot be checked here")
    return found


def validate_strictly(paths: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", "1.33.0", *paths],
                          cwd=cwd, capture_output=True, text=True)


# ------------------------------------------------------------------ validity and linters

def test_every_document_validates_strictly_against_kubernetes_1_33():
    proc = validate_strictly(MANIFESTS, ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == sum(len(docs(m)) for m in MANIFESTS)


def test_kustomize_renders_the_experiment_and_jobs_that_validate_strictly(tmp_path):
    proc = subprocess.run([kubectl(), "kustomize", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    (tmp_path / "rendered.yaml").write_text(proc.stdout)
    check = validate_strictly(["rendered.yaml"], tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("passed") == len(rendered)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in rendered}
    (committed,) = docs("experiment-configmap.yaml")
    assert by_kind[("ConfigMap", EXPERIMENT)] == committed, "kustomize and the committed ConfigMap differ"
    assert committed["data"] == experiment()
    assert ("Job", "loadbench-save") in by_kind
    for job in jobs("save-models-job.yaml"):  # kustomize passes the Jobs through unchanged
        assert by_kind[("Job", job["metadata"]["name"])] == job


def test_every_job_manifest_renders_through_kustomize_with_the_experiment(tmp_path):
    """Any Job manifest may join the kustomization (or an overlay of it) and still validate."""
    for name in ["experiment.env", *JOB_MANIFESTS]:
        shutil.copy(ROOT / name, tmp_path / name)
    kust = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    kust["resources"] = JOB_MANIFESTS
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    proc = subprocess.run([kubectl(), "kustomize", "."], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "rendered.yaml").write_text(proc.stdout)
    check = validate_strictly(["rendered.yaml"], tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert sum(d["kind"] == "Job" for d in rendered) == len(ALL_JOBS)


def test_yamllint():
    proc = subprocess.run([tool("yamllint"), "-s", *MANIFESTS, "kustomization.yaml", ".yamllint"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_checkov_kubernetes_checks_pass_or_are_justified():
    proc = subprocess.run([tool("checkov"), "--quiet", "--compact", "--skip-download",
                           "--framework", "kubernetes", *sum((["-f", m] for m in MANIFESTS), [])],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    annotated = [d["metadata"].get("annotations", {}) for m in MANIFESTS for d in docs(m)]
    annotated.append(yaml.safe_load((ROOT / "kustomization.yaml").read_text())
                     ["generatorOptions"]["annotations"])
    for notes in annotated:
        for key, value in notes.items():
            if key.startswith("checkov.io/skip"):
                check, _, why = value.partition("=")
                assert len(why) > 20, f"{check} is skipped without a reason"


def test_hadolint_and_dockerfile_copies_what_exists():
    proc = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+:\S+$", text, re.M), "the default base image is pinned by tag"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M), "the base is the BASE_IMAGE build argument"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
    assert "-r requirements.txt" in text and "USER 10001" in text
    workdirs = re.findall(r"^WORKDIR (\S+)$", text, re.M)
    for job in ALL_JOBS:
        c = container(job)
        script = next(a for a in c["command"] if a.startswith("/app/"))
        assert (ROOT / script[5:]).exists() and script[5:] in text, f"the image lacks {script}"
        assert c["workingDir"] == workdirs[-1], "the Jobs run where the image's WORKDIR is"
        for m in c["volumeMounts"]:  # mount points under the read-only root exist in the image
            if m["mountPath"].startswith(c["workingDir"] + "/"):
                assert m["mountPath"] in text, f"the image does not make {m['mountPath']}"


def test_one_image_for_every_job():
    assert len({container(j)["image"] for j in ALL_JOBS}) == 1


def test_the_kustomization_names_the_image_of_every_job_once(tmp_path):
    """kustomization.yaml's `images:` is the one place the image is named: every Job manifest carries
    its placeholder, and a changed entry reaches every container of every Job kustomize renders."""
    kust = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    (entry,) = kust["images"]
    for job in ALL_JOBS:  # (newName and newTag are yours to change: `kustomize edit set image`)
        name = container(job)["image"].rpartition(":")[0]
        assert name == entry["name"], f"{job['metadata']['name']}: image {name} is not the placeholder"
    for name in ["experiment.env", *JOB_MANIFESTS]:
        shutil.copy(ROOT / name, tmp_path / name)
    kust["resources"] = JOB_MANIFESTS
    kust["images"] = [{"name": entry["name"], "newName": "registry.example/team/loadbench", "newTag": "7.7"}]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    proc = subprocess.run([kubectl(), "kustomize", "."], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rendered = [d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "Job"]
    assert len(rendered) == len(ALL_JOBS)
    for job in rendered:
        pod = job["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["image"] == "registry.example/team/loadbench:7.7", job["metadata"]["name"]


# ------------------------------------------------------------------ one experiment

def test_experiment_configmap_is_what_experiment_env_generates():
    committed = (ROOT / "experiment-configmap.yaml").read_text()
    assert committed == localjob.render_configmap(str(ROOT)), (
        "experiment-configmap.yaml is stale: python -m loadbench.localjob --render-configmap "
        "> experiment-configmap.yaml")
    kust = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    (gen,) = kust["configMapGenerator"]
    assert gen["name"] == EXPERIMENT and gen["env"] == "experiment.env"
    assert kust["generatorOptions"]["disableNameSuffixHash"] is True  # plain -f Jobs find it by name


def test_the_experiment_is_valid_and_derives_its_paths():
    env = experiment()
    cfg = settings.load(env)  # a typo in experiment.env is a ConfigError here, not in a pod
    assert "MODEL_PATH" not in env and "RUN_ID" not in env, "derived from MODEL_ID and CACHE_MODE"
    slug = settings.model_slug(env["MODEL_ID"])
    assert cfg.model_path == f"loadbench-data/models/{slug}"
    assert cfg.run_id == f"{slug}-{env['CACHE_MODE']}"


@pytest.mark.parametrize("job", ALL_JOBS, ids=lambda j: j["metadata"]["name"])
def test_jobs_read_the_experiment_and_pin_no_derived_path(job):
    c = container(job)
    # the experiment, and object-storage credentials from a Secret when one exists (never a ConfigMap)
    assert c["envFrom"] == [{"configMapRef": {"name": EXPERIMENT}},
                            {"secretRef": {"name": "loadbench-s3", "optional": True}}]
    env = env_of(job)
    for name in ("MODEL_ID", "MODEL_PATH", "RUN_ID", "RES_PATH", "NUM_TRIALS", "CACHE_MODE", "DEVICE"):
        assert name not in env, f"{name} belongs to experiment.env (or is derived), not to one Job"


def test_every_env_var_a_manifest_sets_is_declared():
    names = {"experiment.env": set(experiment())}
    for job in ALL_JOBS:
        names[job["metadata"]["name"]] = set(env_of(job))
    for where, found in names.items():
        for name in found - TORCH_RENDEZVOUS:
            assert name in settings.BY_NAME, f"{where}: {name} is not in settings.py"
    assert TORCH_RENDEZVOUS <= set(env_of(jobs("benchmark-tp-multinode.yaml")[0]))


def test_one_job_per_library_and_the_save_job_writes_every_format_they_read():
    libs = [env_of(j)["LIBRARIES"]["value"] for j in PER_LIBRARY]
    assert sorted(libs) == sorted(loaders.NAMES)
    assert [j["metadata"]["name"] for j in PER_LIBRARY] == [f"loadbench-{lib}" for lib in libs]
    saved = loaders.formats_for(list(settings.load(experiment()).libraries))
    assert set(loaders.formats_for(libs)) <= set(saved)


def test_per_library_jobs_differ_only_in_their_library():
    def normal(job: dict) -> dict:
        job = copy.deepcopy(job)
        job["metadata"]["name"] = job["metadata"]["labels"]["app.kubernetes.io/component"] = "X"
        job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] = "X"
        env_of(job)["LIBRARIES"]["value"] = "X"
        return job

    first = normal(PER_LIBRARY[0])
    for job in PER_LIBRARY[1:]:
        assert normal(job) == first, f"{job['metadata']['name']} drifted from the first Job"


# ------------------------------------------------------------------ what an admin checks

@pytest.mark.parametrize("job", ALL_JOBS, ids=lambda j: j["metadata"]["name"])
def test_jobs_follow_the_rules(job):
    spec = job["spec"]
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    assert localjob.failure_action(rules, "benchmark", 2) == "FailJob"
    for retryable in (1, 3, 4, 143):
        assert localjob.failure_action(rules, "benchmark", retryable) == "Count"
    assert any(r["action"] == "Ignore" and r["onPodConditions"][0]["type"] == "DisruptionTarget"
               for r in rules)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= GRACE_S
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "nodeSelector" not in pod  # placement stays a commented knob
    assert set(pod.get("affinity", {})) <= {"podAntiAffinity"}
    assert pod["containers"][0]["name"] == "benchmark"  # the name podFailurePolicy matches
    c = container(job)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    res = c["resources"]
    for key in ("cpu", "memory", "nvidia.com/gpu"):
        assert key in res["requests"] and key in res["limits"]
    assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"] == 1
    env = env_of(job)
    assert "JOB_COMPLETION_INDEX" not in env  # set by Kubernetes, read in Python
    for name, path in [("JOB_NAME", "metadata.labels['job-name']"), ("POD_NAME", "metadata.name"),
                       ("POD_UID", "metadata.uid"), ("NODE_NAME", "spec.nodeName"),
                       ("POD_NAMESPACE", "metadata.namespace")]:
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == path
    assert "$(" not in str(c.get("env")) + str(c["command"])
    assert job["metadata"]["labels"]["app.kubernetes.io/name"] == "loadbench"
    assert spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "loadbench"


@pytest.mark.parametrize("job", ALL_JOBS, ids=lambda j: j["metadata"]["name"])
def test_derived_paths_land_on_the_pvc_and_only_results_are_writable(job):
    pod, c = job["spec"]["template"]["spec"], container(job)
    cfg = settings.load(experiment())
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = c["volumeMounts"]

    def mount_of(relative: str) -> dict:
        path = posixpath.normpath(posixpath.join(c["workingDir"], relative))
        found = [m for m in mounts if path.startswith(m["mountPath"] + "/")]
        assert found, f"{path} is on no volume: it would vanish with the pod"
        return max(found, key=lambda m: len(m["mountPath"]))

    models = mount_of(cfg.model_path)
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == "loadbench-nvme"
    assert models["subPath"] == "models"
    writable = [m for m in mounts if not m.get("readOnly") and "persistentVolumeClaim" in volumes[m["name"]]]
    if job["metadata"]["name"] == "loadbench-save":
        assert writable == [models]
    else:
        results = mount_of(f"{cfg.res_path}/{cfg.run_id}")
        assert results["subPath"] == "results"
        assert models["readOnly"] is True
        assert volumes[models["name"]]["persistentVolumeClaim"]["readOnly"] is True
        assert writable == [results], "only the results folder may be writable on the PVC"
    shm = next(m for m in mounts if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("job", [j for j in BENCHMARKS if j["metadata"]["name"] != "loadbench-tp"],
                         ids=lambda j: j["metadata"]["name"])
def test_benchmark_jobs_are_indexed_and_retry_per_index(job):
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] >= 1


def test_seed_layout_jobs_run_one_pod_at_a_time():
    for job in PER_LIBRARY:
        assert job["spec"]["completions"] == 100 and job["spec"]["parallelism"] == 1


def test_matrix_job_interleaves_every_variant_evenly():
    (job,) = jobs("benchmark-matrix-job.yaml")
    assert container(job)["command"] == ["python", "-m", "loadbench.cluster.matrix", "--exec",
                                         "/app/deserialize_benchmark.py"]
    assert job["spec"]["parallelism"] == 1
    found = matrix.variants(experiment())
    assert {v.library for v in found} == set(settings.load(experiment()).libraries)
    assert job["spec"]["completions"] % len(found) == 0, "every variant gets as many pods"


def test_tp_multinode_follows_the_distributed_pytorch_pattern():
    (svc,) = [d for d in docs("benchmark-tp-multinode.yaml") if d["kind"] == "Service"]
    (job,) = jobs("benchmark-tp-multinode.yaml")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    name = job["metadata"]["name"]
    assert spec["completionMode"] == "Indexed"
    env = env_of(job)
    world = int(env["WORLD_SIZE"]["value"])
    assert spec["completions"] == spec["parallelism"] == world >= 2, "every rank runs at once"
    assert pod["subdomain"] == svc["metadata"]["name"], "pod host names resolve through the Service"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": name}
    assert env["MASTER_ADDR"]["value"] == f"{name}-0.{pod['subdomain']}"  # rank 0's pod
    assert int(env["MASTER_PORT"]["value"]) > 1024
    assert (env["RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    # a failed rank cannot rejoin a group that passed its rendezvous: the Job fails as one
    assert spec["backoffLimitPerIndex"] == 0 and spec["maxFailedIndexes"] == 0


def test_network_policy_denies_ingress_except_between_tp_ranks():
    policies = {d["metadata"]["name"]: d for d in docs("benchmark-networkpolicy.yaml")}
    deny = policies["loadbench-deny-ingress"]["spec"]
    assert deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")
    for job in ALL_JOBS:  # every pod is under the deny policy
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert deny["podSelector"]["matchLabels"].items() <= labels.items()
    peers = policies["loadbench-tp-peers"]["spec"]
    (tp,) = jobs("benchmark-tp-multinode.yaml")
    ranks = {"batch.kubernetes.io/job-name": tp["metadata"]["name"]}  # set on its pods by the Job controller
    assert peers["podSelector"]["matchLabels"] == ranks
    assert peers["ingress"] == [{"from": [{"podSelector": {"matchLabels": ranks}}]}]


def test_the_optional_egress_policy_allows_dns_the_object_store_and_tp_peers_only():
    (egress,) = docs("benchmark-egress-networkpolicy.yaml")
    spec = egress["spec"]
    assert spec["policyTypes"] == ["Egress"] and "ingress" not in spec
    for job in ALL_JOBS:  # it covers every loadbench pod
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    dns, store, peers = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and "to" not in dns
    assert store["to"][0]["ipBlock"]["cidr"].endswith("/32")
    assert {p["port"] for p in store["ports"]} == {443, 8333}
    assert peers["to"] == [{"podSelector": {"matchLabels": spec["podSelector"]["matchLabels"]}}]
    # not applied by `kubectl apply -k .`: it would cut a hub MODEL_ID off
    assert "benchmark-egress-networkpolicy.yaml" not in (ROOT / "kustomization.yaml").read_text()


def test_gitignore_covers_what_readme_commands_make():
    proc = subprocess.run(["git", "check-ignore", "pvc/x", "report/x", "results/x", "loadbench-data/x",
                           ".whl/x"], cwd=ROOT, capture_output=True, text=True)
    assert len(proc.stdout.split()) == 5, proc.stdout
    kept = subprocess.run(["git", "check-ignore", "docs/results/x.json", "experiment.env"], cwd=ROOT,
                          capture_output=True, text=True)
    assert kept.stdout == ""


def test_readme_states_the_minimum_kubernetes_version():
    assert "Kubernetes 1.33" in (ROOT / "README.md").read_text()


def test_python_dash_m_commands_import_in_the_image():
    """Jobs run `python -m loadbench...` from their workingDir (/data), not /app: the image must put
    /app on PYTHONPATH, or the matrix launcher and the collection helper fail to import."""
    runs_m = [name for name in ("benchmark-matrix-job.yaml", "loadbench/cluster/collect.py")
              if '"-m", "loadbench.' in (ROOT / name).read_text()]
    assert runs_m, "no `python -m loadbench...` command left: drop this test"
    assert re.search(r"PYTHONPATH=/app\b", (ROOT / "Dockerfile").read_text()), (
        f"{runs_m} run `python -m loadbench...`: the Dockerfile must set ENV PYTHONPATH=/app")
