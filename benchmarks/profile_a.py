"""Where ours spends workload A's time beyond the GEMMs (or B's: `--workload B`): torch.profiler over
the workload's batches, each op's time summed into a few kinds of work, beside the GEMM-bound limit
measured in the same run.

The model is ours at roberta-base sizes with random weights (seed 0), fp32 (on oneDNN where it
pays, roberta/onednn.py) or `--dtype int8` (roberta/quantize.py), on A's inputs (benchmarks/speed.py:
lognormal lengths, batches of 32 in the drawn order, each padded to its longest; `--batches` of
them; B: speed.py's 8x128 batch, `--batches` times), asked for the real tokens' states as speed.py
asks it (`encode`). Each batch runs once unprofiled (warm-up), then once under the profiler; then,
unprofiled, the forward and the same GEMMs alone (speed.py's `limit_fn`) take turns batch by batch,
which says how far the forward is from its GEMMs.

Kinds (the op names of the profile that fall in each are printed under the table):
  GEMM               the projections and FFN matmuls (aten::addmm/mm, oneDNN's fp32 linear and int8 qlinear)
  attention          scaled_dot_product_attention and what it calls, per sequence
  bias/GELU/LayerNorm/residual   the elementwise passes around the GEMMs
  int8 (de)quantize  per-token absmax, scale, round, cast, u8 shift (or roberta/kernels.py's one op);
                     the dequantize+bias addcmul
  pack/unpack        index_select / index_copy / repeat_interleave of packing.py, Packing.from_mask
  other ops          every other op (views, splits, cat, embedding, ...)
  Python, outside ops  wall time of the forward not inside any op: the interpreter per layer

    python benchmarks/profile_a.py                  # fp32, 4 batches of A, 2 threads: about a minute
    python benchmarks/profile_a.py --dtype int8 --batches 8 --out benchmarks/results/cpu-profile-A-int8.txt
    python benchmarks/profile_a.py --dtype int8 --workload B --out benchmarks/results/cpu-profile-B-int8.txt
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402

KINDS = [  # (kind, substrings of op names), first match wins
    ("GEMM", ("aten::addmm", "aten::mm", "qlinear_pointwise", "aten::_int_mm", "mkldnn::_linear")),
    ("attention", ("roberta::varlen_attention", "scaled_dot_product", "flash_attention", "aten::bmm", "aten::baddbmm", "softmax")),
    ("int8 (de)quantize", ("roberta::quantize", "aten::amax", "aten::amin", "aten::round", "aten::div", "aten::_to_copy", "bitwise_xor",
                           "aten::addcmul", "aten::clamp", "aten::maximum", "aten::neg")),
    ("bias/GELU/LayerNorm/residual", ("aten::gelu", "layer_norm", "aten::add", "aten::mul", "roberta::bias_gelu")),
    ("pack/unpack", ("index_select", "index_copy", "repeat_interleave", "aten::nonzero", "argsort",
                     "aten::sort", "aten::cumsum", "aten::index", "aten::item", "_local_scalar_dense")),
]  # fmt: skip


def kind_of(name: str) -> str:
    return next((k for k, keys in KINDS if any(s in name for s in keys)), "other ops")


def encode(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The real tokens' states, (M, C): what speed.py asks ours for on A and B."""
    return model(ids, mask, subset_mask=mask.bool()).last_hidden_state


def profiled(model, data) -> tuple[float, dict[str, float], dict[str, dict[str, float]]]:
    """(wall seconds of the forwards, seconds per kind, {kind: {op: seconds}}) under the profiler."""
    with torch.inference_mode():
        for ids, mask in data:
            encode(model, ids, mask)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for ids, mask in data:
                encode(model, ids, mask)
            wall = time.perf_counter() - start
    kinds, ops = defaultdict(float), defaultdict(lambda: defaultdict(float))
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        kinds[kind_of(event.key)] += seconds
        ops[kind_of(event.key)][event.key] += seconds
    kinds["Python, outside ops"] = max(0.0, wall - sum(kinds.values()))
    return wall, dict(kinds), ops


