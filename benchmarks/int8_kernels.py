"""The int8 GEMM kernels `roberta.quantize` can use, timed against fp32 on the running CPU.

`roberta.quantize.int8_kernel` picks one from the CPU's flags (oneDNN on AMX tiles, oneDNN with u8
inputs on VNNI, oneDNN with 7-bit weights on AVX2 only; torch._int_mm is timed beside them). This times each of them, and fp32 `F.linear`,
at roberta-base's projection shapes (A's largest batch of real tokens and one 128-token sequence),
the median of 7 calls each, and checks each kernel's result against exact integer arithmetic. A kernel whose
weight range this CPU cannot sum exactly (onednn-amx without AMX) is timed but marked "inexact";
one that takes seconds (oneDNN's s8-input kernels on an AMD EPYC with VNNI: its reference code) is
timed once. Each kernel is timed on its own input (u8 for onednn-vnni, converted beforehand).

    python benchmarks/int8_kernels.py              # seconds; --threads N
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from roberta.quantize import (
    KERNEL_QMAX,
    U8_KERNELS,
    Int8Linear,
    cpu_features,
    int8_kernel,
    quantize_rows,
    to_u8,
)

SHAPES = [  # (tokens, in, out): QKV, Wᴼ, FFN in, FFN out
    (1331, 768, 2304),
    (1331, 768, 768),
    (1331, 768, 3072),
    (1331, 3072, 768),
    (128, 768, 3072),
]
ROUNDS = 7


SLOW_S = 0.5  # a first call slower than this is a reference (unvectorised) kernel: timed once


def median_s(fn, *args, rounds: int = ROUNDS) -> tuple[float, object]:
    """(median seconds of `rounds` calls after a warm-up, the last result); where the warm-up
    alone takes over SLOW_S, its time (oneDNN without a fast int8 kernel for this CPU: seconds)."""
    t = time.perf_counter()
    out = fn(*args)  # warm-up: oneDNN packs its weight at the first call
    first = time.perf_counter() - t
    if first > SLOW_S:
        return first, out
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    flags = sorted(f for f in cpu_features() if "amx" in f or "vnni" in f or "avx512" in f or f == "avx2")
    print(f"CPU flags: {' '.join(flags)}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"threads {args.threads}; the kernel chosen here: {int8_kernel()}")
    print(f"{'M x K x N':>18} {'fp32 GFLOP/s':>13} " + " ".join(f"{k + ' GOP/s':>17}" for k in KERNEL_QMAX))
    for m, k, n in SHAPES:
        x, linear = torch.randn(m, k), torch.nn.Linear(k, n, bias=False)
        x_q, _ = quantize_rows(x)
        flops = 2 * m * k * n
        fp32 = flops / median_s(F.linear, x, linear.weight)[0] / 1e9
        row = [f"{f'{m} x {k} x {n}':>18}", f"{fp32:13.0f}"]
        for kernel in KERNEL_QMAX:
            q = Int8Linear.from_linear(linear, kernel)
            seconds, y = median_s(q.matmul, to_u8(x_q) if kernel in U8_KERNELS else x_q)  # its own input
            rate = flops / seconds / 1e9
            exact = (x_q.double() @ q.weight.double().t()) * q.scale.double()
            ok = torch.allclose(y.double(), exact, rtol=1e-6, atol=0)
            row.append(f"{rate:9.1f}" if rate < 10 else f"{rate:9.0f}")
            row[-1] += f"{'' if ok else ' inexact':>8}"
        print(" ".join(row), flush=True)


if __name__ == "__main__":
    main()
