#!/usr/bin/env bash
# One whole measurement phase on a GPU machine (the device tool's H100/H200),
# each trial a fresh process, as a pod would be. Results are tarred into $OUT.
#
#   benchmarks/gpu_run.sh PHASE[:ROUNDS] ...     e.g.  cold:5 warm:5 bare:3
#
# A cold or warm round runs every configuration once, each in a fresh process;
# the first round of a phase measures ceilings (CEILINGS=1) and, unless
# INFER=0, generates tokens (CEIL=0 skips the ceilings).
#
# Needs .whl/ (tensorizer, fastsafetensors, runai-model-streamer and their
# missing dependencies) carried beside the repository; see docs/results/*/README.md.
set -u
[ $# -gt 0 ] || { echo "usage: $0 PHASE[:ROUNDS] ..." >&2; exit 2; }
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
WORK=${WORK:-/root/loadbench-work}
MODEL=${MODEL:-gpt-j-6b}
export MODEL_ID=random/$MODEL MODEL_PATH=$WORK/models/$MODEL RES_PATH=$WORK/results
export DTYPE=float16 DEVICE=cuda MAX_NEW_TOKENS=32 CEILING_SECONDS=4
DEADLINE=$((SECONDS + ${BUDGET:-530}))

# label | env for that configuration
CONFIGS=(
  "tensorizer|LIBRARIES=tensorizer"
  "tensorizer-numreaders16|LIBRARIES=tensorizer TZR_NUM_READERS=16"
  "safetensors|LIBRARIES=safetensors"
  "huggingface|LIBRARIES=huggingface"
  "huggingface-bin|LIBRARIES=huggingface-bin"
  "fastsafetensors|LIBRARIES=fastsafetensors"
  "runai-streamer|LIBRARIES=runai-streamer"
)

save() {
  if [ -f "$MODEL_PATH/manifest.json" ]; then echo "checkpoint present"; return; fi
  LIBRARIES=tensorizer,safetensors,huggingface-bin NUM_TRIALS=1 python3 save_models.py \
    2>&1 | tee -a "$OUT/save.log"
  cp "$MODEL_PATH/manifest.json" "$OUT/manifest.json"
}

trials() {  # round-robin, so a deadline leaves every configuration with equal trials
  local mode=$1 rounds=$2
  for t in $(seq 1 "$rounds"); do
    for cfg in "${CONFIGS[@]}"; do
      [ $SECONDS -lt $DEADLINE ] || { echo "deadline reached at trial $t"; return; }
      local extra=${cfg#*|}
      local ceil=0 skip=1
      if [ "$t" = 1 ]; then ceil=${CEIL:-1}; [ "${INFER:-1}" = 1 ] && skip=0; fi
      echo "== $mode trial $t ${cfg%%|*}"
      env $extra CACHE_MODE=$mode RUN_ID=$MODEL-$mode CEILINGS=$ceil SKIP_INFERENCE=$skip \
        python3 deserialize_benchmark.py 2>&1 | grep -v '^LOADBENCH_RESULT' | grep -E 'trial|error|WARN|Error'
    done
  done
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
df -h "$WORK" 2>/dev/null || df -h /root
save
for spec in "$@"; do
  phase=${spec%%:*} rounds=${spec#*:}
  [ "$rounds" = "$spec" ] && rounds=5
  case $phase in
    save) ;;
    cold|warm) trials "$phase" "$rounds" ;;
    bare) python3 benchmarks/bare_load.py --model-path "$MODEL_PATH" --trials "$rounds" \
            --out "$OUT/bare.json" --modes "${BARE_MODES:-cold,warm}" --deadline $((DEADLINE - SECONDS)) ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
tar -czf "$OUT/results.tar.gz" -C "$WORK" results 2>/dev/null
ls -la "$OUT"
