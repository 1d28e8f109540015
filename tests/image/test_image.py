"""The image, built and run for real: the real Dockerfile, built by `make image` with buildah on a local
Debian base with CPU torch, then run as the Jobs run it (user 10001, the manifests' command, environment
and mounts, a read-only root filesystem) to save random/opt-tiny and benchmark it on the CPU.

Needs root, buildah, podman and debootstrap (`make test-image`; .ci/run installs them) and the network
(Debian's mirror, PyPI). Slow the first time (the Debian base, torch, the requirements: ~12 minutes),
minutes later: the base and every unchanged layer are kept in LOADBENCH_IMAGE_CACHE
(/var/tmp/loadbench-image). See tests/image/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from loadbench import loaders
from loadbench.cluster import localjob
from tests.conftest import ROOT
from tests.image.conftest import TIMINGS

pytestmark = pytest.mark.timeout(3600)

CACHE = Path(os.environ.get("LOADBENCH_IMAGE_CACHE", "/var/tmp/loadbench-image"))
STORAGE = ["--root", str(CACHE / "storage"), "--runroot", str(CACHE / "run"), "--storage-driver", "vfs"]
DEBIAN = "localhost/loadbench-test-debian"   # debootstrap's bookworm minbase (python3 3.11)
BASE = "localhost/loadbench-test-base"       # + CPU torch, `python` and `pip` on PATH: the BASE_IMAGE
IMAGE = "localhost/loadbench:test"           # the Dockerfile built on it
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
TORCH = os.environ.get("TORCH_SPEC", "torch==2.13.0")
UID = 10001
REQUIRED = ("buildah", "podman", "debootstrap")


def job(manifest: str, name: str) -> dict:
    return next(d for d in yaml.safe_load_all((ROOT / manifest).read_text())
                if d and d["kind"] == "Job" and d["metadata"]["name"] == name)


SAVE_JOB = job("save-models-job.yaml", "loadbench-save")
BENCH_JOB = job("benchmark-job.yaml", "loadbench-safetensors")


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output when it fails."""
    kw.setdefault("capture_output", True)
    proc = subprocess.run(cmd, text=True, **kw)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:6])} ... exited {proc.returncode}:\n{(proc.stdout or '')[-3000:]}"
                    f"\n{(proc.stderr or '')[-3000:]}")
    return proc


def buildah(*args: str, **kw) -> subprocess.CompletedProcess:
    return sh(["buildah", *STORAGE, *args], **kw)


def has_image(name: str) -> bool:
    return subprocess.run(["buildah", *STORAGE, "inspect", "--type", "image", name],
                          capture_output=True).returncode == 0


class Timings:
    """How long each phase took; printed at the end of the session whatever pytest captures."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []
        self.started = time.monotonic()

    def run(self, phase: str, fn, *args):
        t = time.monotonic()
        try:
            return fn(*args)
        finally:
            self.phases.append((phase, time.monotonic() - t))

    def report(self) -> str:
        lines = [f"  {phase:<44} {s:7.1f} s" for phase, s in self.phases]
        lines.append(f"  {'whole tier (fixtures and tests)':<44} {time.monotonic() - self.started:7.1f} s")
        return "image tier timings:\n" + "\n".join(lines)


@pytest.fixture(scope="session")
def timings(request: pytest.FixtureRequest) -> Iterator[Timings]:
    t = Timings()
    yield t
    text = t.report()
    request.config.stash[TIMINGS] = text
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "timings.txt").write_text(text + "\n")


@pytest.fixture(scope="session")
def tools() -> None:
    missing = [t for t in REQUIRED if not shutil.which(t)]
    why = None
    if os.geteuid() != 0:
        why = "needs root (debootstrap, chroot isolation, bind mounts)"
    elif missing:
        why = f"{', '.join(missing)} not installed (Debian: apt-get install -y buildah podman debootstrap)"
    if why:
        if os.environ.get("LOADBENCH_TEST_IMAGE") == "1":  # `make test-image`: the tier must run
            pytest.fail(why)
        pytest.skip(why)
    if os.environ.get("LOADBENCH_IMAGE_FRESH") == "1":  # measure a cold run: nothing cached
        shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)


def _debian() -> None:
    """debootstrap's minimal bookworm with Python, imported as an image (once per cache)."""
    if has_image(DEBIAN):
        return
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    sh(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
        "bookworm", str(rootfs), MIRROR])
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    sh(["podman", *STORAGE, "import", "-", DEBIAN], stdin=tar.stdout)
    assert tar.wait() == 0
    shutil.rmtree(rootfs)


