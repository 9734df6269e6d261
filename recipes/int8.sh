#!/usr/bin/env bash
# What the opt-in int8 inference costs on real tasks: each fine-tuned checkpoint of the README's
# "Fine-tuning" section scored twice, in fp32 and with --dtype int8, and each command timed.
# Needs the checkpoints those commands wrote (runs/sst2, runs/conll, runs/squad, and
# runs/translate-roberta from recipes/translate.sh) and squad-split/ from `roberta finetune
# split-squad`; point the variables elsewhere if needed.
#
#   bash recipes/int8.sh                 # JSON scores and times in runs/int8/
set -euo pipefail
D=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
SQUAD_DEV=${SQUAD_DEV:-squad-split/dev.json}
OUT=${OUT:-$RUNS/int8}
mkdir -p "$OUT"

timed() {  # name, then the command: its JSON goes to $OUT/name.json, its wall time to times.txt
  local name=$1 start
  shift
  start=$(date +%s)
  "$@" --json > "$OUT/$name.json"
  echo "$name $(( $(date +%s) - start )) s" >> "$OUT/times.txt"
}

for dt in fp32 int8; do
  timed "sst2-$dt" roberta evaluate classify --model "$RUNS/sst2/last" --data "$D/sst2/dev.tsv" \
    --text-column sentence --dtype "$dt"
  timed "conll-$dt" roberta evaluate ner --model "$RUNS/conll/best" --data "$D/conll2003/test.txt" --dtype "$dt"
  timed "squad-$dt" roberta evaluate qa --model "$RUNS/squad/best" --data "$SQUAD_DEV" --dtype "$dt"
  timed "translate-$dt" roberta evaluate translate --model "$RUNS/translate-roberta/best" \
    --data "$D/multi30k/test_2016_flickr.en" "$D/multi30k/test_2016_flickr.de" --num-beams 4 --dtype "$dt"
done
cat "$OUT/times.txt"
