"""A/B of `torch.compile` on our model: eager vs compiled, same weights, same batches, one process.

`roberta pretrain/finetune --compile` (TrainConfig.compile) wraps the model in `torch.compile`. The
unpadding and per-sequence attention stay eager (see roberta/packing.py); the dense layers between them
are compiled once for any number of tokens. This measures what that buys, with speed.py's workloads:
  A  inference, batches of 32 texts with lognormal lengths (real tokens/s);
  C  a sequence-classification training step, 16 such texts per batch;
  D  an MLM training step on packed 128-token blocks, 15% masked (sparse logits).
Compilation is timed on its own: the first batches of each shape family, until no new graphs appear.
Then eager and compiled take turns on the remaining batches; medians are compared.

    python benchmarks/compile.py                  # base sizes, CPU, ~10 minutes on 2 cores
    python benchmarks/compile.py --config small
    python benchmarks/compile.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import speed  # benchmarks/speed.py: the workloads and the timing helpers
import torch


def measure(name: str, eager, compiled, items: list, warm: int, device: str) -> dict[str, float]:
    """eager/compiled: fn(item). The first `warm` items compile; the rest are timed in turns."""
    t = time.perf_counter()
    for item in items[:warm]:
        compiled(item)
    speed.sync(device)
    compile_s = time.perf_counter() - t
    eager(items[0])  # eager warm-up
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for item in items[warm:]:
        for label, fn in (("eager", eager), ("compiled", compiled)):
            speed.sync(device)
            t = time.perf_counter()
            fn(item)
            speed.sync(device)
            times[label].append(time.perf_counter() - t)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"{name}: eager {e * 1e3:,.0f} ms, compiled {c * 1e3:,.0f} ms per batch, {e / c:.2f}x; "
          f"compiling took {compile_s:.0f} s", flush=True)  # fmt: skip
    return {"eager_ms": e * 1e3, "compiled_ms": c * 1e3, "speedup": e / c, "compile_s": compile_s}


def train_step(model, optimizer, args, extra: dict):
    def step(batch: dict) -> None:
        batch = {k: v.to(args.device) for k, v in batch.items()}
        with speed.autocast(args):
            loss = model(**batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=["base", "small"], default="base")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # refused before any work
        sys.exit(
            f"compile.py: --device {args.device} needs a GPU, and torch {torch.__version__} sees none here"
        )
    args.quick = False
    torch.manual_seed(0)
    config = speed.preset(args.config)
    print(
        f"{args.config}, {args.device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification
    from roberta.model import RobertaModel

    # A: inference. Batches 0 and 1 have different shapes: the static graph, then the dynamic one.
    model = RobertaModel(config, add_pooler=False).to(args.device).eval()
    compiled = torch.compile(model)
    a = speed.batches(speed.lengths_a(config, quick=False)[:320], 32, config.vocab_size)

    def infer(m):
        def run(batch):
            ids, mask = (t.to(args.device) for t in batch)
            with torch.inference_mode(), speed.autocast(args):
                return m(ids, mask).last_hidden_state

        return run

    measure("A inference (32 texts)", infer(model), infer(compiled), a, warm=3, device=args.device)

    # C and D: training steps, one model and optimizer each, eager and compiled taking turns.
    for name, cls, data, extra in (
        ("C fine-tuning step (16 texts)", RobertaForSequenceClassification, speed.c_data(config, False), {}),
        ("D MLM step (packed blocks)", RobertaForMaskedLM, speed.d_data(config, False), {"sparse_logits": True}),
    ):  # fmt: skip
        model = cls(config).to(args.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        eager, compiled = (
            train_step(model, optimizer, args, extra),
            train_step(torch.compile(model), optimizer, args, extra),
        )
        measure(name, eager, compiled, data, warm=3, device=args.device)


if __name__ == "__main__":
    main()
