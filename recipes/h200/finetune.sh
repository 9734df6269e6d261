#!/bin/bash
# Fine-tune the pretrained small model on SST-2, CoNLL-2003 and SQuAD (80/20 by article) side by
# side on one GPU, then score each with `roberta evaluate`. Run after pretrain.sh (same WORK).
#
#   bash recipes/h200/finetune.sh                 # MODEL=WORK/best/last, OUT=folder for results
#   SMOKE=1 bash recipes/h200/finetune.sh         # the same steps, a few steps each, to check it
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
W=${WORK:-.devrun}; D=$W/data; OUT=${OUT:-$W/out}; MODEL=${MODEL:-$W/best/last}
mkdir -p "$D" "$OUT/ft"
[ -d "$D/sst2" ] || tar xzf .devdata/data.tar.gz -C "$D" || exit 1
[ -e "$MODEL/config.json" ] || MODEL=roberta-small-books
echo "== fine-tuning from $MODEL"
LIMIT=""; [ -n "${SMOKE:-}" ] && LIMIT="--max-steps 6 --eval-every 3"
$PY -m roberta.cli finetune split-squad $D/squad/dev-v1.1.json --fraction 0.8 \
  --train-out $W/squad-split/train.json --dev-out $W/squad-split/dev.json
run() {  # name, then the command's arguments
  local name=$1; shift
  /usr/bin/time -f "$name: %e s wall" $PY -m roberta.cli "$@" --model $MODEL --out $W/ft-$name --workers 2 \
    --no-progress $LIMIT > "$OUT/ft/$name.log" 2>&1
  tail -n 2 "$OUT/ft/$name.log"
}
run sst2 finetune classify --train $D/sst2/train.tsv --dev $D/sst2/dev.tsv --text-column sentence \
  --epochs 2 --lr 1e-4 --batch-size 32 --eval-every 1000 --max-minutes 2.5 &
run conll finetune ner --train $D/conll2003/train.txt --dev $D/conll2003/valid.txt \
  --epochs 4 --lr 2e-4 --batch-size 32 --eval-every 500 --max-minutes 2.5 &
run squad finetune qa --train $W/squad-split/train.json --dev $W/squad-split/dev.json \
  --epochs 2 --lr 2e-4 --batch-size 32 --eval-every 500 --max-minutes 2.5 &
wait
echo "== scores (dev for SST-2, test for CoNLL-2003, the held-out 20% of articles for SQuAD)"
$PY -m roberta.cli evaluate classify --model $W/ft-sst2/best --data $D/sst2/dev.tsv --text-column sentence --json | tee "$OUT/ft/eval-sst2.json"
$PY -m roberta.cli evaluate ner --model $W/ft-conll/best --data $D/conll2003/test.txt --json | tee "$OUT/ft/eval-conll-test.json"
$PY -m roberta.cli evaluate qa --model $W/ft-squad/best --data $W/squad-split/dev.json --json | tee "$OUT/ft/eval-squad.json"
for name in sst2 conll squad; do cp $W/ft-$name/metrics.jsonl "$OUT/ft/metrics-$name.jsonl" 2>/dev/null; done
tar czf "$OUT/finetune.tar.gz" -C "$OUT" ft && rm -rf "$OUT/ft"
