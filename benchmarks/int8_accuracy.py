"""What int8 costs on a real task, scheme by scheme: the built-in model's masked-token loss,
accuracy and perplexity (`roberta evaluate mlm`'s fixed masks) on the held-out books of its model
card ($HELD) and on WikiText-2's valid split, in three forms of the same weights:

  fp32        the model as shipped;
  int8-sym    every layer matmul's input rows scaled symmetrically by their absmax (`quantize_rows`),
              the scheme before the FFN's second matmul took its input above the GELU's floor;
  int8        `quantize_int8` as it is: that matmul's GELU input in 256 levels from -0.17 up to each
              row's max (`quantize_rows_above`), the rest as in int8-sym.

Also each int8 form's largest and mean difference from fp32 in the last hidden state, at real
positions, on the first batch of held-out blocks. `roberta evaluate mlm --dtype int8` gives the
`int8` row alone.

    python benchmarks/int8_accuracy.py          # a few minutes on 2 cores
    python benchmarks/int8_accuracy.py --blocks 200
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

from roberta.heads import RobertaForMaskedLM
from roberta.pretrain import Blocks, Masker, evaluate_mlm, tokenize_corpus
from roberta.quantize import Int8Linear, int8_kernel, quantize_int8
from roberta.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ROBERTA_DATA") or ROOT.parent / "shared" / "data")
HELD = [  # the built-in model's held-out books (roberta/models/roberta-small-books/MODEL_CARD.md)
    "pretrain-corpus/gutenberg-120-treasure-island.txt",
    "pretrain-corpus/gutenberg-1661-adventures-of-sherlock-holmes.txt",
    "pretrain-corpus/gutenberg-550-silas-marner.txt",
]
WIKI = ["wikitext-2/wiki.valid.tokens"]
SEED = 1234  # of the fixed masks: `roberta evaluate mlm`'s default


def symmetric(model: torch.nn.Module) -> torch.nn.Module:
    """An int8 model whose every linear takes its input symmetrically (no input floor)."""
    for m in model.modules():
        if isinstance(m, Int8Linear):
            m.input_floor = None
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="roberta-small-books", help="an MLM checkpoint (default: the built-in one)"
    )
    p.add_argument("--blocks", type=int, help="at most this many blocks per corpus (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    missing = [name for name in HELD + WIKI if not (DATA / name).is_file()]
    if missing:
        sys.exit(f"int8_accuracy.py: {', '.join(missing)} absent under {DATA} (set ROBERTA_DATA)")
    torch.manual_seed(0)
    tok = Tokenizer.from_pretrained(args.model)
    fp32 = RobertaForMaskedLM.from_pretrained(args.model).eval()
    forms = {
        "fp32": fp32,
        "int8-sym": symmetric(quantize_int8(copy.deepcopy(fp32))),
        "int8": quantize_int8(copy.deepcopy(fp32)),
    }
    print(
        f"model {args.model}, int8 kernel {int8_kernel()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"command: python benchmarks/int8_accuracy.py {' '.join(sys.argv[1:])}".rstrip())
    masker = Masker.for_tokenizer(tok)
    for corpus, files in (("held-out books", HELD), ("WikiText-2 valid", WIKI)):
        blocks = Blocks(
            tokenize_corpus([DATA / f for f in files], tok), fp32.config.max_length, tok.bos_token_id
        )
        rows = range(min(args.batch_size, len(blocks)))  # the first batch, masked as evaluate_mlm masks it
        first = masker.mask_batch([blocks[i] for i in rows], SEED, 0, rows, tok.pad_token_id)
        real = first["attention_mask"].bool()
        with torch.inference_mode():
            states = {
                name: m.roberta(first["input_ids"], first["attention_mask"]).last_hidden_state[real]
                for name, m in forms.items()
            }
        print(f"\n{corpus}:")
        print(
            f"{'form':10s} {'loss':>7s} {'accuracy':>9s} {'perplexity':>11s} {'max |diff|':>11s} {'mean |diff|':>12s} {'s':>5s}"
        )
        for name, model in forms.items():
            start = time.perf_counter()
            with torch.inference_mode():
                r = evaluate_mlm(
                    model, blocks, masker, tok.pad_token_id, args.batch_size, SEED, max_blocks=args.blocks
                )
            diff = (states[name] - states["fp32"]).abs()
            print(f"{name:10s} {r['loss']:7.4f} {100 * r['accuracy']:8.2f}% {r['perplexity']:11.2f} "
                  f"{float(diff.max()):11.2e} {float(diff.mean()):12.2e} {time.perf_counter() - start:5.0f}")  # fmt: skip
        print(f"({r['masked_tokens']:,} masked tokens)")


if __name__ == "__main__":
    main()
