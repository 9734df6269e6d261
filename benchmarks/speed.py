"""Speed, side by side: ours vs transformers (and onnxruntime, OpenVINO, CTranslate2 when installed),
and how close each comes to the machine's limit.

One run measures every engine on the same random weights (a transformers model saved to a
temporary folder, loaded by each engine) and the same inputs, and prints one table with the
ratio ours / transformers-sdpa, and each engine's share of the GEMM-bound limit.

Workloads (fixed seeds; ids are random tokens between <s> ... </s>, right padding):
  A  inference, realistic: 512 sequences (--quick: 64) with token lengths drawn from
     lognormal(mu=3.5, sigma=0.6), rounded, clipped to 8..256 (mean about 40; the small config
     clips to its 128 positions), handed over in batches of 32 in the drawn order, each padded to
     its longest, as a user would. Metric: real (non-padding) tokens per second. Ours is asked
     for the real tokens' states alone (`subset_mask` = the attention mask, as its embedder reads
     them): its layers then compute no padding position, as CTranslate2's, which skips padding;
     transformers' padded batch computes every position. (Asked for all (B, T) states, ours also
     carries one padding state per padded row through every layer: 2.5% more rows on A.)
  B  inference, fixed shape: a batch of 8 x 128 real tokens. Metric: median ms per batch.
  C  fine-tuning step, sequence classification (2 labels): batches of 16 with A's lengths.
     Metric: real tokens per second. (--quick: C, D and memory for ours and transformers-sdpa
     only, memory at inference only.)
  D  MLM pretraining step on packed 128-token blocks (8 per batch for base, 32 for small), 15% of
     positions masked. Ours uses sparse_logits=True (the LM head projects only the masked
     positions); transformers computes full logits, as it does. Metric: tokens per second.
  A step is forward, backward and the AdamW update, with the optimizer each library's trainer
  builds: transformers' Trainer default (torch's fused AdamW since torch 2.8, no weight decay) and
  ours `roberta.train.build_optimizer` (fused AdamW, decay except on biases and LayerNorm).
Inference runs under torch.inference_mode; training in train mode with dropout as configured.

The limit. The `limit-fp32`, `limit-int8` (and, beside ours-bf16, `limit-bf16`) columns are not
engines: they run only the layers' GEMMs (QKV, Wᴼ, FFN in and out, with our model's weights) on
each batch's real tokens: in fp32 at each matmul through the faster here of torch's default GEMM
and oneDNN's (`fastest_fp32`), in bf16 through torch's default, and through our int8 kernel
(roberta/quantize.py); taking their turn with the engines so that they see the same share of the CPU. Adding attention's FLOPs (QKᵀ and AV
per sequence, about 1% of A's and 3% of B's) at the fp32 rate they measured gives the GEMM-bound
limit of A and B, and the "% of the ... GEMM limit" rows each engine's share of it: 100% would be
an engine that spends no time outside those GEMMs, at the rate torch's GEMMs reach here.

How. Speed: all engines live in this process and take turns on each batch or step (the first
engine rotates), so that all see the same share of a busy CPU; every engine warms up first.
Memory: one fresh worker process per engine runs A's longest batch, B, two C steps on C's
longest batch and two D steps, and reports its peaks: RSS on CPU (weights included, the transient of
loading them excluded), max allocated on GPU. Accuracy: the largest difference of each engine's
last hidden state from transformers-sdpa's on A's first batch, at real positions.
On CPU `ours-int8` is our opt-in int8 inference (roberta/quantize.py) and `ctranslate2-int8`
CTranslate2's compute_type="int8"; `ours-bf16` our model with bf16 weights, run only where the
CPU has bf16 matmuls (AMX, AVX512_BF16: elsewhere bf16 is emulated and many times slower; the GEMM
lines say how much) or when named in --engines. None of them is fp32, so their max |diff| row says
what they cost. The header gives the CPU, its flags and torch's SIMD level; the lines at the end
the GEMM rates (the limits', and each layer matmul's in fp32, bf16 and int8 at A's mean batch) and
roberta-base's FFN block on one thread in fp32, in our int8, and in the int8 of torch's
quantize_dynamic and of torchao (each when present).

    python benchmarks/speed.py --quick                    # < 5 minutes on 2 idle cores
    python benchmarks/speed.py --quick --workloads AB --no-memory --engines ours,ctranslate2,limit-fp32
    python benchmarks/speed.py --config base --json out.json
    python benchmarks/speed.py --device cuda --dtype bf16 # bf16 autocast on GPU

Optional engines (pip install -c constraints.txt ..., or the `bench` extra): onnxruntime, openvino
(transformers' model converted by openvino.convert_model in the run), ctranslate2 (its converter).

A shared CPU makes absolute numbers low and noisy; the load average at the start and during the
run is printed, flagged "busy" above half the cores. The "per CPU-second" rows divide by this
process's CPU time instead of wall time: with --threads 1 that is the work each engine needed,
whatever share of the machine it got (with more threads it also counts threads spinning at barriers).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roberta import onednn, quantize  # noqa: E402
from roberta.config import RobertaConfig  # noqa: E402

REFERENCE = "transformers-sdpa"
TRAINABLE = ("transformers-sdpa", "ours", "transformers-eager")
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, for the GPU's model-FLOPs utilisation
LOADS: list[float] = []  # 1-minute load average, sampled while timing


# ---- workloads ---------------------------------------------------------------------------------


def lengths_a(config: RobertaConfig, quick: bool) -> list[int]:
    rng = np.random.default_rng(0)
    n = 64 if quick else 512
    lengths = np.clip(np.round(rng.lognormal(3.5, 0.6, n)), 8, min(256, config.max_length))
    return [int(x) for x in lengths]


def padded(lengths: list[int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids `<s> random </s>` right-padded with 1, and the mask (1 = real token)."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.ones(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab - 1, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
        mask[i, :n] = 1
    return ids, mask


def batches(lengths: list[int], size: int, vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [padded(lengths[i : i + size], vocab, seed=i) for i in range(0, len(lengths), size)]


def mlm_batch(n_blocks: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed 128-token blocks (no padding) with 15% masked: (ids, labels), labels -100 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab - 1, (n_blocks, 128), generator=g)
    chosen = torch.rand(n_blocks, 128, generator=g) < 0.15
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return ids.masked_fill(chosen, vocab - 1), labels  # vocab - 1 stands for <mask>


def c_data(config: RobertaConfig, quick: bool) -> list[dict[str, torch.Tensor]]:
    """C's batches: 16 sequences with A's lengths, labels 0/1; the first is the warm-up."""
    steps = 2 if quick else 10
    data = batches(lengths_a(config, quick)[: 16 * (steps + 1)], 16, config.vocab_size)
    return [{"input_ids": i, "attention_mask": m, "labels": torch.arange(len(i)) % 2} for i, m in data]


def d_data(config: RobertaConfig, quick: bool) -> list[dict[str, torch.Tensor]]:
    """D's batches of packed blocks; the first is the warm-up."""
    n_blocks = 8 if config.hidden_size >= 768 else 32
    steps = 1 if quick else 6
    data = [mlm_batch(n_blocks, config.vocab_size, seed=s) for s in range(steps + 1)]
    return [{"input_ids": ids, "labels": labels} for ids, labels in data]


