"""Speed, side by side: ours vs transformers (and onnxruntime / CTranslate2 when installed).

One run measures every engine on the same random weights (a transformers model saved to a
temporary folder, loaded by each engine) and the same inputs, and prints one table with the
ratio ours / transformers-sdpa.

Workloads (fixed seeds; ids are random tokens between <s> ... </s>, right padding):
  A  inference, realistic: 512 sequences (--quick: 64) with token lengths drawn from
     lognormal(mu=3.5, sigma=0.6), rounded, clipped to 8..256 (mean about 40; the small config
     clips to its 128 positions), handed over in batches of 32 in the drawn order, each padded to
     its longest, as a user would. Metric: real (non-padding) tokens per second.
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

How. Speed: all engines live in this process and take turns on each batch or step (the first
engine rotates), so that all see the same share of a busy CPU; every engine warms up first.
Memory: one fresh worker process per engine runs A's longest batch, B, two C steps on C's
longest batch and two D steps, and reports its peaks: RSS on CPU (weights included, the transient of
loading them excluded), max allocated on GPU. Accuracy: the largest difference of each engine's
last hidden state from transformers-sdpa's on A's first batch, at real positions.
On CPU the `ours-bf16` column is our model with bf16 weights (not under --quick: without
AVX512_BF16/AMX the CPU emulates bf16 and it is slow), and `ours-int8` our opt-in int8 inference
(roberta/quantize.py); neither is fp32, so their max |diff| row says what they cost. Two lines
at the end compare, on one thread, one GEMM the size of roberta-base's FFN (1024 x 768 @ 768 x
3072) through torch's default fp32 path, oneDNN with a prepacked weight and int8 (torch._int_mm),
and roberta-base's FFN block in fp32, in our int8, and in the int8 of torch's quantize_dynamic
and of torchao (each when present).

    python benchmarks/speed.py --quick                    # < 5 minutes on 2 idle cores
    python benchmarks/speed.py --config base --json out.json
    python benchmarks/speed.py --device cuda --dtype bf16 # bf16 autocast on GPU

A shared CPU makes absolute numbers low and noisy; the load average during the run is printed.
The "per CPU-second" rows divide by this process's CPU time instead of wall time: with
--threads 1 that is the work each engine needed, whatever share of the machine it got (with more
threads it also counts threads spinning at barriers).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
        dtype = {"ours-bf16": torch.bfloat16, "ours-int8": torch.int8}.get(engine)
        return cls[kind].from_pretrained(folder, dtype=dtype, device=device, **extra)
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
    """A function (ids, mask) -> last hidden state (B, T, C) float32 on CPU, for inference."""
    if engine == "onnxruntime":
        return onnxruntime_fn(folder)
    if engine == "ctranslate2":
        return ctranslate2_fn(folder, device)
    model = load_torch(engine, "encoder", folder, device)
    is_ours = engine.startswith("ours")

    def run(ids, mask):
        ids, mask = ids.to(device), mask.to(device)
        out = model(ids, mask) if is_ours else model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state

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


def onnxruntime_fn(folder: Path):
    """transformers' RobertaModel exported to ONNX, optimised by onnxruntime's BERT fusions."""
    import onnxruntime as ort
    import transformers
    from onnxruntime.transformers.optimizer import optimize_model

    model = transformers.RobertaModel.from_pretrained(folder, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):  # positional (ids, mask) in, one tensor out: what export wants
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path, axes = folder / "model.onnx", {0: "batch", 1: "length"}
    torch.onnx.export(
        LastHidden().eval(), padded([12, 7], model.config.vocab_size, 0), str(path),
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


def ctranslate2_fn(folder: Path, device: str):
    """transformers' checkpoint converted to CTranslate2, fp32; it skips padding itself."""
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
    encoder = ctranslate2.Encoder(str(out), device=device, compute_type="float32", intra_threads=threads)

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
    """A and B for every engine, and each one's largest difference from transformers-sdpa."""
    a = batches(lengths_a(config, args.quick), 32, config.vocab_size)
    b = padded([128] * 8, config.vocab_size, seed=99)
    fns = {}
    for e in engines:
        try:
            fns[e] = encode_fn(e, folder, args.device)
        except Exception as err:  # an optional engine that cannot run here is left out, not fatal
            print(f"  {e} left out: {type(err).__name__}: {err}", file=sys.stderr)
    res = {e: {} for e in fns}
    with torch.inference_mode(), autocast(args):
        first = {e: fn(*a[0]).float().cpu() for e, fn in fns.items()}  # warm-up, and accuracy
        for fn in fns.values():
            fn(*b)
        times = interleave(
            {e: lambda i, fn=fn: fn(*a[i]) for e, fn in fns.items()}, range(len(a)), args.device
        )
        real = sum(int(m.sum()) for _, m in a)
        for e, t in times.items():
            res[e].update(rates("A", real, sum(t)))
        reps = range(3 if args.quick else 10)
        times = interleave({e: lambda i, fn=fn: fn(*b) for e, fn in fns.items()}, reps, args.device)
        for e, t in times.items():
            res[e]["B"], res[e]["B_cpu"] = 1e3 * np.median(t, axis=0)
    real_a = a[0][1].bool()
    if REFERENCE in first:
        for e, out in first.items():
            res[e]["max_abs_diff"] = float((out[real_a] - first[REFERENCE][real_a]).abs().max())
    return res


