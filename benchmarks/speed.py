"""Speed, side by side: ours vs transformers (and onnxruntime / CTranslate2 when installed).

One run measures every engine on the same random weights (a transformers model saved to a
temporary folder, loaded by each engine) and the same inputs, and prints one table with the
ratio ours / transformers-sdpa. Each engine runs in a fresh worker process, so that its peak
memory (RSS on CPU, max allocated on GPU) is its own.

Workloads (fixed seeds; ids are random tokens between <s> ... </s>, right padding):
  A  inference, realistic: 512 sequences (--quick: 96) with token lengths drawn from
     lognormal(mu=3.5, sigma=0.6), rounded, clipped to 8..256 (mean about 40; the small config
     clips to its 128 positions), handed over in batches of 32 in the drawn order, each padded to
     its longest, as a user would. Metric: real (non-padding) tokens per second.
  B  inference, fixed shape: a batch of 8 x 128 real tokens. Metric: ms per batch.
  C  fine-tuning step, sequence classification (2 labels), AdamW: batches of 16 with A's lengths.
     Metric: real tokens per second.
  D  MLM pretraining step on packed 128-token blocks (8 per batch for base, 32 for small), 15% of
     positions masked, AdamW. Ours uses sparse_logits=True (the LM head projects only the masked
     positions); transformers computes full logits, as it does. Metric: tokens per second.
Inference runs under torch.inference_mode; training in train mode with dropout as configured.
Extra rows: peak memory of inference (after A and B) and of training (after C and D), and the
largest difference of each engine's last hidden state from transformers-sdpa on A's first batch
(real positions). On CPU the `ours-bf16` column is our model with bf16 weights (B only under
--quick: without AVX512_BF16/AMX the CPU emulates bf16 and it is slow), and a line compares one
fp32 GEMM the size of roberta-base's FFN through torch's default path and oneDNN.

    python benchmarks/speed.py --quick                    # < 5 minutes on 2 cores
    python benchmarks/speed.py --config base --json out.json
    python benchmarks/speed.py --device cuda --dtype bf16 # bf16 autocast on GPU

The CPU is often shared: the table records os.getloadavg() around each engine; compare ratios
within one run, not absolute numbers across runs. On a busy CPU run with --threads 1 and read the
"per CPU-second" rows: a single-threaded worker's CPU time is the work it needed, whatever share of
the machine it got (with more threads, CPU time also counts threads spinning at barriers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roberta.config import RobertaConfig  # noqa: E402

ENGINES = ("ours", "transformers-sdpa", "transformers-eager", "ours-bf16", "onnxruntime", "ctranslate2")
REFERENCE = "transformers-sdpa"
H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, for the GPU's model-FLOPs utilisation


# ---- workloads ---------------------------------------------------------------------------------


def lengths_a(config: RobertaConfig, quick: bool) -> list[int]:
    rng = np.random.default_rng(0)
    n = 96 if quick else 512
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
        dtype = torch.bfloat16 if engine == "ours-bf16" else None
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


def onnxruntime_fn(folder: Path):
    """transformers' RobertaModel exported to ONNX, optimised by onnxruntime's BERT fusions."""
    import onnxruntime as ort
    import transformers
    from onnxruntime.transformers.optimizer import optimize_model

    model = transformers.RobertaModel.from_pretrained(folder, attn_implementation="eager").eval()
    path = folder / "model.onnx"
    ids, mask = padded([12, 7], model.config.vocab_size, 0)
    torch.onnx.export(
        model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"], dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}},
        dynamo=False,
    )  # fmt: skip
    cfg = model.config
    optimize_model(str(path), "bert", cfg.num_attention_heads, cfg.hidden_size).save_model_to_file(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(ids, mask):
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        return torch.from_numpy(session.run(["last_hidden_state"], feed)[0])

    return run


def ctranslate2_fn(folder: Path, device: str):
    """transformers' checkpoint converted to CTranslate2, fp32; it skips padding itself."""
    import ctranslate2

    out = folder / "ct2"
    if not out.exists():
        ctranslate2.converters.TransformersConverter(str(folder)).convert(str(out))
    encoder = ctranslate2.Encoder(str(out), device=device, compute_type="float32")

    def run(ids, mask):
        seqs = [row[: int(m.sum())].tolist() for row, m in zip(ids, mask)]
        hidden = torch.as_tensor(np.array(encoder.forward_batch(seqs).last_hidden_state))
        return hidden

    return run