# ---- engines -----------------------------------------------------------------------------------


def load_torch(engine: str, kind: str, folder: Path, device: str, num_labels: int = 2):
    """kind: "encoder" | "classifier" | "mlm". Returns a model on `device`, eval mode."""
    torch.manual_seed(0)  # fresh heads start alike
    if engine.startswith("ours"):
        from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification
        from roberta.model import RobertaModel

        cls = {
            "encoder": RobertaModel,
            "classifier": RobertaForSequenceClassification,
            "mlm": RobertaForMaskedLM,
        }
        extra = {"num_labels": num_labels} if kind == "classifier" else {}
        from roberta.quantize import set_dtype

        dtype = {"ours-bf16": torch.bfloat16, "ours-int8": torch.int8}.get(engine)
        model = cls[kind].from_pretrained(folder, device=device, **extra)
        if dtype:
            return set_dtype(model, dtype)
        return onednn.use_onednn(model) if kind == "encoder" else model  # inference as predictors load it
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cls = {
        "encoder": transformers.RobertaModel,
        "classifier": transformers.RobertaForSequenceClassification,
        "mlm": transformers.RobertaForMaskedLM,
    }
    extra = {"num_labels": num_labels} if kind == "classifier" else {}
    impl = engine.split("-")[1]
    return cls[kind].from_pretrained(folder, attn_implementation=impl, **extra).to(device).eval()