def trained_here(args) -> tuple[str, ...]:
    """The engines C and D measure: all trainable ones; under --quick only ours and
    transformers-sdpa, which are also the only ones whose memory --quick measures."""
    return ("ours", REFERENCE) if args.quick else TRAINABLE


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
    real_c = sum(int(x["attention_mask"].sum()) for x in c[1:])
    tokens_d = sum(x["input_ids"].numel() for x in d[1:])
    for e, r in measure_training("C", "classifier", c, real_c, args, folder).items():
        results[e].update(r)
    gc.collect()
    masked_d = sum(int(x["labels"].ne(-100).sum()) for x in d[1:])
    for e, r in measure_training("D", "mlm", d, tokens_d, args, folder).items():
        results[e].update(r)
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


def engines_here(args) -> list[str]:
    """Always ours and transformers; the others when they make sense here and are installed."""
    import importlib.util

    names = list(TRAINABLE)
    if args.device == "cpu" and args.dtype == "fp32":
        names += ["ours-int8"] if args.quick else ["ours-bf16", "ours-int8"]  # bf16 is slow where emulated
    if args.device == "cpu" and importlib.util.find_spec("onnxruntime"):
        names.append("onnxruntime")
    if importlib.util.find_spec("ctranslate2"):
        names.append("ctranslate2")
    return names


def gemm_gflops() -> dict[str, float]:
    """One GEMM the size of roberta-base's FFN (1024 x 768 @ 768 x 3072) on one thread: fp32
    through torch's default path (MKL here) and oneDNN with a prepacked weight, and int8
    (torch._int_mm, int32 sums: GOP/s); best of 10, thread CPU time (robust to a shared CPU)."""
    x, lin = torch.randn(1024, 768), torch.nn.Linear(768, 3072)
    packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight, 1024)
    x8, w8 = (
        torch.randint(-127, 128, (1024, 768), dtype=torch.int8),
        torch.randint(-127, 128, (3072, 768), dtype=torch.int8),
    )
    paths = {
        "fp32 torch default": lambda: torch.nn.functional.linear(x, lin.weight, lin.bias),
        "fp32 oneDNN prepacked": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, lin.bias, "none", [], ""),
        "int8 torch._int_mm": lambda: torch._int_mm(x8, w8.t()),
    }  # fmt: skip
    return {name: 2 * 1024 * 768 * 3072 / t / 1e9 for name, t in best_thread_times(paths).items()}


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
    ("B", "B 8x128 batch, ms", "shorter"),
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
    lines = [f"{'':34}" + "".join(f"{e:>20}" for e in engines) + f"{'ours vs sdpa':>14}"]
    for key, label, kind in ROWS:
        vals = [results[e].get(key) for e in engines]
        if all(v is None for v in vals):
            continue
        cells = "".join(f"{'-' if v is None else format_value(key, v):>20}" for v in vals)
        ours, ref = results.get("ours", {}).get(key), results.get(REFERENCE, {}).get(key)
        ratio = ""
        if ours and ref and kind:
            ratio = f"{(ref / ours if kind == 'shorter' else ours / ref):.2f}x"
        lines.append(f"{label:34}{cells}{ratio:>14}")
    return "\n".join(lines)


def format_value(key: str, v: float) -> str:
    if key == "max_abs_diff":
        return f"{v:.1e}"
    if key == "mfu_D":
        return f"{100 * v:.1f}%"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("base", "small"), default="base")
    p.add_argument("--quick", action="store_true", help="fewer sequences and steps (< 5 minutes on 2 cores)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast for every engine"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
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
    config, started = preset(args.config), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="roberta-speed-") as tmp:
        folder = save_reference(config, Path(tmp) / "weights")
        engines = engines_here(args)
        print(
            f"{args.config}, {args.device}, {args.dtype}, {torch.get_num_threads()} threads, quick={args.quick}"
        )
        print(f"speed, engines taking turns: {', '.join(engines)}", flush=True)
        results = measure_speed(engines, args, config, folder)
        print(f"memory, one worker per engine ({time.perf_counter() - started:.0f} s so far)", flush=True)
        for e in results:
            if e in trained_here(args) or not args.quick:
                results[e].update(measure_memory(e, args, folder, Path(tmp) / f"{e}.json"))
    report = {
        "config": args.config, "device": args.device, "dtype": args.dtype, "quick": args.quick,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "load_average": {"min": min(LOADS), "mean": float(np.mean(LOADS)), "max": max(LOADS)},
        "seconds": time.perf_counter() - started, "results": results,
    }  # fmt: skip
    if args.device == "cpu":
        report["gemm_gflops_one_thread"] = gemm_gflops()
        report["ffn_ms_one_thread"] = int8_ffn_ms()
    print(table(results))
    load = report["load_average"]
    print(
        f"load average (1 min) while timing: min {load['min']:.1f}, mean {load['mean']:.1f}, max {load['max']:.1f}"
    )
    if "gemm_gflops_one_thread" in report:
        gemm = ", ".join(f"{k} {v:.0f}" for k, v in report["gemm_gflops_one_thread"].items())
        print(f"GEMM 1024x768 @ 768x3072, one thread, GFLOP/s (int8: GOP/s): {gemm}")
        ffn = ", ".join(f"{k} {v:.1f}" for k, v in report["ffn_ms_one_thread"].items())
        print(f"FFN block on 1024 tokens, one thread, ms: {ffn}")
    print(f"total {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
