#!/bin/bash
# Pack what recipes/h200/*.sh read into .devdata/data.tar.gz (git-ignored through
# .git/info/exclude): the device machine sees the repository, not ../shared/data beside it.
#   bash recipes/h200/pack.sh [TOKENIZER_DIR]      # default: the shipped model's tokenizer
set -eu
S=${DATA:-../shared/data}; TOK=${1:-roberta/models/roberta-small-books}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
mkdir -p "$T/pretrain-corpus" "$T/wikitext-2" "$T/sst2" "$T/conll2003" "$T/squad" "$T/tokenizer" .devdata
cp "$S"/pretrain-corpus/*.txt "$T/pretrain-corpus/"
cp "$S/wikitext-2/wiki.valid.tokens" "$T/wikitext-2/"
cp "$S"/sst2/{train,dev}.tsv "$T/sst2/"
cp "$S"/conll2003/*.txt "$T/conll2003/"
cp "$S/squad/dev-v1.1.json" "$T/squad/"
cp "$TOK"/{vocab.json,merges.txt,tokenizer.json,tokenizer_config.json,special_tokens_map.json} "$T/tokenizer/" 2>/dev/null || cp "$TOK"/{vocab.json,merges.txt} "$T/tokenizer/"
tar czf .devdata/data.tar.gz -C "$T" .
grep -qx "/.devdata/" .git/info/exclude 2>/dev/null || echo "/.devdata/" >> .git/info/exclude
ls -la .devdata/data.tar.gz
