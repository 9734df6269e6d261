"""A/B of one fast path: the last layer run only where the head reads (`subset_mask`).

In one process, interleaved, on the same weights and batches (roberta-base sizes, random weights):
  C  a sequence-classification training step, 16 texts with workload A's lengths (the head reads <s>);
  D  an MLM training step on 8 packed 128-token blocks, 15% masked (the loss reads the masked tokens).
"full" runs every layer at every position and selects the rows afterwards, as before the fast path.
Prints the median step time of each. `python benchmarks/last_layer.py` takes ~2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import roberta.model as M
from roberta.config import RobertaConfig
from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification

ROUNDS = 5
subset_forward = M.Encoder.forward


def full_forward(
    self, x, attention_mask, output_hidden_states=False, output_attentions=False, subset_mask=None
):
    out = subset_forward(self, x, attention_mask, output_hidden_states, output_attentions)
    if subset_mask is not None:
        out.last_hidden_state = out.last_hidden_state[subset_mask]  # (M, C)
    return out


def time_steps(model: torch.nn.Module, batch: dict) -> dict[str, float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times: dict[str, list[float]] = {"subset": [], "full": []}
    for _ in range(ROUNDS + 1):  # the first round warms up
        for name, forward in (("subset", subset_forward), ("full", full_forward)):
            M.Encoder.forward = forward
            t = time.perf_counter()
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
            times[name].append(time.perf_counter() - t)
    M.Encoder.forward = subset_forward
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.parse_args(argv)  # no options: --help says what it does
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    config = RobertaConfig()  # roberta-base sizes
    lengths = torch.exp(torch.randn(16, generator=g) * 0.6 + 3.5).long().clamp(8, 256)
    T = int(lengths.max())
    ids = torch.randint(3, config.vocab_size - 1, (16, T), generator=g)
    mask = (torch.arange(T) < lengths[:, None]).long()
    clf = {
        "input_ids": ids.masked_fill(mask == 0, 1),
        "attention_mask": mask,
        "labels": torch.randint(0, 2, (16,)),
    }
    blocks = torch.randint(3, config.vocab_size - 1, (8, 128), generator=g)
    chosen = torch.rand(8, 128, generator=g) < 0.15
    mlm = {
        "input_ids": blocks.masked_fill(chosen, config.vocab_size - 1),
        "labels": blocks.masked_fill(~chosen, -100),
        "sparse_logits": True,
    }
    for name, model, batch in (
        ("C classification step", RobertaForSequenceClassification(config).train(), clf),
        ("D MLM step", RobertaForMaskedLM(config).train(), mlm),
    ):
        t = time_steps(model, batch)
        print(
            f"{name}: last layer where the head reads {t['subset']:.2f} s, full {t['full']:.2f} s, "
            f"{t['full'] / t['subset']:.2f}x"
        )


if __name__ == "__main__":
    main()
