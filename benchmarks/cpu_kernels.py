"""A/B of roberta/kernels.py's compiled CPU ops against the torch ops they replace, in one process.

(Not named kernels.py: benchmarks/ is on the scripts' import path, and transformers imports a
package of that name where one is found.)

In one process, taking turns batch by batch on the same weights and inputs (roberta-base sizes,
random weights, speed.py's workloads):
  fp32 A, B   inference in fp32: a packed batch's attention in one kernel call and each block's
              end (bias + GELU, bias + residual + LayerNorm) in one pass, or torch's ops (SDPA per
              group of similar lengths, addmm, GELU, LayerNorm); the largest difference is printed;
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
    report = []
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
