# One image for both jobs (save_models.py and deserialize_benchmark.py): `make image IMAGE=...`.
# The base is pinned by exact tag. For reproducible builds pin it by digest too:
#   docker buildx imagetools inspect pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
# then build with --build-arg BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime@sha256:<digest>.
# Any base with `python` and `pip` on PATH, torch >= 2.8 installed and apt works (tests/image builds
# this file on a Debian base with CPU torch).
ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

# PYTHONPATH: the Jobs run `python -m loadbench...` from /data (the matrix launcher, the
# collection helper), so the package must import from anywhere, as localjob's pods do.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONPATH=/app \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# fio: storage ceilings are measured the way storage engineers do, with fio where present.
# curl (with ca-certificates): tensorizer streams from object storage through the curl binary.
# Not pinned: the versions are the base distribution's (Ubuntu in the default base, Debian in
# tests/image).
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fio curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# torch comes with the base image; every range in requirements.txt accepts it (instanttensor
# needs torch >= 2.8, hence this base), so pip installs nothing CUDA-sized on top.
COPY requirements.txt requirements-peers.txt ./
# Bytecode for the standard library and every installed package, the base image's too: with
# PYTHONDONTWRITEBYTECODE=1 a module without .pyc is compiled again by every pod (measured on a
# machine whose sympy and torch had none: 6-12 s of imports per pod instead of ~3,
# docs/results/2026-12-03-h200-llama-2-7b). Files compiled already are skipped; a file that does
# not compile is not an error, since some packages ship files that are not Python 3 (templates,
# test fixtures) and are never imported. tests/image checks that every module a pod imports has its
# bytecode.
# Timestamp-checked, as pip writes them (SOURCE_DATE_EPOCH would otherwise make hash-checked .pyc,
# which hash their source at every import).
RUN pip install --no-cache-dir -r requirements.txt -r requirements-peers.txt \
 && python -c 'import compileall, py_compile, sysconfig; p = sysconfig.get_paths(); \
[compileall.compile_dir(d, quiet=2, workers=0, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP) \
 for d in dict.fromkeys(p[k] for k in ("stdlib", "purelib", "platlib"))]'

# Non-root, with a home for library caches (mounted as an emptyDir in the Jobs,
# so the root filesystem can stay read-only).
RUN groupadd --gid 10001 loadbench \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/loadbench loadbench \
 && mkdir -p /data/loadbench-data/models /data/results \
 && chown -R 10001:10001 /data

# The code last, so a change to it rebuilds only these layers. Owned by root: not writable at run time.
COPY loadbench/ ./loadbench/
COPY save_models.py deserialize_benchmark.py collect_results.py plot_results.py ./
# Bytecode now: the pods run with PYTHONDONTWRITEBYTECODE=1 on a read-only /app, so without it
# every pod would compile the package again before its load (pip compiled the dependencies).
RUN python -m compileall -q /app/loadbench

# The pods' working directory. The Jobs mount the PVC's models/ and results/ folders at
# the two paths made above, so the derived MODEL_PATH (loadbench-data/models/<model name>)
# and the default RES_PATH (./results) land on the PVC; `docker run` without mounts keeps
# them in the container, as a local run keeps them in its folder.
WORKDIR /data
USER 10001:10001

CMD ["python", "/app/deserialize_benchmark.py"]
