#!/bin/bash
# The GPU half of the speed issue, as one prepared script: benchmarks/speed.py in bf16 (ours and
# transformers side by side; the pretraining step's model-FLOPs utilisation is printed), then
# benchmarks/compile.py (eager vs torch.compile on the same model and batches). Output in $OUT.
#
#   OUT=results bash recipes/h200/speed.sh       # about 10 minutes on one H200 (estimate)
#   SMOKE=1 bash recipes/h200/speed.sh           # the same steps, small and on CPU, to check it
set -u -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
OUT=${OUT:-.devrun/out}
mkdir -p "$OUT"
if [ -n "${SMOKE:-}" ]; then
  SPEED="--config small --quick --device cpu"; COMPILE="--config small --device cpu"
else
  SPEED="--config base --device cuda --dtype bf16"; COMPILE="--config base --device cuda --dtype bf16"
  (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$OUT/gpu.txt"
fi
$PY benchmarks/speed.py $SPEED --json "$OUT/speed.json" 2>&1 | tee "$OUT/speed.txt" || exit 1
$PY benchmarks/compile.py $COMPILE 2>&1 | tee "$OUT/compile.txt" || exit 1
