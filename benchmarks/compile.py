"""A/B of `torch.compile` on our model: eager vs compiled, same weights, same batches, one process.

`roberta pretrain/finetune --compile` (TrainConfig.compile) wraps the model in `torch.compile`. The
unpadding and per-sequence attention stay eager (see roberta/packing.py); the dense layers between them
are compiled once for any number of tokens. This measures what that buys, with speed.py's workloads:
  A  inference, batches of 32 texts with lognormal lengths (real tokens/s);
  C  a sequence-classification training step, 16 such texts per batch;
  D  an MLM training step on packed 128-token blocks, 15% masked (sparse logits).
Compilation is timed on its own: the first batches of each shape family, until no new graphs appear.
Then eager and compiled take turns on the remaining batches; medians are compared.

  B  inference, fixed shape: batches of 8 x 128 real tokens (no padding: one graph for the model).
Inference also prints the largest difference of the compiled model's last hidden state from the
eager one's on the first batch. `--mode` is torch.compile's (e.g. max-autotune, whose CPU GEMM
templates fuse the bias, GELU and residual into the matmul); `--freezing` turns on inductor's
freezing (weights as constants: inference only, A and B), which its oneDNN and int8 lowerings need;
`--dtype int8` compiles our int8 model (roberta/quantize.py) for A and B.

    python benchmarks/compile.py                  # base sizes, CPU, ~10 minutes on 2 cores
    python benchmarks/compile.py --config small
    python benchmarks/compile.py --workloads AB --mode max-autotune --freezing
    python benchmarks/compile.py --workloads B --dtype int8 --freezing
    python benchmarks/compile.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import speed  # benchmarks/speed.py: the workloads and the timing helpers
import torch


def measure(name: str, eager, compiled, items: list, warm: int, device: str) -> dict[str, float]:
    """eager/compiled: fn(item), for inference returning the last hidden state. The first `warm`
    items compile; the rest are timed in turns."""
    t = time.perf_counter()
    try:
        for item in items[:warm]:
            compiled(item)
    except Exception as e:  # e.g. an inductor lowering that refuses this graph: a result, not a crash
        reason = next(iter(str(e).strip().splitlines()), "")  # the message's first line
        print(f"{name}: torch.compile failed: {type(e).__name__} {reason}".rstrip(), flush=True)
        return {"failed": f"{type(e).__name__}: {reason}"}
    speed.sync(device)
    compile_s = time.perf_counter() - t
    first = eager(items[0])  # eager warm-up
    diff = None
    if first is not None:  # inference: the compiled graph's numbers against eager's
        diff = float((compiled(items[0]) - first).abs().max())
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for item in items[warm:]:
        for label, fn in (("eager", eager), ("compiled", compiled)):
            speed.sync(device)
            t = time.perf_counter()
            fn(item)
            speed.sync(device)
            times[label].append(time.perf_counter() - t)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    differs = "" if diff is None else f"; max |compiled - eager| {diff:.1e}"
    print(f"{name}: eager {e * 1e3:,.0f} ms, compiled {c * 1e3:,.0f} ms per batch, {e / c:.2f}x; "
          f"compiling took {compile_s:.0f} s{differs}", flush=True)  # fmt: skip
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
    p.add_argument(
        "--dtype", choices=["fp32", "bf16", "int8"], default="fp32", help="bf16: autocast; int8: A, B"
    )
    p.add_argument("--workloads", default="ACD", type=str.upper, help="which of A B C D (default ACD)")
    p.add_argument("--mode", default=None, help="torch.compile's mode (default: its default)")
    p.add_argument("--freezing", action="store_true", help="inductor's freezing (inference: A, B)")
    args = p.parse_args()
    training = [w for w in "CD" if w in args.workloads]
    if training and (args.freezing or args.dtype == "int8"):
        sys.exit(
            f"compile.py: --freezing and --dtype int8 are for inference (A, B), not {', '.join(training)}"
        )
    if args.device.startswith("cuda") and not torch.cuda.is_available():  # refused before any work
        sys.exit(
            f"compile.py: --device {args.device} needs a GPU, and torch {torch.__version__} sees none here"
        )
    args.quick = False
    torch.manual_seed(0)
    config = speed.preset(args.config)
    if args.freezing:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
    compile_model = functools.partial(torch.compile, mode=args.mode)
    print(
        f"{args.config}, {args.device}, {args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"mode {args.mode or 'default'}{', freezing' if args.freezing else ''}; CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"command: python benchmarks/compile.py {' '.join(sys.argv[1:])}".rstrip())
    from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification
    from roberta.model import RobertaModel
    from roberta.quantize import quantize_int8

    # A and B: inference. A's batches 0 and 1 have different shapes: the static graph, then the dynamic one.
    model = RobertaModel(config, add_pooler=False).to(args.device).eval()
    compiled = compile_model(model)

    def infer(m):
        def run(batch):
            ids, mask = (t.to(args.device) for t in batch)
            with torch.inference_mode(), speed.autocast(args):
                return m(ids, mask).last_hidden_state

        return run

    # int8: one eager forward first, as the int8 linears prepack their weights at the first call and
    # inductor's int8 lowering wants the packed weights as constants of the graph
    if args.dtype == "int8":
        quantize_int8(model)
        infer(model)(speed.padded([16], config.vocab_size, seed=0))

    if "A" in args.workloads:
        a = speed.batches(speed.lengths_a(config, quick=False)[:320], 32, config.vocab_size)
        measure("A inference (32 texts)", infer(model), infer(compiled), a, warm=3, device=args.device)
    if "B" in args.workloads:
        b = [speed.padded([128] * 8, config.vocab_size, seed=i) for i in range(10)]
        measure("B inference (8 x 128)", infer(model), infer(compiled), b, warm=2, device=args.device)

    # C and D: training steps, one model and optimizer each, eager and compiled taking turns.
    for name, cls, data, extra in (
        ("C fine-tuning step (16 texts)", RobertaForSequenceClassification, speed.c_data(config, False), {}),
        ("D MLM step (packed blocks)", RobertaForMaskedLM, speed.d_data(config, False), {"sparse_logits": True}),
    ):  # fmt: skip
        if name[0] not in args.workloads:
            continue
        model = cls(config).to(args.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        eager, compiled = (
            train_step(model, optimizer, args, extra),
            train_step(compile_model(model), optimizer, args, extra),
        )
        measure(name, eager, compiled, data, warm=3, device=args.device)


if __name__ == "__main__":
    main()
