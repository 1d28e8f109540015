#!/usr/bin/env bash
# One whole measurement on a GPU machine, each trial a fresh process, as a pod would be.
#
#   benchmarks/gpu_run.sh PHASE[:ROUNDS] ...   e.g.  save cold:5 warm:5 fidelity:7 smoke
#
# save      build MODEL (random/<name>) and write every format (skipped if present)
# cold|warm ROUNDS rounds; a round runs every configuration once, round-robin, so a
#           deadline leaves every configuration with equal trials. Round 1 generates tokens
#           (time to first token, tokens/s); ceilings are measured once per node (CEILINGS=reuse)
# fidelity  benchmarks/fidelity.py, loadbench vs bare calls interleaved, FID_MODES (warm)
# smoke     every configuration once on random/llama-tiny, warm, with inference
# rotate    for a disk that holds one format at a time (OPT-30B on 64-128 GiB): for each of
#           ROTATE_FORMATS (default: safetensors tensorizer bin flashpack), save that format
#           alone, run ROUNDS cold then ROUNDS warm of every configuration that reads it, delete
#           it. The model is rebuilt with the same seed each time: the manifest's checksums are
#           the same, and save_models.py checks it (a format kept from an earlier save of other
#           weights is dropped).
#
# DEVICE (default cuda) and LIBS (a comma list: only configurations of these libraries) narrow
# a run; the tests run `rotate` on the CPU.
#
# Needs .whl/ (benchmarks/gpu-wheels.txt) carried beside the repository. Results go to $OUT:
# results.tar.gz (documents, node ceilings), manifest.json, logs.
set -u
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac
for spec in "$@"; do  # every phase is checked before any work starts
  case ${spec%%:*} in save|cold|warm|fidelity|smoke|rotate) ;; *) echo "unknown phase ${spec%%:*}" >&2; usage >&2; exit 2 ;; esac
done
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && [ ! -f /tmp/site/.done ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && touch /tmp/site/.done || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
WORK=${WORK:-/root/loadbench-work}
MODEL=${MODEL:-llama-2-7b}
export MODEL_ID=random/$MODEL MODEL_PATH=$WORK/models/$MODEL RES_PATH=$WORK/results
export DTYPE=${DTYPE:-bfloat16} DEVICE=${DEVICE:-cuda} MAX_NEW_TOKENS=32 INFERENCE_RUNS=3 CEILING_SECONDS=${CEILING_SECONDS:-4}
export RESULT_LINES=0 CEILINGS=reuse NODE_NAME=${NODE_NAME:-$(hostname)}
DEADLINE=$((SECONDS + ${BUDGET:-540}))
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
  "reference|LIBRARIES=reference"
)

save() {
  if [ -f "$MODEL_PATH/manifest.json" ]; then echo "checkpoint present"; return; fi
  df -h "$(dirname "$WORK")" | tee -a "$OUT/save.log"
  LIBRARIES=$ALL NUM_TRIALS=1 python3 save_models.py 2>&1 | tee -a "$OUT/save.log"
  if [ "${PIPESTATUS[0]}" = 2 ]; then  # not enough disk for every format: drop the legacy pickle
    echo "== retry without huggingface-bin" | tee -a "$OUT/save.log"
    LIBRARIES=tensorizer,safetensors,flashpack NUM_TRIALS=1 python3 save_models.py 2>&1 | tee -a "$OUT/save.log"
  fi
  cp "$MODEL_PATH/manifest.json" "$OUT/manifest.json"
  df -h "$(dirname "$WORK")" | tee -a "$OUT/save.log"
}

# library -> the checkpoint format it reads, from the registry
declare -A FORMAT_OF
while read -r lib fmt; do FORMAT_OF[$lib]=$fmt; done < <(python3 -c \
  "from loadbench import loaders; print('\n'.join(f'{l.name} {l.format}' for l in loaders.LIBRARIES))")

wanted() {  # does configuration $1 run now? (LIBS narrows; ONLY_FORMAT: its library reads that format)
  local lib=${1#*LIBRARIES=}; lib=${lib%% *}
  if [ -n "${LIBS:-}" ] && [[ ",$LIBS," != *",$lib,"* ]]; then return 1; fi
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

trials() {
  local mode=$1 rounds=$2 t cfg
  for t in $(seq "${FROM:-1}" "$rounds"); do
    for cfg in "${CONFIGS[@]}"; do
      wanted "${cfg#*|}" || continue
      [ $SECONDS -lt $DEADLINE ] || { echo "deadline reached in round $t"; return; }
      local skip=1
      [ "$t" = 1 ] && [ "${INFER:-1}" = 1 ] && skip=0
      echo "== $mode round $t ${cfg%%|*}"
      env ${cfg#*|} CACHE_MODE=$mode RUN_ID=$MODEL-$mode SKIP_INFERENCE=$skip \
        python3 deserialize_benchmark.py 2>&1 | grep -E 'trial|error|WARN|Error|ceilings|exit'
    done
  done
}

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, transformers, safetensors; print('torch', torch.__version__, 'transformers', transformers.__version__, 'safetensors', safetensors.__version__)" | tee -a "$OUT/gpu.txt"
for spec in "$@"; do
  phase=${spec%%:*} rounds=${spec#*:}
  [ "$rounds" = "$spec" ] && rounds=5
  case $phase in
    save) save ;;
    rotate) rotate "$rounds" ;;
    cold|warm) save
      # The device budget holds 3 cold rounds (all disk-bound, ~7-9 s each) and 5 warm ones.
      [ "$phase" = cold ] && [ "$rounds" -gt "${COLD_MAX:-3}" ] && rounds=${COLD_MAX:-3}
      trials "$phase" "$rounds" ;;
    fidelity) save; IT_BACKEND=URING_BUFFERED python3 benchmarks/fidelity.py --model-path "$MODEL_PATH" --samples "$rounds" \
                --modes "${FID_MODES:-warm}" --libraries "${FID_LIBS:-tensorizer,safetensors,huggingface,instanttensor,flashpack,runai-streamer}" \
                --out "$OUT/${MODEL}-fidelity.json" --deadline $((DEADLINE - SECONDS)) ;;
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
[ -d "$RES_PATH" ] && tar -czf "$OUT/results.tar.gz" -C "$WORK" results
ls -la "$OUT"