def against_limit(model, engine: str, folder: Path, data, reps: int = 2) -> tuple[float, float]:
    """(forward seconds, GEMMs-alone seconds) over the batches, unprofiled, the two taking turns
    batch by batch (as in speed.py), so that a busy CPU slows both alike; best of `reps` rounds."""
    run = speed.limit_fn(engine, folder)
    best = [float("inf"), float("inf")]
    with torch.inference_mode():
        run(*data[0])
        for r in range(reps):
            spent = [0.0, 0.0]
            for k, (ids, mask) in enumerate(data):
                for which in (0, 1) if (k + r) % 2 == 0 else (1, 0):
                    start = time.perf_counter()
                    encode(model, ids, mask) if which == 0 else run(ids, mask)
                    spent[which] += time.perf_counter() - start
            best = [min(b, s) for b, s in zip(best, spent)]
    return best[0], best[1]


def report(
    args, wall: float, kinds: dict, ops: dict, limit: tuple[float, float], real: int, rows: int
) -> str:
    batch = "32" if args.workload == "A" else "8x128"
    lines = [
        f"profile of ours on workload {args.workload}: roberta-base, {args.dtype}, {torch.get_num_threads()} "
        f"threads, {args.batches} batches of {batch}, {real} real tokens ({rows} packed rows), torch {torch.__version__}",
        f"CPU: {speed.machine()['cpu']}, capability {torch.backends.cpu.get_cpu_capability()}; "
        f"load average {os.getloadavg()[0]:.2f}",
        f"command: python benchmarks/profile_a.py --dtype {args.dtype} --workload {args.workload} --batches {args.batches}",
        "",
        f"{'kind':32}{'seconds':>9}{'share':>8}",
    ]
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"{kind:32}{seconds:9.3f}{100 * seconds / wall:7.1f}%")
    lines.append(f"{'forward, wall':32}{wall:9.3f}{100.0:7.1f}%")
    forward_s, gemm_s = limit
    lines += [
        "",
        f"unprofiled, taking turns batch by batch with the same GEMMs alone (limit-{args.dtype}, as in "
        f"speed.py): forward {real / forward_s:,.0f} real tokens/s, GEMMs alone {real / gemm_s:,.0f}: "
        f"the forward at {100 * gemm_s / forward_s:.1f}% of its GEMM-only time",
        "",
        "largest ops of each kind (self time, s):",
    ]
    for kind in sorted(ops, key=lambda k: -kinds[k]):
        top = sorted(ops[kind].items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"  {kind}: " + ", ".join(f"{op} {s:.3f}" for op, s in top))
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--workload", choices=("A", "B"), default="A", help="speed.py's A (default) or B")
    p.add_argument(
        "--batches", type=int, default=4, help="A's first N batches of 32, or B's batch N times (default 4)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, help="also write the table here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import tempfile

    from roberta.model import RobertaModel
    from roberta.onednn import use_onednn
    from roberta.quantize import set_dtype

    config = speed.preset("base")
    if args.workload == "A":
        data = speed.batches(speed.lengths_a(config, quick=False)[: 32 * args.batches], 32, config.vocab_size)
    else:
        data = [speed.padded([128] * 8, config.vocab_size, seed=99)] * args.batches
    with tempfile.TemporaryDirectory(prefix="roberta-profile-") as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        RobertaModel(config).save_pretrained(folder)
        model = RobertaModel.from_pretrained(folder).eval()
        model = use_onednn(
            set_dtype(model, torch.int8 if args.dtype == "int8" else None)
        )  # as predictors load it
        wall, kinds, ops = profiled(model, data)
        limit = against_limit(model, f"limit-{args.dtype}", folder, data)
    real = sum(int(m.sum()) for _, m in data)
    rows = real  # no padding slots: only the real tokens' states are asked for (`encode`)
    text = report(args, wall, kinds, ops, limit, real, rows)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
