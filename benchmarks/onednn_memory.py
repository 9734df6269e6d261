"""Peak memory of the oneDNN fp32 path under varied batches, with and without its row rounding.

oneDNN builds and caches a kernel per input shape, so a server whose every batch has a new number
of tokens would hold one per size it has seen; `roberta/onednn.py` rounds row counts up to a
multiple of ROW_STEP to keep them few. This embeds `--batches` random batches (1-32 texts of 3-60
words, seed 0) with the built-in model in a fresh process per setting (torch's default GEMM,
oneDNN rounded, oneDNN unrounded: ROW_STEP 1) and prints each one's peak RSS.

    python benchmarks/onednn_memory.py              # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "torch's default": "torch",
    "oneDNN, rows rounded": "rounded",
    "oneDNN, rows not rounded": "unrounded",
}
WORDS = "the a film gripping dull slow story actor plot scene of and".split()


def worker(setting: str, batches: int) -> None:
    sys.path.insert(0, str(ROOT))
    import roberta.onednn as onednn
    from roberta.tasks import Embedder

    if setting == "torch":
        onednn.MIN_SPEEDUP = float("inf")  # the probe never picks oneDNN
    elif setting == "unrounded":
        onednn.ROW_STEP = 1
    embedder = Embedder.from_pretrained("roberta-small-books", device="cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = random.Random(0)
    for _ in range(batches):
        texts = [" ".join(rng.choices(WORDS, k=rng.randint(3, 60))) for _ in range(rng.randint(1, 32))]
        embedder.embed(texts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    on = type(embedder.model.encoder.layers[0].ffn.fc1).__name__
    print(f"{loaded:.0f} {peak:.0f} {on}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.batches)
    print(f"{args.batches} varied batches of the built-in model, peak RSS (MiB):")
    for name, setting in SETTINGS.items():
        cmd = [sys.executable, __file__, "--worker", setting, "--batches", str(args.batches)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        print(f"  {name:26} after loading {out[0]:>5}, after the batches {out[1]:>5}  ({out[2]})")


if __name__ == "__main__":
    main()
