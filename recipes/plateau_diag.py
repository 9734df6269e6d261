"""Does a masked LM use word order yet? Attention and position statistics on held-out text.

A masked LM on the early plateau predicts frequent tokens from the bag of words around them:
its attention is close to uniform and its learned position table has no structure. This prints,
for each layer, how spread the attention is (entropy as a share of a uniform row's, 1.0 =
uniform) and how much weight a query puts on its left and right neighbours, as a multiple of
the uniform share 1/T (1x = no preference for neighbours); then how alike the position vectors
of neighbouring positions are, next to ones 10 apart (a table that encodes order has neighbours
far more alike).

    python recipes/plateau_diag.py --model roberta-small-books \
        --text ../shared/data/pretrain-corpus/gutenberg-120-treasure-island.txt

Measured (2026-11-28) on the shipped roberta-small-books: entropy 0.84-0.98 of uniform in every
head, neighbours 0.8-1.1x, position table: neighbour cosine 0.09, 10 apart 0.09 — a bag of words.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from roberta.heads import RobertaForMaskedLM  # noqa: E402
from roberta.tokenizer import Tokenizer  # noqa: E402


@torch.no_grad()
def diagnose(model: RobertaForMaskedLM, input_ids: torch.Tensor) -> dict:
    """input_ids: (B, T) real tokens, no padding. Returns per-layer lists (one value per head) and
    the position-table similarities."""
    model.eval()
    T = input_ids.size(1)
    out = model.roberta(input_ids, output_attentions=True)
    layers = []
    for a in out.attentions:  # (B, nh, T, T)
        entropy = -(a * a.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 2)) / math.log(T)  # (nh,)
        left = torch.diagonal(a, offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2)) * T  # (nh,)
        right = torch.diagonal(a, offset=1, dim1=-2, dim2=-1).mean(dim=(0, 2)) * T
        layers.append({"entropy": entropy.tolist(), "left": left.tolist(), "right": right.tolist()})
    first = model.config.pad_token_id + 1  # positions start at pad+1
    table = model.roberta.embeddings.position.weight[first : first + T]  # (T, C)
    unit = torch.nn.functional.normalize(table, dim=-1)
    sim = unit @ unit.T
    return {
        "layers": layers,
        "position_cos_1": torch.diagonal(sim, 1).mean().item(),
        "position_cos_10": torch.diagonal(sim, 10).mean().item() if T > 10 else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model name or folder (an MLM and its tokenizer)")
    p.add_argument("--text", required=True, help="a UTF-8 text file the model has not trained on")
    p.add_argument("--blocks", type=int, default=8, help="blocks of the model's length to average over")
    args = p.parse_args(argv)
    model = RobertaForMaskedLM.from_pretrained(args.model)
    tok = Tokenizer.from_pretrained(args.model)
    T = model.config.max_length
    ids = tok(Path(args.text).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    n = min(args.blocks, len(ids) // T)
    if n < 1:
        raise SystemExit(f"{args.text} has {len(ids)} tokens; one block needs {T}")
    batch = torch.tensor(ids[: n * T]).view(n, T)
    report = diagnose(model, batch)
    print(
        f"{n} blocks of {T} tokens; per head: entropy / uniform, weight on left and right neighbour x uniform"
    )
    for i, layer in enumerate(report["layers"]):
        cells = [
            f"{e:.2f} {lf:4.1f}x {r:4.1f}x"
            for e, lf, r in zip(layer["entropy"], layer["left"], layer["right"])
        ]
        print(f"layer {i}: " + " | ".join(cells))
    print(
        f"position table: cosine of neighbours {report['position_cos_1']:.2f}, "
        f"10 apart {report['position_cos_10']:.2f}"
    )


if __name__ == "__main__":
    main()