# ---- timing ------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> np.ndarray:
    """[wall seconds, this process's CPU seconds] that fn() takes."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return np.array([time.perf_counter() - wall, time.process_time() - cpu])


def rates(name: str, amount: float, seconds: np.ndarray) -> dict[str, float]:
    """{name: amount per wall second, name_cpu: amount per CPU second}."""
    return {name: amount / seconds[0], name + "_cpu": amount / seconds[1]}


def peak_memory_mib(device: str) -> float:
    """Peak so far: GPU max allocated, else this process's max RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def autocast(args):
    enabled = args.dtype == "bf16"
    return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=enabled)


# ---- the worker: one engine, every workload, in its own process ---------------------------------


def run_inference(engine: str, args, config: RobertaConfig, folder: Path, out: Path) -> dict:
    encode = encode_fn(engine, folder, args.device)
    a = batches(lengths_a(config, args.quick), 32, config.vocab_size)
    b = padded([128] * 8, config.vocab_size, seed=99)
    res = {}
    with torch.inference_mode(), autocast(args):
        torch.save(encode(*a[0]).float().cpu(), out / f"{engine}.pt")  # warm-up, and the accuracy check
        if not (engine == "ours-bf16" and args.quick):
            seconds = sum(timed(lambda x=x: encode(*x), args.device) for x in a)
            res.update(rates("A", sum(int(m.sum()) for _, m in a), seconds))
        encode(*b)
        times = np.median([timed(lambda: encode(*b), args.device) for _ in range(3 if args.quick else 10)], 0)
        res["B"], res["B_cpu"] = 1e3 * times
    res["mem_inference"] = peak_memory_mib(args.device)
    return res


