"""A/B of roberta/onednn.py's four choices on the whole model: the layers' linears on torch's fp32
GEMM or oneDNN's, the FFN's GELU fused into its first matmul or not.

In one process, taking turns batch by batch, on the same weights (roberta-base sizes, random) and
benchmarks/speed.py's inputs: workload A (lognormal lengths, batches of 32) and B (8 x 128). Prints
each variant's real tokens per second and which one `use_onednn` picks here (the probe, whose
ratios it prints too). It shows what the probe of single matmuls cannot: whether a choice pays in
the model, where the two libraries' kernels run one after the other.

    python benchmarks/onednn_choice.py              # about 3 minutes on 2 cores
    python benchmarks/onednn_choice.py --batches 4 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402

from roberta import onednn  # noqa: E402
from roberta.model import RobertaModel  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--batches", type=int, default=8, help="A's first N batches of 32, and B N times (default 8)"
    )
    p.add_argument("--rounds", type=int, default=3, help="passes over the batches (default 3)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not onednn.available():
        sys.exit("this torch has no oneDNN linear: nothing to choose")
    config = speed.preset("base")
    workloads = {
        "A": speed.batches(speed.lengths_a(config, quick=False)[: 32 * args.batches], 32, config.vocab_size),
        "B": [speed.padded([128] * 8, config.vocab_size, seed=99)] * args.batches,
    }
    torch.manual_seed(0)
    base = RobertaModel(config).eval()
    variants = {
        (plain, gelu): onednn.use_onednn(copy.deepcopy(base), plain=plain, gelu=gelu)
        for plain in (False, True)
        for gelu in (False, True)
    }
    plain, gelu = onednn.onednn_speedup(config.hidden_size, config.intermediate_size)
    print(
        f"probe: oneDNN {plain:.2f}x torch's default on a layer's matmuls, the GELU fused {gelu:.2f}x "
        f"the separate pass; use_onednn picks plain={onednn.chosen()[0]}, gelu={onednn.chosen()[1]}"
    )
    print(f"real tokens/s, {torch.get_num_threads()} threads, the variants taking turns on each batch")
    print(f"{'layers':8} {'GELU':7} " + " ".join(f"{w:>8}" for w in workloads))
    seconds = {(v, w): 0.0 for v in variants for w in workloads}
    with torch.inference_mode():
        for w, data in workloads.items():
            for model in variants.values():  # warm-up
                model(*data[0])
            for r in range(args.rounds):
                for i, (ids, mask) in enumerate(data):
                    order = list(variants) if (i + r) % 2 else list(variants)[::-1]
                    for v in order:
                        start = time.perf_counter()
                        variants[v](ids, mask)
                        seconds[v, w] += time.perf_counter() - start
    real = {w: args.rounds * sum(int(m.sum()) for _, m in data) for w, data in workloads.items()}
    for plain, gelu in variants:
        rates = " ".join(f"{real[w] / seconds[(plain, gelu), w]:8.0f}" for w in workloads)
        print(f"{'oneDNN' if plain else 'torch':8} {'fused' if gelu else 'apart':7} {rates}")


if __name__ == "__main__":
    main()