def _base(tmp: Path) -> None:
    """+ CPU torch from this machine's pip (inside the build the host's files are out of reach, so
    the wheel goes into the build context) and the host's CA bundle (for pip behind a TLS proxy)."""
    ctx = tmp / "base-context"
    ctx.mkdir()
    wheel = os.environ.get("TORCH_WHEEL")
    if wheel:
        shutil.copy(wheel, ctx)
    else:
        sh([sys.executable, "-m", "pip", "download", "-q", TORCH, "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
            "-d", str(ctx)])
    assert list(ctx.glob("torch-*.whl")), f"pip download {TORCH} gave no wheel"
    ca = (os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().cafile
          or "/etc/ssl/certs/ca-certificates.crt")
    shutil.copy(ca, ctx / "host-ca-certificates.crt")
    buildah("bud", "--isolation", "chroot", "--layers", "--build-arg", f"DEBIAN={DEBIAN}",
            "-f", str(ROOT / "tests/image/Containerfile.base"), "-t", BASE, str(ctx))


def _image() -> str:
    """The real Dockerfile, built by `make image` with buildah (docker's daemon is not needed)."""
    flags = " ".join([*STORAGE, "--isolation", "chroot", "--layers"])
    proc = sh(["make", "-s", "image", "ENGINE=buildah", f"IMAGE={IMAGE}", f"BASE_IMAGE={BASE}",
               f"BUILD_FLAGS={flags}"], cwd=ROOT)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def image(tools, timings: Timings, tmp_path_factory: pytest.TempPathFactory) -> str:
    timings.run("debian base (debootstrap, import; cached)", _debian)
    timings.run("python base (CPU torch; cached layers)", _base, tmp_path_factory.mktemp("base"))
    log = timings.run("make image (the Dockerfile; cached layers)", _image)
    assert has_image(IMAGE), log
    # the layers of earlier builds (vfs copies whole trees: GBs each); this build's stay as its cache
    timings.run("prune earlier builds", buildah, "rmi", "--prune")
    return IMAGE


class Container:
    """One `buildah from` container whose root filesystem is read-only, as the Jobs'
    readOnlyRootFilesystem makes it: writable only where a volume is mounted."""

    def __init__(self, image: str, work: Path) -> None:
        self.name = f"loadbench-test-{uuid.uuid4().hex[:8]}"
        buildah("from", "--name", self.name, image)
        self.root = buildah("mount", self.name).stdout.strip()
        # buildah creates (and removes) /run/.containerenv: a root-owned writable /run of its own;
        # everything else read-only.
        self.run_dir = work / "run"
        self.run_dir.mkdir(mode=0o755)
        sh(["mount", "--bind", self.root, self.root])
        sh(["mount", "-o", "remount,bind,ro", self.root])
        sh(["mount", "--bind", str(self.run_dir), f"{self.root}/run"])

    def run(self, cmd: list[str], env: dict[str, str], volumes: list[str]) -> subprocess.CompletedProcess:
        args = ["buildah", *STORAGE, "run", "--isolation", "chroot", "--user", f"{UID}:{UID}"]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        for v in volumes:
            args += ["-v", v]
        return subprocess.run([*args, self.name, "--", *cmd], capture_output=True, text=True, timeout=900)

    def close(self) -> None:
        for path in (f"{self.root}/run", self.root):
            subprocess.run(["umount", path], capture_output=True)
        subprocess.run(["buildah", *STORAGE, "rm", self.name], capture_output=True)


