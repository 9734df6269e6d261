#!/bin/bash
# Pretrain roberta-small-books on one GPU (it ran on a lent H200), as one prepared script.
#
# Data: .devdata/data.tar.gz, packed from ../shared/data by recipes/h200/pack.sh (the device
# machine has no ../shared). Two runs share the GPU, peak lr 3e-4 and 6e-4 (a hedge: the small
# model leaves most of the GPU idle); a short probe measures their throughput, and the schedule
# is laid over the steps that fit in BUDGET_S seconds. The run with the lower final training loss
# is kept (the held-out texts play no part in the choice), evaluated, and exported as fp16.
#
#   bash recipes/h200/pretrain.sh                  # OUT=folder for results, BUDGET_S=300
#   SMOKE=1 bash recipes/h200/pretrain.sh          # the same steps, tiny and on CPU, to check it
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
PY=${PY:-python3}
W=${WORK:-.devrun}; D=$W/data; OUT=${OUT:-$W/out}; BUDGET_S=${BUDGET_S:-300}
mkdir -p "$D" "$OUT"
[ -d "$D/pretrain-corpus" ] || tar xzf .devdata/data.tar.gz -C "$D" || exit 1
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) | tee "$OUT/gpu.txt"
$PY -c 'import torch, transformers, tokenizers; print("torch", torch.__version__, "transformers", transformers.__version__, "tokenizers", tokenizers.__version__, "cuda", torch.cuda.is_available())'

C=$D/pretrain-corpus
HELD="$C/gutenberg-120-treasure-island.txt $C/gutenberg-1661-adventures-of-sherlock-holmes.txt $C/gutenberg-550-silas-marner.txt"
TRAIN=$(ls $C/*.txt | grep -v -e gutenberg-120- -e gutenberg-1661- -e gutenberg-550-)
BATCH=256; WORKERS=6; PROBE=60; LRS="3e-4 6e-4"
if [ -n "${SMOKE:-}" ]; then BATCH=8; WORKERS=2; PROBE=20; TRAIN=$(echo $TRAIN | cut -d' ' -f1-2); fi
common="--corpus $TRAIN --heldout $HELD --config recipes/h200/small-nodropout.json --tokenizer $D/tokenizer
  --batch-size $BATCH --warmup-ratio 0.06 --cache-dir $W/cache --workers $WORKERS --seed 0 --save-every-minutes 100 --init neighbour-heads"

echo "== tokenize once (cached for both runs)"
$PY -m roberta.cli pretrain $common --lr 1e-3 --out $W/tokenize --max-steps 1 --eval-every 1000000 > "$OUT/tokenize.log" 2>&1 || { tail -n 30 "$OUT/tokenize.log"; exit 1; }

echo "== probe: $PROBE steps of each run, side by side"
for lr in $LRS; do
  $PY -m roberta.cli pretrain $common --lr $lr --out $W/probe-$lr --max-steps $PROBE --eval-every 1000000 > "$OUT/probe-$lr.log" 2>&1 &
done
wait
STEPS=$($PY - "$BUDGET_S" $((BATCH * 128)) $W/probe-*/metrics.jsonl <<'PYEOF'
import json, statistics, sys
budget, tokens_per_step, files = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rates = []
for f in files:
    rec = [json.loads(l) for l in open(f) if '"tokens_per_s"' in l]
    rates.append(statistics.median(r["tokens_per_s"] for r in rec[len(rec) // 2 :]))
print(max(20, int(0.93 * budget * min(rates) / tokens_per_step)), file=sys.stdout)
print("probe tokens/s per run:", [round(r) for r in rates], file=sys.stderr)
PYEOF
) || { tail -n 30 "$OUT"/probe-*.log; exit 1; }
echo "== pretraining: $STEPS steps of $BATCH blocks per run"
for lr in $LRS; do
  $PY -m roberta.cli pretrain $common --lr $lr --out $W/run-$lr --max-steps $STEPS \
    --max-minutes $(( (BUDGET_S + 90) / 60 )) --eval-every $(( STEPS / 6 > 0 ? STEPS / 6 : 1 )) > "$OUT/run-$lr.log" 2>&1 &
done
wait

echo "== choose the run with the lower final training loss, evaluate it, export it"
BEST=$($PY - $W $LRS <<'PYEOF'
import json, sys
def final_loss(lr):
    try:
        rec = [json.loads(l) for l in open(f"{sys.argv[1]}/run-{lr}/metrics.jsonl") if '"loss"' in l]
    except OSError:
        return float("inf")
    tail = [r["loss"] for r in rec[-5:]]
    return sum(tail) / len(tail) if tail else float("inf")
losses = {lr: final_loss(lr) for lr in sys.argv[2:]}
print({k: round(v, 4) for k, v in losses.items()}, file=sys.stderr)
print(min(losses, key=losses.get))
PYEOF
)
echo "best: lr $BEST"; echo "$BEST" > "$OUT/best_lr.txt"; ln -sfn run-$BEST $W/best
for lr in $LRS; do tail -c 1500 "$OUT/run-$lr.log"; echo; done
$PY -m roberta.cli evaluate mlm --model $W/best/last --corpus $HELD --json | tee "$OUT/eval-books.json"
$PY -m roberta.cli evaluate mlm --model $W/best/last --corpus $D/wikitext-2/wiki.valid.tokens --json | tee "$OUT/eval-wiki.json"
$PY -m roberta.cli fill-mask --model $W/best/last "The old man walked slowly to the <mask>." "It was a dark and stormy <mask>." | tee "$OUT/fillmask.txt"
$PY - $W/best/last "$OUT/model-fp16" <<'PYEOF'
import sys, torch
from roberta.heads import RobertaForMaskedLM
from roberta.tokenizer import Tokenizer
model = RobertaForMaskedLM.from_pretrained(sys.argv[1])
model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.1  # for fine-tuning
model.save_pretrained(sys.argv[2], dtype=torch.float16)
Tokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
PYEOF
mv "$OUT/model-fp16/model.safetensors" "$OUT/model-fp16.safetensors"
for lr in $LRS; do mkdir -p "$OUT/runs/$lr"; cp $W/run-$lr/metrics.jsonl $W/run-$lr/metrics.png "$OUT/runs/$lr/" 2>/dev/null; done
tar czf "$OUT/results.tar.gz" -C "$OUT" --exclude model-fp16.safetensors --exclude results.tar.gz . && \
  find "$OUT" -mindepth 1 -not -name model-fp16.safetensors -not -name results.tar.gz -not -name gpu.txt -delete
ls -la "$OUT"
