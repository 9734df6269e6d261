#!/usr/bin/env bash
# Multi30k English -> German with a RoBERTa-initialised encoder-decoder, and the same model from
# random weights: the README's translation numbers. Each run trains for at most 45 minutes on
# the 2-core CPU, then its best checkpoint (dev BLEU, greedy) translates test_2016_flickr with 4 beams.
#
#   bash recipes/translate.sh                    # both runs, one after the other, in runs/translate*
#   RUNS=roberta bash recipes/translate.sh       # only the RoBERTa-initialised one
set -euo pipefail
D=${DATA:-../shared/data}/multi30k
OUT=${OUT:-runs}
RUNS=${RUNS:-"roberta random"}
MODEL=${MODEL:-roberta-small-books}

for run in $RUNS; do
  start=$MODEL
  if [ "$run" = random ]; then  # the same architecture and tokenizer, random weights
    start=$OUT/random-start
    python - "$MODEL" "$start" <<'EOF'
import sys

import torch

from roberta import RobertaForMaskedLM
from roberta.tokenizer import Tokenizer

name, folder = sys.argv[1:]
torch.manual_seed(0)
RobertaForMaskedLM(RobertaForMaskedLM.from_pretrained(name).config).save_pretrained(folder)
Tokenizer.from_pretrained(name).save_pretrained(folder)
EOF
  fi
  roberta finetune translate --train $D/train.en $D/train.de --dev $D/val.en $D/val.de \
    --model "$start" --out "$OUT/translate-$run" \
    --epochs 2 --lr 5e-4 --batch-size 32 --eval-every 600 --max-minutes 45 --seed 0 --no-progress
  roberta evaluate translate --model "$OUT/translate-$run/best" \
    --data $D/test_2016_flickr.en $D/test_2016_flickr.de --num-beams 4 \
    --output "$OUT/translate-$run/test.de" --json | tee "$OUT/translate-$run/test.json"
done