@pytest.fixture(scope="session")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    c = Container(image, tmp_path_factory.mktemp("container"))
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def pvc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PVC: its models/ and results/ folders, owned as fsGroup 10001 makes them."""
    path = tmp_path_factory.mktemp("pvc")
    for sub in ("models", "results"):
        (path / sub).mkdir()
        os.chown(path / sub, UID, UID)
    return path


def pod(job: dict, pvc: Path, work: Path, **overrides: str) -> tuple[list[str], dict[str, str], list[str]]:
    """The command, environment and volumes of the Job's pod: experiment.env (envFrom), the Job's own
    env (Downward API values made up), then the test's overrides; PVC subPaths on `pvc`, a fresh
    folder for each emptyDir, read-only where the manifest says."""
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert spec["securityContext"]["runAsUser"] == UID and c["securityContext"]["readOnlyRootFilesystem"]
    env = localjob.read_env_file(str(ROOT / "experiment.env"))
    name = job["metadata"]["name"]
    made_up = {"metadata.labels['job-name']": name, "metadata.name": f"{name}-0-image",
               "metadata.uid": str(uuid.uuid4()), "spec.nodeName": "image-test", "metadata.namespace": "test"}
    for e in c.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else made_up[e["valueFrom"]["fieldRef"]["fieldPath"]]
    if job["spec"].get("completionMode") == "Indexed":
        env["JOB_COMPLETION_INDEX"] = "0"
    env.update(overrides)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = []
    for m in c["volumeMounts"]:
        vol = volumes[m["name"]]
        if "persistentVolumeClaim" in vol:
            host = pvc / m["subPath"]
        else:
            host = work / m["name"]
            host.mkdir()
            os.chown(host, UID, UID)
        read_only = m.get("readOnly") or vol.get("persistentVolumeClaim", {}).get("readOnly")
        mounts.append(f"{host}:{m['mountPath']}" + (":ro" if read_only else ""))
    return c["command"] + c.get("args", []), env, mounts


# Where no GPU is: the experiment's libraries that load onto a CPU, one tiny model, no ceilings.
CPU = {"MODEL_ID": "random/opt-tiny", "DEVICE": "cpu", "CEILINGS": "0", "NUM_TRIALS": "1",
       "LIBRARIES": ",".join(n for n in localjob.read_env_file(str(ROOT / "experiment.env"))["LIBRARIES"]
                             .split(",") if not loaders.BY_NAME[n].needs_cuda)}


@pytest.fixture(scope="session")
def saved(container: Container, pvc: Path, timings: Timings, tmp_path_factory) -> subprocess.CompletedProcess:
    cmd, env, vols = pod(SAVE_JOB, pvc, tmp_path_factory.mktemp("save"), **CPU)
    return timings.run("save job: opt-tiny, every CPU format", container.run, cmd, env, vols)


@pytest.fixture(scope="session")
def benched(saved, container: Container, pvc: Path, timings: Timings, tmp_path_factory
            ) -> subprocess.CompletedProcess:
    cmd, env, vols = pod(BENCH_JOB, pvc, tmp_path_factory.mktemp("bench"), **CPU)
    return timings.run("benchmark job: every CPU library, cold", container.run, cmd, env, vols)


def test_the_image_runs_its_scripts_as_user_10001(container: Container, pvc, tmp_path):
    cmd, env, vols = pod(SAVE_JOB, pvc, tmp_path)
    help_ = container.run(["python", "/app/save_models.py", "--help"], env, vols)
    assert help_.returncode == 0, help_.stderr
    assert "usage: save_models.py" in help_.stdout and "MODEL_ID" in help_.stdout
    who = container.run(["sh", "-c", "id -u; id -g; pwd; command -v fio; python -c 'import torch, loadbench;"
                         "print(torch.__version__)'"], env, vols)
    assert who.returncode == 0, who.stderr
    uid, gid, cwd, fio, torch = who.stdout.split()
    assert (uid, gid, cwd) == ("10001", "10001", SAVE_JOB["spec"]["template"]["spec"]["containers"][0]
                               ["workingDir"])
    assert fio.endswith("/fio"), "the image has fio"
    assert torch.startswith("2."), torch


BYTECODE_CHECK = """
import importlib.util, os, sys, torch
from loadbench import models
models.skeleton(models.config_for('random/opt-tiny'), torch.float32)  # a pod's modeling imports
import loadbench.measure.run, tensorizer, safetensors.torch
sources = {n: m.__file__ for n, m in list(sys.modules.items())  # torch.ops and torch.classes name
           if (getattr(m, '__file__', None) or '').endswith('.py') and os.path.isabs(m.__file__)}  # no file
