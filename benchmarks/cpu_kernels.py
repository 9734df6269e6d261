"""A/B of roberta/kernels.py's compiled CPU ops against the torch ops they replace, in one process.

(Not named kernels.py: benchmarks/ is on the scripts' import path, and transformers imports a
package of that name where one is found.)

In one process, taking turns batch by batch on the same weights and inputs (roberta-base sizes,
random weights, speed.py's workloads):
  fp32 A, B   inference in fp32: a packed batch's attention in one kernel call and each block's
              end (bias + GELU, bias + residual + LayerNorm) in one pass, or torch's ops (SDPA per
              group of similar lengths, addmm, GELU, LayerNorm); the largest difference is printed;
  attention   the attention alone, roberta-base's 12 heads of 64: the kernel against one SDPA
              call on equal lengths (16 to 512 tokens, 2,048 tokens a batch), and against
              packing.py's SDPA calls per group on A's batches;
  int8 A, B   inference of the int8 model (roberta/quantize.py), its input rows quantized by the
              kernel or by torch's ops; the outputs must be equal, bit for bit;
  C, D        a sequence-classification and an MLM training step (AdamW), dropout by the kernel
              or by torch (F.dropout, and F.scaled_dot_product_attention's own for the weights).
Prints each side's median time and the ratio, with the CPU and the kernels' instruction set.

    python benchmarks/cpu_kernels.py                 # about 6 minutes on 2 cores
    python benchmarks/cpu_kernels.py --out benchmarks/results/cpu-kernels-amx.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402

from roberta import kernels, model, quantize  # noqa: E402
from roberta.config import RobertaConfig  # noqa: E402
from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification  # noqa: E402
from roberta.model import RobertaModel  # noqa: E402

KERNEL_DROPOUT = (kernels.dropout, kernels.scaled_dot_product_attention)
KERNEL_INFERENCE = (kernels.attention_ops, model.fused_ops)


def torch_dropout(x, p, training=True):
    return F.dropout(x, p, training)


def torch_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False):
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
    )


def use_kernels(on: bool, kinds: tuple[str, ...] = ("quantize", "dropout", "inference")) -> None:
    """The kernels of these kinds on, or torch's ops in their place (the two paths of the library);
    the other kinds' kernels stay on."""
    quantize.fused_ops = FUSED_OPS if on or "quantize" not in kinds else (lambda x: None)
    if on or "dropout" not in kinds:
        kernels.dropout, kernels.scaled_dot_product_attention = KERNEL_DROPOUT
    else:
        kernels.dropout, kernels.scaled_dot_product_attention = torch_dropout, torch_attention
    if on or "inference" not in kinds:
        kernels.attention_ops, model.fused_ops = KERNEL_INFERENCE
    else:
        kernels.attention_ops, model.fused_ops = (lambda *args: None), (lambda *args: None)


FUSED_OPS = quantize.fused_ops


def turns(run, units, rounds: int, kinds: tuple[str, ...]) -> dict[str, float]:
    """Median seconds of run(unit) over the units, per side (the `kinds` of kernels on, or torch's
    ops in their place), the sides taking turns unit by unit."""
    times: dict[str, list[float]] = {"kernels": [], "torch": []}
    for r in range(rounds + 1):  # the first round warms up
        total = {"kernels": 0.0, "torch": 0.0}
        for unit in units:
            for side in ("kernels", "torch") if r % 2 else ("torch", "kernels"):
                use_kernels(side == "kernels", kinds)
                start = time.perf_counter()
                run(unit)
                total[side] += time.perf_counter() - start
        if r:
            for side in times:
                times[side].append(total[side])
    use_kernels(True)
    return {side: statistics.median(t) for side, t in times.items()}


def line(name: str, unit: str, t: dict[str, float], scale: float = 1e3) -> str:
    return (
        f"{name}: kernels {t['kernels'] * scale:,.0f} {unit}, torch's ops {t['torch'] * scale:,.0f} {unit}, "
        f"{t['torch'] / t['kernels']:.3f}x"
    )