def encode_fn(engine: str, folder: Path, device: str):
    """A function (ids, mask) -> last hidden state (B, T, C) float32 on CPU, for inference
    (for the limit-* engines: the GEMMs alone, nothing returned)."""
    if engine == "onnxruntime":
        return onnxruntime_fn(folder)
    if engine == "openvino":
        return openvino_fn(folder)
    if engine.startswith("ctranslate2"):
        return ctranslate2_fn(folder, device, "int8" if engine.endswith("int8") else "float32")
    if engine in LIMITS:
        return limit_fn(engine, folder)
    model = load_torch(engine, "encoder", folder, device)
    is_ours = engine.startswith("ours")

    def run(ids, mask):
        ids, mask = ids.to(device), mask.to(device)
        if not is_ours:
            return model(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()  # (B, T): ours is asked for the real tokens' states alone (see A above)
        states = model(ids, mask, subset_mask=real).last_hidden_state  # (M, C)
        out = states.new_zeros(*real.shape, states.shape[-1])
        out[real] = states
        return out  # (B, T, C), zeros at padding

    return run


def trainer(engine: str, kind: str, folder: Path, args, data: list[dict]) -> Callable[[int], None]:
    """step(i): one AdamW step of engine's `kind` model on data[i]."""
    model = load_torch(engine, kind, folder, args.device).train()
    optimizer = training_optimizer(engine, model)
    extra = {"sparse_logits": True} if kind == "mlm" and engine.startswith("ours") else {}

    def step(i: int) -> None:
        batch = {k: v.to(args.device) for k, v in data[i].items()}
        with autocast(args):
            loss = model(**batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_optimizer(engine: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer each library's own trainer would build for this model (see the docstring)."""
    if engine.startswith("ours"):
        from roberta.train import TrainConfig, build_optimizer

        return build_optimizer(model, TrainConfig(out_dir="unused", lr=1e-5, max_steps=1))
    # transformers' TrainingArguments default, optim="adamw_torch_fused" (torch >= 2.8), decay 0.
    # (Its Trainer itself needs `accelerate`, which this benchmark does not install.)
    return torch.optim.AdamW(
        model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True
    )


class LastHidden(torch.nn.Module):
    """transformers' RobertaModel with positional (ids, mask) in and one tensor out: what graph
    exporters want."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def onnxruntime_fn(folder: Path):
    """transformers' RobertaModel exported to ONNX, optimised by onnxruntime's BERT fusions."""
    import onnxruntime as ort
    import transformers
    from onnxruntime.transformers.optimizer import optimize_model

    model = transformers.RobertaModel.from_pretrained(folder, attn_implementation="eager").eval()
    path, axes = folder / "model.onnx", {0: "batch", 1: "length"}
    torch.onnx.export(
        LastHidden(model).eval(), padded([12, 7], model.config.vocab_size, 0), str(path),
        input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes}, dynamo=False,
    )  # fmt: skip
    cfg = model.config
    optimize_model(str(path), "bert", cfg.num_attention_heads, cfg.hidden_size).save_model_to_file(str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the same threads as the torch engines
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(ids, mask):
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        return torch.from_numpy(session.run(["last_hidden_state"], feed)[0])

    return run


def openvino_fn(folder: Path):
    """transformers' RobertaModel converted by openvino.convert_model (traced from torch), fp32
    inference precision, dynamic batch and length, on the CPU plugin with the same threads."""
    import openvino as ov
    import transformers

    model = transformers.RobertaModel.from_pretrained(folder, attn_implementation="eager").eval()
    example = padded([12, 7], model.config.vocab_size, 0)
    shape = [(ov.PartialShape([-1, -1]), ov.Type.i64)] * 2
    with torch.no_grad():
        graph = ov.convert_model(LastHidden(model), example_input=example, input=shape)
    config = {
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    compiled = ov.Core().compile_model(graph, "CPU", config)

    def run(ids, mask):
        return torch.from_numpy(compiled([ids.numpy(), mask.numpy()])[0])

    return run


def ctranslate2_fn(folder: Path, device: str, compute_type: str = "float32"):
    """transformers' checkpoint converted to CTranslate2 (fp32 or int8 compute); it skips padding itself."""
    import ctranslate2

    out = folder / "ct2"
    if not out.exists():
        config = json.loads((folder / "config.json").read_text())
        write_placeholder_vocabulary(folder, config["vocab_size"])
        # CTranslate2's converter reads config.position_embedding_type, which transformers 5 no longer
        # writes; "absolute" is what it meant (learned positions)
        config.setdefault("position_embedding_type", "absolute")
        (folder / "config.json").write_text(json.dumps(config))
        ctranslate2.converters.TransformersConverter(str(folder)).convert(str(out))
    threads = torch.get_num_threads()  # the same threads as the torch engines
    encoder = ctranslate2.Encoder(str(out), device=device, compute_type=compute_type, intra_threads=threads)

    def run(ids, mask):
        seqs = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
        return torch.as_tensor(np.array(encoder.forward_batch(seqs).last_hidden_state))

    return run


def write_placeholder_vocabulary(folder: Path, vocab_size: int) -> None:
    """The converter copies a tokenizer's vocabulary; our ids are random, so any tokens will do:
    RoBERTa's specials at their ids and placeholders between."""
    special = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": vocab_size - 1}
    vocab = {**{f"t{i}": i for i in range(4, vocab_size - 1)}, **special}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


# ---- the limit: the model's own GEMMs alone, timed as if an engine ------------------------------

LIMITS = ("limit-fp32", "limit-int8", "limit-bf16")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def projections(config: RobertaConfig) -> list[tuple[str, int, int]]:
    """(name, in, out) of each matmul a Transformer layer does on every token."""
    C, F_ = config.hidden_size, config.intermediate_size
    return [("QKV", C, 3 * C), ("Wo", C, C), ("FFN in", C, F_), ("FFN out", F_, C)]


def encoder_flops(config: RobertaConfig, lengths: list[int]) -> tuple[float, float]:
    """(projection and FFN FLOPs, attention FLOPs) of the encoder on sequences of these real
    lengths, 2 per multiply-add: the first per token, QKᵀ and AV per pair of a sequence's tokens."""
    L, C = config.num_hidden_layers, config.hidden_size
    gemm = 2 * L * sum(i * o for _, i, o in projections(config)) * sum(lengths)
    return gemm, 4 * L * C * sum(n * n for n in lengths)


@functools.cache
def fastest_fp32(dim: int, hidden: int, rows: int = onednn.PROBE_ROWS) -> dict[tuple[int, int], str]:
    """{(in, out): "oneDNN" or "torch"} for each layer matmul at this size (hidden size `dim`, FFN
    size `hidden`: `onednn.layer_shapes`): the faster here of torch's default fp32 GEMM and
    oneDNN's (roberta/onednn.py) on `rows` tokens, by `onednn.paired_ratio`, so that limit-fp32 is
    this machine's limit and not one kernel's. Ours takes one kernel for all four (`onednn.chosen`);
    the limit may mix them."""
    out = dict.fromkeys(onednn.layer_shapes(dim, hidden), "torch")
    if not onednn.available():
        return out
    with torch.inference_mode():
        for k, n in out:
            x, w = torch.randn(rows, k), torch.randn(n, k) / k**0.5
            ratio = onednn.paired_ratio(lambda x=x, w=w: F.linear(x, w), lambda x=x, w=w: onednn.linear(x, w))
            out[k, n] = "oneDNN" if ratio > 1.0 else "torch"
    return out


def limit_fn(engine: str, folder: Path):
    """(ids, mask) -> None: only the batch's GEMMs, on its real tokens: every layer's QKV, Wᴼ and FFN
    matmuls with our model's weights, in fp32 (torch's default path) or through our int8 kernel
    (`Int8Linear.matmul`, the channel scale included), on random inputs; no bias, activation,
    normalisation, attention or copy. Its time is the floor the engines' time is compared with."""
    model = load_torch({"limit-fp32": "ours"}.get(engine, "ours-" + engine[6:]), "encoder", folder, "cpu")
    config, rows = model.config, 32 * model.config.max_length  # A's batches hold at most 32 sequences
    linears = [(x.attn.qkv, x.attn.out, x.ffn.fc1, x.ffn.fc2) for x in model.encoder.layers]
    C, F_ = config.hidden_size, config.intermediate_size
    if engine in ("limit-fp32", "limit-bf16"):
        dtype = torch.bfloat16 if engine == "limit-bf16" else torch.float32
        x, h = torch.randn(rows, C, dtype=dtype), torch.randn(rows, F_, dtype=dtype)
        matmul = lambda linear, src: F.linear(src, linear.weight)  # noqa: E731
        if engine == "limit-fp32":  # at each shape the faster of torch's two fp32 GEMMs here
            onednn_at = {shape for shape, kernel in fastest_fp32(C, F_).items() if kernel == "oneDNN"}

            def matmul(linear, src):
                if (linear.in_features, linear.out_features) in onednn_at:
                    return onednn.linear(src, linear.weight)
                return F.linear(src, linear.weight)
    else:
        x, h = (torch.randint(-127, 128, (rows, k), dtype=torch.int8) for k in (C, F_))
        if linears[0][0].kernel in quantize.U8_KERNELS:  # the kernel's own input: x_q + 128 as uint8
            x, h = quantize.to_u8(x), quantize.to_u8(h)
        matmul = lambda linear, src: linear.matmul(src)  # noqa: E731

    def run(ids, mask):
        n = int(mask.sum())
        for qkv, out, fc1, fc2 in linears:
            for linear, src in ((qkv, x), (out, x), (fc1, x), (fc2, h)):
                matmul(linear, src[:n])

    return run


def add_limits(res: dict[str, dict], config: RobertaConfig, lengths: dict[str, list[int]]) -> None:
    """Turn the limit-* engines' GEMM times into the GEMM-bound limit of A and B, in place: their time
    plus attention's FLOPs at the fp32 GEMM rate they measured; each engine's share of that limit
    ("pct_fp32_*"; int8 engines also "pct_int8_*"), and the GEMM rates."""
    for w, n in lengths.items():
        gemm, attention = encoder_flops(config, n)
        key = "A" if w == "A" else "B"
        if "limit-fp32" not in res or key not in res["limit-fp32"]:
            continue
        fp32_s = sum(n) / res["limit-fp32"][key] if w == "A" else res["limit-fp32"][key] / 1e3
        rate = gemm / fp32_s
        for limit in [e for e in LIMITS if key in res.get(e, {})]:
            gemm_s = sum(n) / res[limit][key] if w == "A" else res[limit][key] / 1e3
            res[limit][f"gemm_rate_{key}"] = gemm / gemm_s
            total = gemm_s + attention / rate
            res[limit][key] = sum(n) / total if w == "A" else 1e3 * total
            res[limit].pop(f"{key}_cpu", None)
            for e in res:
                if e not in LIMITS and key in res[e] and (limit == "limit-fp32" or limit[6:] in e):
                    ratio = res[e][key] / res[limit][key] if w == "A" else res[limit][key] / res[e][key]
                    res[e][f"pct_{limit[6:]}_{key}"] = ratio


def machine() -> dict:
    """The CPU this run measures: its name, which of CPU_FLAGS it has, torch's SIMD level, our
    int8 kernel there (roberta/quantize.py) and its quantizer (roberta/kernels.py's compiled one,
    or torch's ops and why), and the load average at the start."""
    from roberta import kernels
    from roberta.quantize import cpu_features, int8_kernel

    ops = kernels.ops()
    quantizer = (
        f"compiled ({ops.isa()})" if ops is not None else f"torch's ops ({kernels.unavailable_reason()})"
    )

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown"
    return {
        "cpu": name, "cpu_count": os.cpu_count(), "flags": {f: f in cpu_features() for f in CPU_FLAGS},
        "torch_capability": torch.backends.cpu.get_cpu_capability(), "int8_kernel": int8_kernel(),
        "int8_quantizer": quantizer, "onednn_speedup": list(onednn.onednn_speedup()), "onednn_chosen": list(onednn.chosen()),
        "load_average_at_start": list(os.getloadavg()),
    }  # fmt: skip


def gemm_rates(config: RobertaConfig, rows: int, reps: int = 3) -> dict[str, dict[str, float]]:
    """GFLOP/s (int8: GOP/s) of each layer matmul (`projections`) on `rows` tokens with this run's
    threads: fp32 (torch default), bf16 (torch default) and int8 (our kernel); best wall time of
    `reps` (bf16: of 1 where it is 5x slower than fp32: it is then only a measure of how much), the
    dtypes taking turns."""
    from roberta.quantize import Int8Linear

    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, k, n in projections(config):
            lin = torch.nn.Linear(k, n)
            x, q = torch.randn(rows, k), Int8Linear.from_linear(lin)
            xb, wb, x8 = (
                x.bfloat16(),
                lin.weight.detach().bfloat16(),
                torch.randint(-127, 128, (rows, k), dtype=torch.int8),
            )
            paths = {
                "fp32": lambda x=x, lin=lin: F.linear(x, lin.weight),
                "fp32-onednn": lambda x=x, lin=lin: onednn.linear(x, lin.weight),
                "bf16": lambda xb=xb, wb=wb: F.linear(xb, wb),
                "int8": lambda q=q, x8=x8: q.matmul(x8),
            }  # fmt: skip
            best = dict.fromkeys(paths, float("inf"))
            for r in range(reps + 1):  # the first turn warms up
                for dtype, fn in paths.items():
                    if dtype == "bf16" and r > 1 and best["bf16"] > 5 * best["fp32"]:
                        continue
                    start = time.perf_counter()
                    fn()
                    best[dtype] = min(best[dtype], time.perf_counter() - start) if r else best[dtype]
            out[f"{name} {rows}x{k} @ {k}x{n}"] = {d: 2 * rows * k * n / t / 1e9 for d, t in best.items()}
    return out


# ---- timing


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def autocast(args):
    enabled = args.dtype == "bf16"
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


def timed(fn: Callable[[], object], device: str) -> np.ndarray:
    """[wall seconds, this process's CPU seconds] that fn() takes."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def interleave(fns: dict[str, Callable[[int], object]], units, device: str) -> dict[str, list[np.ndarray]]:
    """Time fns[engine](i) for each i in units, the engines taking turns; the first engine rotates
    from unit to unit. Returns each engine's [wall, cpu] seconds per unit."""
    names, times = list(fns), {e: [] for e in fns}
    for k, i in enumerate(units):
        LOADS.append(os.getloadavg()[0])
        for e in names[k % len(names) :] + names[: k % len(names)]:
            times[e].append(timed(lambda e=e, i=i: fns[e](i), device))
    return times


def rates(name: str, amount: float, seconds: np.ndarray) -> dict[str, float]:
    """{name: amount per wall second, name_cpu: amount per CPU second}."""
    return {name: amount / seconds[0], name + "_cpu": amount / seconds[1]}


# ---- speed: all engines in this process, taking turns -------------------------------------------


def measure_inference(engines: list[str], args, config: RobertaConfig, folder: Path) -> dict[str, dict]:
    """A and B (those of --workloads) for every engine, each one's largest difference from
    transformers-sdpa, and the GEMM-bound limits (`add_limits`)."""
    lengths = {"A": lengths_a(config, args.quick), "B": [128] * 8}
    a = batches(lengths["A"], 32, config.vocab_size)
    b = padded(lengths["B"], config.vocab_size, seed=99)
    fns = {}
    for e in engines:
        try:
            fns[e] = encode_fn(e, folder, args.device)
        except Exception as err:  # an optional engine that cannot run here is left out, not fatal
            print(f"  {e} left out: {type(err).__name__}: {err}", file=sys.stderr)
    res = {e: {} for e in fns}
    with torch.inference_mode(), autocast(args):
        first = {e: fn(*a[0]) for e, fn in fns.items()}  # warm-up, and accuracy
        first = {e: out.float().cpu() for e, out in first.items() if out is not None}
        for fn in fns.values():
            fn(*b)
        if "A" in args.workloads:
            times = interleave(
                {e: lambda i, fn=fn: fn(*a[i]) for e, fn in fns.items()}, range(len(a)), args.device
            )
            real = sum(int(m.sum()) for _, m in a)
            for e, t in times.items():
                res[e].update(rates("A", real, sum(t)))
        if "B" in args.workloads:
            reps = range(3 if args.quick else 10)
            times = interleave({e: lambda i, fn=fn: fn(*b) for e, fn in fns.items()}, reps, args.device)
            for e, t in times.items():
                res[e]["B"], res[e]["B_cpu"] = 1e3 * np.median(t, axis=0)
    add_limits(res, config, lengths)
    real_a = a[0][1].bool()
    if REFERENCE in first:
        for e, out in first.items():
            res[e]["max_abs_diff"] = float((out[real_a] - first[REFERENCE][real_a]).abs().max())
    return res


def trained_here(args) -> tuple[str, ...]:
    """The engines C and D measure: all trainable ones (of --engines); under --quick only ours and
    transformers-sdpa, which are also the only ones whose memory --quick measures."""
    names = ("ours", REFERENCE) if args.quick else TRAINABLE
    return tuple(e for e in names if not args.engines or e in args.engines)


def measure_training(name: str, kind: str, data: list[dict], amount: float, args, folder: Path) -> dict:
    """C or D for the trainable engines: one warm-up step each, then the steps taking turns."""
    steps = {e: trainer(e, kind, folder, args, data) for e in trained_here(args)}
    for step in steps.values():
        step(0)
    times = interleave(steps, range(1, len(data)), args.device)
    return {e: rates(name, amount, sum(t)) for e, t in times.items()}


def measure_speed(engines: list[str], args, config: RobertaConfig, folder: Path) -> dict[str, dict]:
    results = measure_inference(engines, args, config, folder)
    gc.collect()
    c, d = c_data(config, args.quick), d_data(config, args.quick)
    if "C" in args.workloads:
        real_c = sum(int(x["attention_mask"].sum()) for x in c[1:])
        for e, r in measure_training("C", "classifier", c, real_c, args, folder).items():
            results.setdefault(e, {}).update(r)
        gc.collect()
    if "D" in args.workloads:
        tokens_d = sum(x["input_ids"].numel() for x in d[1:])
        masked_d = sum(int(x["labels"].ne(-100).sum()) for x in d[1:])
        for e, r in measure_training("D", "mlm", d, tokens_d, args, folder).items():
            results.setdefault(e, {}).update(r)
            if args.device.startswith("cuda"):  # model FLOPs per token x tokens/s, over the peak
                flops_per_token = model_flops(config, tokens_d, masked_d) / tokens_d
                results[e]["mfu_D"] = flops_per_token * r["D"] / H200_BF16_PEAK
    if args.device.startswith("cuda"):  # CPU time says nothing about GPU work
        results = {e: {k: v for k, v in r.items() if not k.endswith("_cpu")} for e, r in results.items()}
    return results


def model_flops(config: RobertaConfig, tokens: int, masked: int, T: int = 128) -> float:
    """Training FLOPs the MLM step needs (forward + backward = 3 x forward; 2 per multiply-add):
    the encoder's matmuls and attention on every token, the LM head on the masked ones."""
    C, L, V, F_ = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
    per_token = L * (2 * (4 * C * C + 2 * C * F_) + 4 * T * C)
    head = 2 * (C * C + C * V)
    return 3 * (tokens * per_token + masked * head)


# ---- memory: one fresh worker process per engine ------------------------------------------------


def reset_peak_memory(device: str) -> None:
    """Start measuring a new peak, once the model is loaded: loading is not the workload."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak RSS
    except OSError:
        pass


def peak_memory_mib(device: str) -> float:
    """Peak since the last reset: GPU max allocated, else the peak RSS (weights included)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
    except (OSError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # since start, KiB on Linux


def memory_worker(args) -> None:
    """Peak memory of one engine on A's longest batch + B, one C step, one D step; JSON to --out."""
    engine, config, folder = args.worker, preset(args.config), Path(args.folder)
    if args.threads:
        torch.set_num_threads(args.threads)
    a = batches(lengths_a(config, args.quick), 32, config.vocab_size)
    encode = encode_fn(engine, folder, args.device)
    res = {}
    reset_peak_memory(args.device)
    with torch.inference_mode(), autocast(args):
        encode(*max(a, key=lambda x: x[0].numel()))
        encode(*padded([128] * 8, config.vocab_size, seed=99))
    res["mem_inference"] = peak_memory_mib(args.device)
    del encode
    if engine in TRAINABLE and not args.quick:  # two steps: the second with the optimizer's state in place
        c = max(c_data(config, args.quick), key=lambda x: x["input_ids"].numel())
        for key, kind, data in (
            ("mem_C", "classifier", [c, c]),
            ("mem_D", "mlm", d_data(config, args.quick)),
        ):
            gc.collect()
            step = trainer(engine, kind, folder, args, data)
            reset_peak_memory(args.device)
            step(0)
            step(1)
            res[key] = peak_memory_mib(args.device)
            del step
    Path(args.out).write_text(json.dumps(res))


def measure_memory(engine: str, args, folder: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, "--folder", str(folder), "--out", str(out)]
    cmd += ["--config", args.config, "--device", args.device, "--dtype", args.dtype]
    cmd += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"  memory of {engine} not measured:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return {}
    return json.loads(out.read_text())


# ---- the run -----------------------------------------------------------------------------------


def preset(name: str) -> RobertaConfig:
    return RobertaConfig.base() if name == "base" else RobertaConfig.small()


def save_reference(config: RobertaConfig, folder: Path) -> Path:
    """Random weights: a transformers RobertaForMaskedLM (seed 0), saved in its own format."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    hf_config = transformers.RobertaConfig(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
    transformers.RobertaForMaskedLM(hf_config).save_pretrained(folder)
    return folder


def engines_here(args, features: frozenset[str]) -> list[str]:
    """--engines if given; else ours and transformers always, the others when they make sense here
    and are installed; then the limits (CPU, fp32). ours-bf16 only where the CPU has bf16 matmuls
    (AMX, AVX512_BF16; with --quick only AMX): elsewhere bf16 is emulated, many times slower (the
    GEMM lines say how much)."""
    import importlib.util

    from roberta.quantize import BF16_FLAGS

    cpu = args.device == "cpu"
    if args.engines:
        return [e for e in args.engines if cpu or e not in LIMITS]
    names = list(TRAINABLE)
    if cpu and args.dtype == "fp32":
        # --quick keeps bf16 where it is the fast path (AMX tiles), not where it only is native
        bf16 = "amx_bf16" in features if args.quick else bool(features & set(BF16_FLAGS))
        names += ["ours-bf16", "ours-int8"] if bf16 else ["ours-int8"]
    limits = [e for e in LIMITS if e != "limit-bf16" or "ours-bf16" in names]
    if cpu and importlib.util.find_spec("onnxruntime"):
        names.append("onnxruntime")
    if cpu and importlib.util.find_spec("openvino"):
        names.append("openvino")
    if importlib.util.find_spec("ctranslate2"):
        names += ["ctranslate2", "ctranslate2-int8"] if cpu else ["ctranslate2"]
    if cpu and args.dtype == "fp32":
        names += limits
    return names


def int8_ffn_ms() -> dict[str, float]:
    """roberta-base's FFN block (Linear 768->3072, GELU, Linear 3072->768) on 1024 tokens, one
    thread, ms (best of 10, thread CPU time): fp32, ours int8, and torch's quantize_dynamic and
    torchao's int8 dynamic-activation config when they import here."""
    import copy
    import warnings

    from roberta.model import EncoderLayer
    from roberta.quantize import quantize_int8

    torch.manual_seed(0)
    x, layer = torch.randn(1024, 768), EncoderLayer(preset("base")).eval()
    ffn = layer.ffn
    paths = {"fp32": ffn, "ours int8": quantize_int8(copy.deepcopy(layer)).ffn}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic

            paths["torch quantize_dynamic int8"] = quantize_dynamic(
                copy.deepcopy(ffn), {torch.nn.Linear}, torch.qint8
            )
    except Exception:  # removed from newer torch
        pass
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao = copy.deepcopy(ffn)
        quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        paths["torchao int8"] = ao
    except Exception:  # not installed
        pass
    times = best_thread_times({name: lambda m=m: m(x) for name, m in paths.items()})
    return {name: 1e3 * t for name, t in times.items()}


def best_thread_times(paths: dict[str, Callable[[], object]], reps: int = 10) -> dict[str, float]:
    """Each callable's best thread CPU time over `reps` turns, on one thread, under inference_mode."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = dict.fromkeys(paths, float("inf"))
    with torch.inference_mode():
        for _ in range(reps):
            for name, fn in paths.items():
                start = time.thread_time()
                fn()
                best[name] = min(best[name], time.thread_time() - start)
    torch.set_num_threads(threads)
    return best


ROWS = [  # key, label, how the ratio column reads it
    ("A", "A inference, real tokens/s", "faster"),
    ("pct_fp32_A", "A % of the fp32 GEMM limit", None),
    ("pct_int8_A", "A % of the int8 GEMM limit", None),
    ("pct_bf16_A", "A % of the bf16 GEMM limit", None),
    ("B", "B 8x128 batch, ms", "shorter"),
    ("pct_fp32_B", "B % of the fp32 GEMM limit", None),
    ("pct_int8_B", "B % of the int8 GEMM limit", None),
    ("pct_bf16_B", "B % of the bf16 GEMM limit", None),
    ("C", "C fine-tune step, real tokens/s", "faster"),
    ("D", "D MLM step, tokens/s", "faster"),
    ("mfu_D", "D model-FLOPs utilisation", None),
    ("A_cpu", "A real tokens per CPU-second", "faster"),
    ("B_cpu", "B CPU ms per batch", "shorter"),
    ("C_cpu", "C real tokens per CPU-second", "faster"),
    ("D_cpu", "D tokens per CPU-second", "faster"),
    ("mem_inference", "peak memory A+B, MiB", "memory"),
    ("mem_C", "peak memory C, MiB", "memory"),
    ("mem_D", "peak memory D, MiB", "memory"),
    ("max_abs_diff", "max |diff| vs transformers-sdpa", None),
]


def table(results: dict) -> str:
    """Rows: ROWS; columns: engines, then ours vs transformers-sdpa: the speed-up for speed rows
    (> 1: ours is faster), ours' share of sdpa's peak for memory rows (< 1: ours needs less)."""
    engines = list(results)
    width = {e: max(10, len(e) + 2) for e in engines}
    lines = [f"{'':34}" + "".join(f"{e:>{width[e]}}" for e in engines) + f"{'ours vs sdpa':>14}"]
    for key, label, kind in ROWS:
        vals = [results[e].get(key) for e in engines]
        if all(v is None for v in vals):
            continue
        cells = "".join(
            f"{'-' if v is None else format_value(key, v):>{width[e]}}" for e, v in zip(engines, vals)
        )
        ours, ref = results.get("ours", {}).get(key), results.get(REFERENCE, {}).get(key)
        ratio = ""
        if ours and ref and kind:
            ratio = f"{(ref / ours if kind == 'shorter' else ours / ref):.2f}x"
        lines.append(f"{label:34}{cells}{ratio:>14}")
    return "\n".join(lines)


def format_value(key: str, v: float) -> str:
    if key == "max_abs_diff":
        return f"{v:.1e}"
    if key == "mfu_D" or key.startswith("pct_"):
        return f"{100 * v:.1f}%"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def header(report: dict) -> list[str]:
    """The run's first lines: what was measured, on which CPU, at what load."""
    m, load = report.get("machine"), report["load_average_at_start"]
    lines = [
        f"{report['config']}, {report['device']}, {report['dtype']}, {report['threads']} threads, "
        f"quick={report['quick']}, workloads {report['workloads']}, torch {report['torch']}"
    ]
    if m:
        flags = " ".join(f if has else f"no-{f}" for f, has in m["flags"].items())
        lines.append(f"CPU: {m['cpu']}, {m['cpu_count']} logical CPUs; flags: {flags}")
        lines.append(
            f"torch CPU capability {m['torch_capability']}; our int8 kernel: {m['int8_kernel']}, "
            f"its rows quantized by {m.get('int8_quantizer', 'torch ops')}"
        )
        if "onednn_chosen" in m:
            (plain, gelu), (use_plain, use_gelu) = m["onednn_speedup"], m["onednn_chosen"]
            uses = "oneDNN for every layer linear" if use_plain else "torch's default"
            uses += ", the GELU fused into FFN in" if use_gelu else ""
            lines.append(
                f"fp32 linears (roberta/onednn.py): oneDNN {plain:.2f}x torch's default here on a layer's "
                f"four matmuls at {onednn.PROBE_ROWS} tokens (>= "
                f"{onednn.MIN_SPEEDUP}: ours takes it), the GELU fused {gelu:.2f}x the separate pass (>= "
                f"{onednn.GELU_MIN_SPEEDUP} on oneDNN's matmuls: ours fuses it; beside torch's, never): "
                f"ours uses {uses}"
            )
    busy = " (busy: other work shares these cores, so read the ratios, not the absolute rates)"
    lines.append(
        f"load average at start (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        + (busy if load[0] > 0.5 * (os.cpu_count() or 1) else "")
    )
    return lines


def footer(report: dict) -> list[str]:
    """The lines under the table: load while timing, the limits' GEMM rates, the per-shape rates,
    the FFN block comparison."""
    load = report["load_average"]
    lines = [
        f"load average (1 min) while timing: min {load['min']:.1f}, mean {load['mean']:.1f}, max {load['max']:.1f}"
        + (" (busy)" if load["mean"] > 0.5 * (os.cpu_count() or 1) else "")
    ]
    res = report["results"]
    for limit in LIMITS:
        got = [
            f"{k[-1]} {res[limit][k] / 1e9:.0f}"
            for k in ("gemm_rate_A", "gemm_rate_B")
            if k in res.get(limit, {})
        ]
        if got:
            unit = "GOP/s" if "int8" in limit else "GFLOP/s"
            kernels = report.get("limit_fp32_kernels", {}) if limit == "limit-fp32" else {}
            took = ", ".join(f"{m} {k}" for m, k in kernels.items())
            lines.append(
                f"{limit}: the layers' GEMMs alone, timed in turn with the engines, {unit}: {', '.join(got)}"
                + (f" (the faster kernel at {onednn.PROBE_ROWS} tokens: {took})" if took else "")
            )
    if "gemm_rates" in report:
        rows = report["gemm_rows"]
        lines.append(
            f"GEMM rate per matmul, {rows} rows (A's mean batch), {report['threads']} threads, GFLOP/s (int8: GOP/s):"
        )
        for shape, r in report["gemm_rates"].items():
            cells = ", ".join(f"{d} {v:.1f}" if v < 10 else f"{d} {v:.0f}" for d, v in r.items())
            lines.append(f"  {shape:26} {cells}")
    if "ffn_ms_one_thread" in report:
        ffn = ", ".join(f"{k} {v:.1f}" for k, v in report["ffn_ms_one_thread"].items())
        lines.append(f"FFN block on 1024 tokens, one thread, ms: {ffn}")
    lines.append(f"total {report['seconds']:.0f} s")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("base", "small"), default="base")
    p.add_argument("--quick", action="store_true", help="fewer sequences and steps (< 5 minutes on 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast for every engine"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--workloads", default="ABCD", type=str.upper, help="which of A B C D to run (default ABCD; e.g. AB)"
    )
    p.add_argument(
        "--engines",
        type=lambda s: [e.strip() for e in s.split(",") if e.strip()],
        help="comma-separated engines instead of all that run here, e.g. ours,ctranslate2,limit-fp32",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-engine memory workers")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # refused here, not met as a ZeroDivisionError after the whole run
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(
            f"speed.py: --device {args.device} needs a GPU, and torch {torch.__version__} sees none here "
            "(torch.cuda.is_available() is False); use --device cpu"
        )
    if args.worker:
        return memory_worker(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from roberta.quantize import cpu_features

    config, started = preset(args.config), time.perf_counter()
    report = {
        "config": args.config, "device": args.device, "dtype": args.dtype, "quick": args.quick,
        "workloads": args.workloads, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "load_average_at_start": list(os.getloadavg()),
    }  # fmt: skip
    if args.device == "cpu":
        report["machine"] = machine()
    print("\n".join(header(report)), flush=True)
    with tempfile.TemporaryDirectory(prefix="roberta-speed-") as tmp:
        folder = save_reference(config, Path(tmp) / "weights")
        engines = engines_here(args, cpu_features())
        print(f"speed, engines taking turns: {', '.join(engines)}", flush=True)
        results = measure_speed(engines, args, config, folder)
        if not args.no_memory:
            print(f"memory, one worker per engine ({time.perf_counter() - started:.0f} s so far)", flush=True)
            for e in results:
                if e not in LIMITS and (e in trained_here(args) or not args.quick):
                    results[e].update(measure_memory(e, args, folder, Path(tmp) / f"{e}.json"))
    loads = LOADS or [os.getloadavg()[0]]
    report["load_average"] = {"min": min(loads), "mean": float(np.mean(loads)), "max": max(loads)}
    report["results"] = results
    if args.device == "cpu":
        a = lengths_a(config, args.quick)
        report["gemm_rows"] = round(sum(a) / -(-len(a) // 32))  # real tokens per batch of 32
        report["gemm_rates"] = gemm_rates(config, report["gemm_rows"])
        if "limit-fp32" in results:
            kernels = fastest_fp32(config.hidden_size, config.intermediate_size)
            report["limit_fp32_kernels"] = {name: kernels[k, n] for name, k, n in projections(config)}
        report["ffn_ms_one_thread"] = int8_ffn_ms()
    report["seconds"] = time.perf_counter() - started
    print(table(results))
    print("\n".join(footer(report)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