missing = sorted(n for n, f in sources.items() if not os.path.exists(importlib.util.cache_from_source(f)))
print(len(sys.modules), len(missing), *missing[:20])
"""


def test_every_module_a_pod_imports_has_its_bytecode_in_the_image(container: Container, pvc, tmp_path):
    """Pods run with PYTHONDONTWRITEBYTECODE=1 on a read-only root: a module without .pyc would be
    compiled again by every pod (6-12 s a pod on a machine whose sympy and torch had none)."""
    cmd, env, vols = pod(BENCH_JOB, pvc, tmp_path)
    got = container.run(["python", "-c", BYTECODE_CHECK], env, vols)
    assert got.returncode == 0, got.stderr[-3000:]
    loaded, missing, *names = got.stdout.split()
    assert int(loaded) > 500, got.stdout  # torch, transformers and the loaders were imported
    assert int(missing) == 0, f"{missing} module(s) without bytecode, first: {names}"


def test_the_save_job_writes_a_complete_checkpoint_on_the_pvc(saved, pvc):
    assert saved.returncode == 0, saved.stdout[-2000:] + saved.stderr[-4000:]
    (manifest,) = (pvc / "models").glob("*/manifest.json")
    assert manifest.parent.name == "opt-tiny"  # the derived MODEL_PATH landed on the PVC's models/
    assert json.loads(manifest.read_text())["model"]["id"] == "random/opt-tiny"


def test_the_benchmark_job_verifies_every_library_and_writes_results_on_the_pvc(benched, pvc):
    assert benched.returncode == 0, benched.stdout[-2000:] + benched.stderr[-4000:]
    docs = [json.loads(p.read_text()) for p in (pvc / "results").rglob("*.json")]
    docs = [d for d in docs if "library" in d]
    assert {d["library"] for d in docs} == set(CPU["LIBRARIES"].split(","))
    for d in docs:
        assert d["status"] == "ok" and d["trials"] and all(t["status"] == "ok" for t in d["trials"])
        assert d["identity"]["job"] == BENCH_JOB["metadata"]["name"]
    lines = [line for line in benched.stdout.splitlines() if line.startswith("LOADBENCH_RESULT ")]
    assert len(lines) == len(docs), "one log line per document (the logs keep the data)"


def test_writes_outside_the_results_and_tmp_mounts_fail(benched, container: Container, pvc, tmp_path):
    cmd, env, vols = pod(BENCH_JOB, pvc, tmp_path)
    writable = [v.split(":")[1] for v in vols if not v.endswith(":ro")]
    assert "/data/results" in writable and "/tmp" in writable
    probes = ["/data", "/data/loadbench-data/models", "/data/loadbench-data/models/opt-tiny", "/app",
              "/app/loadbench", "/", "/etc", "/var/tmp", "/usr/local", "/opt", *writable]
    script = ('for d in "$@"; do if touch "$d/.probe" 2>/dev/null; then rm -f "$d/.probe"; echo "W $d"; '
              'else echo "R $d"; fi; done')
    proc = container.run(["sh", "-c", script, "sh", *probes], env, vols)
    assert proc.returncode == 0, proc.stderr
    found = dict(reversed(line.split(" ", 1)) for line in proc.stdout.splitlines())
    assert found == {p: ("W" if p in writable else "R") for p in probes}, proc.stdout