def train_step(model, optimizer, args, **batch) -> None:
    with autocast(args):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_finetune(engine: str, args, config: RobertaConfig, folder: Path) -> dict[str, float]:
    """C: real tokens/s of sequence-classification steps on batches of 16 with A's lengths."""
    model = load_torch(engine, "classifier", folder, args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    steps = 2 if args.quick else 10
    data = batches(lengths_a(config, args.quick)[: 16 * (steps + 1)], 16, config.vocab_size)
    labels = [torch.arange(len(ids), device=args.device) % 2 for ids, _ in data]

    def step(i):
        ids, mask = data[i][0].to(args.device), data[i][1].to(args.device)
        train_step(model, optimizer, args, input_ids=ids, attention_mask=mask, labels=labels[i])

    step(0)  # warm-up
    seconds = sum(timed(lambda i=i: step(i), args.device) for i in range(1, len(data)))
    return rates("C", sum(int(m.sum()) for _, m in data[1:]), seconds)


def run_pretrain(engine: str, args, config: RobertaConfig, folder: Path) -> dict[str, float]:
    """D: tokens/s of MLM steps on packed 128-token blocks; on GPU also the model-FLOPs utilisation."""
    model = load_torch(engine, "mlm", folder, args.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    n_blocks = 8 if config.hidden_size >= 768 else 32
    data = [mlm_batch(n_blocks, config.vocab_size, seed=s) for s in range(1 + (2 if args.quick else 6))]
    is_ours = engine.startswith("ours")

    def step(i):
        ids, labels = data[i][0].to(args.device), data[i][1].to(args.device)
        extra = {"sparse_logits": True} if is_ours else {}
        train_step(model, optimizer, args, input_ids=ids, labels=labels, **extra)

    step(0)
    seconds = sum(timed(lambda i=i: step(i), args.device) for i in range(1, len(data)))
    tokens = sum(ids.numel() for ids, _ in data[1:])
    masked = sum(int(labels.ne(-100).sum()) for _, labels in data[1:])
    res = rates("D", tokens, seconds)
    if args.device.startswith("cuda"):
        res["mfu_D"] = model_flops(config, tokens, masked) / seconds[0] / H200_BF16_PEAK
    return res


def model_flops(config: RobertaConfig, tokens: int, masked: int, T: int = 128) -> float:
    """Training FLOPs the MLM step needs (forward + backward = 3 x forward; 2 per multiply-add):
    the encoder's matmuls and attention on every token, the LM head on the masked ones."""
    C, L, V, F_ = config.hidden_size, config.num_hidden_layers, config.vocab_size, config.intermediate_size
    per_token = L * (2 * (4 * C * C + 2 * C * F_) + 4 * T * C)
    head = 2 * (C * C + C * V)
    return 3 * (tokens * per_token + masked * head)


def worker(args) -> None:
    config = preset(args.config)
    folder, out = Path(args.folder), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = {"engine": args.worker, "load_start": os.getloadavg(), "threads": torch.get_num_threads()}
    res.update(run_inference(args.worker, args, config, folder, out))
    if args.worker in ("ours", "transformers-sdpa", "transformers-eager"):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        res.update(run_finetune(args.worker, args, config, folder))
        res.update(run_pretrain(args.worker, args, config, folder))
        res["mem_training"] = peak_memory_mib(args.device)
    if args.device.startswith("cuda"):  # CPU time says nothing about GPU work
        res = {k: v for k, v in res.items() if not k.endswith("_cpu")}
    res["load_end"] = os.getloadavg()
    (out / f"{args.worker}.json").write_text(json.dumps(res))


# ---- the run: weights, workers, table ----------------------------------------------------------


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

    names = ["transformers-sdpa", "ours", "transformers-eager"]
    if args.device == "cpu" and args.dtype == "fp32":
        names.append("ours-bf16")
    if args.device == "cpu" and importlib.util.find_spec("onnxruntime"):
        names.append("onnxruntime")
    if importlib.util.find_spec("ctranslate2"):
        names.append("ctranslate2")
    return names


def run_worker(engine: str, args, folder: Path, out: Path) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", engine, "--folder", str(folder), "--out", str(out)]
    cmd += ["--config", args.config, "--device", args.device, "--dtype", args.dtype]
    cmd += ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    print(f"  {engine} ...", end=" ", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(f"{time.perf_counter() - start:.0f} s", flush=True)
    if proc.returncode:
        print(f"  {engine} failed, left out:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads((out / f"{engine}.json").read_text())


def accuracy(results: dict, config: RobertaConfig, args, out: Path) -> None:
    """max |last hidden state - transformers-sdpa's| over the real positions of A's first batch."""
    _, mask = batches(lengths_a(config, args.quick), 32, config.vocab_size)[0]
    ref_path = out / f"{REFERENCE}.pt"
    if not ref_path.exists():
        return
    ref = torch.load(ref_path)[mask.bool()]
    for engine, res in results.items():
        res["max_abs_diff"] = float((torch.load(out / f"{engine}.pt")[mask.bool()] - ref).abs().max())


def gemm_gflops() -> dict[str, float]:
    """One fp32 GEMM the size of roberta-base's FFN (1024 x 768 @ 768 x 3072) on one thread,
    through torch's default path (MKL here) and oneDNN with a prepacked weight; best of 10,
    thread CPU time (robust to a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, lin = torch.randn(1024, 768), torch.nn.Linear(768, 3072)
    packed = torch.ops.mkldnn._reorder_linear_weight(lin.weight, 1024)
    paths = {
        "torch default": lambda: torch.nn.functional.linear(x, lin.weight, lin.bias),
        "oneDNN prepacked": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, lin.bias, "none", [], ""),
    }
    best = dict.fromkeys(paths, float("inf"))
    with torch.inference_mode():
        for _ in range(10):
            for name, fn in paths.items():
                start = time.thread_time()
                fn()
                best[name] = min(best[name], time.thread_time() - start)
    torch.set_num_threads(threads)
    return {name: 2 * 1024 * 768 * 3072 / t / 1e9 for name, t in best.items()}


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
    ("mem_inference", "peak memory inference, MiB", "memory"),
    ("mem_training", "peak memory training, MiB", "memory"),
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
    loads = "".join(
        f"{'{:.1f}->{:.1f}'.format(results[e]['load_start'][0], results[e]['load_end'][0]):>20}"
        for e in engines
    )
    lines.append(f"{'load average (1 min), start->end':34}{loads}")
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
    p.add_argument("--threads", type=int, default=0, help="torch threads per engine (0: torch's default)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    config = preset(args.config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="roberta-speed-") as tmp:
        folder = save_reference(config, Path(tmp) / "weights")
        print(f"config {args.config}, device {args.device}, {args.dtype}, quick={args.quick}; workers:")
        results = {}
        for engine in engines_here(args):
            res = run_worker(engine, args, folder, Path(tmp))
            if res is not None:
                results[engine] = res
        accuracy(results, config, args, Path(tmp))
    report = {
        "config": args.config, "device": args.device, "dtype": args.dtype, "quick": args.quick,
        "torch": torch.__version__, "cpu_count": os.cpu_count(), "seconds": time.perf_counter() - started,
        "results": results,
    }  # fmt: skip
    if args.device == "cpu":
        report["gemm_gflops_one_thread"] = gemm_gflops()
    print(table(results))
    if "gemm_gflops_one_thread" in report:
        print("fp32 GEMM, one thread, GFLOP/s: " + ", ".join(
            f"{k} {v:.0f}" for k, v in report["gemm_gflops_one_thread"].items()))  # fmt: skip
    print(f"total {report['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
