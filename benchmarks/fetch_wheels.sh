#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu-wheels.txt into .whl/ for a machine with no internet
# (Python 3.12, x86_64 manylinux). Then: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
set -euo pipefail
usage() {
  cat <<'USAGE'
usage: benchmarks/fetch_wheels.sh [-h|--help] [--s3 | --fio]

Download the wheels pinned in benchmarks/gpu-wheels.txt into .whl/ (for Python PY_VERSION,
default 3.12, x86_64 manylinux), for a GPU machine with no internet. Then, there:
  pip install --no-index --no-deps --target /tmp/site .whl/*.whl
--s3: instead, the wheels only gpu_run.sh's s3 phase needs (the `#s3` lines: SeaweedFS and
  runai's S3 backend) into .whl-s3/, to carry in a call of its own (with the other wheels they
  are over a call's 64 MiB).
--fio: a statically linked fio (2.8 MB, libaio and io_uring engines) into .whl/fio, built from
  Debian's source package: it runs on any x86_64 Linux, with no libaio there. gpu_run.sh puts it
  on PATH for the storage ceiling. Needs deb-src in apt's sources (Types: deb deb-src), then
  apt-get update, and gcc, make, libaio-dev and zlib1g-dev.

environment:
  PY_VERSION  the target machine's Python (default 3.12)
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|--s3|--fio) ;;
  *) usage >&2; echo "fetch_wheels.sh: unknown argument ${1}" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
if [ "${1:-}" = --fio ]; then
  # fio's configure drops an engine whose library it does not find, silently: a fio built here
  # without libaio-dev refused every O_DIRECT storage try on a GPU machine (2026-12-05).
  for need in /usr/include/libaio.h /usr/include/zlib.h; do
    [ -f "$need" ] || { echo "fetch_wheels.sh --fio: $need is missing: apt-get install gcc make" \
      "libaio-dev zlib1g-dev, then try again" >&2; exit 1; }
  done
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get source -qq --download-only fio) || {
    echo "fetch_wheels.sh --fio: apt-get source fio failed: add deb-src to apt's sources" \
      "(Types: deb deb-src), run apt-get update, and try again" >&2; exit 1; }
  tar xzf "$work"/fio_*.orig.tar.gz -C "$work"
  (cd "$work"/fio-*/ && ./configure --build-static --disable-native >/dev/null && make -j"$(nproc)" >/dev/null)
  engines=$("$work"/fio-*/fio --enghelp)
  for engine in libaio io_uring; do
    grep -qx "[[:space:]]*$engine" <<<"$engines" || { echo "fetch_wheels.sh --fio: the fio built" \
      "has no $engine engine (see its ./configure output); .whl/fio left as it was" >&2; exit 1; }
  done
  mkdir -p .whl
  strip -o .whl/fio "$work"/fio-*/fio
  .whl/fio --version
  exit 0
fi
PY=${PY_VERSION:-3.12}
platforms=()
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
         manylinux_2_17 manylinux2014 manylinux1; do platforms+=(--platform "${p}_x86_64"); done
if [ "${1:-}" = --s3 ]; then
  lines=$(sed -n 's/^#s3 //p' benchmarks/gpu-wheels.txt) dest=.whl-s3
else
  lines=$(grep -v '^#' benchmarks/gpu-wheels.txt | grep .) dest=.whl
fi
echo "$lines" | xargs python3 -m pip download -q --no-deps \
  --only-binary=:all: --python-version "$PY" --implementation cp "${platforms[@]}" -d "$dest"
ls "$dest"