def attention_alone(a: list, rounds: int) -> list[str]:
    """varlen_attention against SDPA (equal lengths) and packing.py's grouped SDPA (A's batches)."""
    from roberta.packing import Packing, grouped_attention

    C, heads = 768, 12
    g = torch.Generator().manual_seed(0)

    def best(kernel, torch_ops, reps: int) -> dict[str, float]:
        times: dict[str, list[float]] = {"kernels": [], "torch": []}
        for r in range(reps):
            for side, fn in (("kernels", kernel), ("torch", torch_ops))[:: 1 if r % 2 else -1]:
                start = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - start)
        return {side: min(t) for side, t in times.items()}

    def equal_lengths(L: int) -> dict[str, float]:
        B = 2048 // L
        qkv = torch.randn(B * L, 3 * C, generator=g)
        q, k, v = qkv.chunk(3, dim=1)  # (B * L, C) each, rows 3C apart
        bounds = torch.tensor([[b * L, L, b * L, L] for b in range(B)])
        heads4 = qkv.view(B, L, 3, heads, C // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, L, hs)
        return best(
            lambda: kernels.varlen_attention(q, k, v, bounds, heads, B * L),
            lambda: F.scaled_dot_product_attention(*heads4.unbind(0)),
            10 * rounds,
        )

    def a_batch(mask: torch.Tensor) -> dict[str, float]:
        p = Packing.from_mask(mask.bool(), slots=False)
        qkv = torch.randn(p.num_rows, 3, heads, C // heads, generator=g)
        flat = qkv.view(p.num_rows, 3 * C)
        return best(
            lambda: kernels.varlen_attention(*flat.chunk(3, dim=1), p.bounds, heads, p.num_rows),
            lambda: grouped_attention(qkv, None, p.attention_plan),
            4 * rounds,
        )

    def text(name: str, t: dict[str, float]) -> str:
        return f"{name}: kernel {t['kernels'] * 1e3:.2f} ms, SDPA {t['torch'] * 1e3:.2f} ms, {t['torch'] / t['kernels']:.2f}x"

    lines = []
    with torch.inference_mode():
        for L in (16, 32, 64, 128, 256, 512):
            lines.append(text(f"attention, {2048 // L} sequences of {L} (one SDPA call)", equal_lengths(L)))
            print(lines[-1], flush=True)
        per_batch = [a_batch(mask) for _, mask in a]
        total = {side: sum(t[side] for t in per_batch) for side in ("kernels", "torch")}
        lines.append(text(f"attention, A's {len(a)} batches (packing.py's SDPA calls per group)", total))
        print(lines[-1], flush=True)
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per comparison (default 5)")
    p.add_argument("--out", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    ops = kernels.ops()
    if ops is None:
        raise SystemExit(f"the kernels are not built here: {kernels.unavailable_reason()}")
    m = speed.machine()
    lines = [
        f"roberta/kernels.py's ops ({ops.isa()}) against torch's, roberta-base sizes, random weights, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        f"CPU: {m['cpu']}; torch CPU capability {m['torch_capability']}; int8 kernel {m['int8_kernel']}",
        f"command: python benchmarks/cpu_kernels.py --rounds {args.rounds}",
    ]
    print("\n".join(lines), flush=True)
    config = RobertaConfig()
    torch.manual_seed(0)
    fp32 = RobertaModel(config, add_pooler=False).eval()
    int8 = quantize.quantize_int8(RobertaModel(config, add_pooler=False))
    a = speed.batches(speed.lengths_a(config, quick=False), 32, config.vocab_size)[:8]
    b = speed.padded([128] * 8, config.vocab_size, seed=99)
    report = attention_alone(a, args.rounds)
    for name, encoder, kinds in (("fp32", fp32, ("inference",)), ("int8", int8, ("quantize",))):

        def encode(batch, encoder=encoder):
            ids, mask = batch
            return encoder(ids, mask, subset_mask=mask.bool()).last_hidden_state

        with torch.inference_mode():
            use_kernels(True)
            fast = [encode(x) for x in (a[0], b)]
            use_kernels(False, kinds)
            slow = [encode(x) for x in (a[0], b)]
            use_kernels(True)
            if name == "int8":  # the quantizers' codes equal the formulas': the same outputs
                report.append(f"int8 outputs equal bit for bit: {all(map(torch.equal, fast, slow))}")
            else:  # fp32 sums in another order
                diff = max(float((x - y).abs().max()) for x, y in zip(fast, slow))
                report.append(f"fp32 outputs' largest difference: {diff:.1e}")
            print(report[-1], flush=True)
            t = turns(encode, a, args.rounds, kinds)
            report.append(line(f"{name} A ({len(a)} batches of 32 texts)", "ms", t))
            print(report[-1], flush=True)
            t = turns(encode, [b] * 3, args.rounds, kinds)
            report.append(line(f"{name} B (3 x 8x128)", "ms", t))
            print(report[-1], flush=True)
    for name, kind, data in (
        ("C classification step", "classifier", speed.c_data(config, quick=False)[:4]),
        ("D MLM step", "mlm", speed.d_data(config, quick=False)[:3]),
    ):
        torch.manual_seed(0)
        cls = RobertaForSequenceClassification if kind == "classifier" else RobertaForMaskedLM
        net = cls(config).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-5, fused=True)
        extra = {"sparse_logits": True} if kind == "mlm" else {}

        def step(batch, net=net, opt=opt, extra=extra):
            net(**batch, **extra).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        t = turns(step, data, args.rounds, ("dropout",))
        report.append(line(f"{name} ({len(data)} steps)", "ms", t))
        print(report[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines + report) + "\n")


if __name__ == "__main__":
    main()
