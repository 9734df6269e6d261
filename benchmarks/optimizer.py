"""The AdamW update of one training step: our training loop's fused AdamW vs torch's per-tensor loop.

`roberta.train.build_optimizer` builds torch's fused AdamW (the same update to ~1e-7, pinned by
tests/test_train.py). This times one `optimizer.step()` over a roberta-base classifier's parameters
(125M, random gradients) for each form, taking turns, and prints the medians.

    python benchmarks/optimizer.py                 # ~1 minute on 2 cores; --config small
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from roberta.config import RobertaConfig
from roberta.heads import RobertaForSequenceClassification
from roberta.train import TrainConfig, build_optimizer

ROUNDS = 5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["base", "small"], default="base")
    args = p.parse_args()
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(getattr(RobertaConfig, args.config)(num_labels=2))
    for param in model.parameters():
        param.grad = torch.randn_like(param) * 1e-3
    fused = build_optimizer(model, TrainConfig(out_dir="unused", max_steps=1, lr=1e-5))
    same = ("lr", "betas", "eps", "weight_decay")
    groups = [{**{k: g[k] for k in same}, "params": g["params"]} for g in fused.param_groups]
    per_tensor = torch.optim.AdamW(groups, foreach=False)
    times: dict[str, list[float]] = {"per-tensor": [], "fused": []}
    for _ in range(ROUNDS + 1):  # the first round warms up (state allocation)
        for name, opt in (("per-tensor", per_tensor), ("fused", fused)):
            t = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t)
    n = sum(param.numel() for param in model.parameters())
    loop, fast = (statistics.median(times[k][1:]) for k in ("per-tensor", "fused"))
    print(
        f"{args.config}, {n / 1e6:.0f}M parameters, {torch.get_num_threads()} threads: AdamW step "
        f"per-tensor {loop:.2f} s, fused (ours) {fast:.2f} s, {loop / fast:.1f}x"
    )


if __name__ == "__main__":
    main()
