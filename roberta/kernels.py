"""Fused CPU kernels, compiled for the running CPU on first use: int8's row quantizing, training's
dropout, and fp32 inference's attention and the passes around its matmuls.

    ops = kernels.ops()     # torch.ops.roberta once built here, or None where it cannot be
    ops.quantize_rows(x, u8)                    # what quantize.quantize_rows computes
    ops.quantize_rows_above(x, floor, step)     # what quantize.quantize_rows_above computes
    y = kernels.dropout(x, p, training)         # F.dropout's contract, one pass where ops() is built
    y = kernels.scaled_dot_product_attention(q, k, v, mask, dropout_p)   # F's, with that dropout
    y = kernels.varlen_attention(q, k, v, bounds, heads, rows)   # every sequence of a packed batch
    ops.bias_gelu_(h, bias)                     # h = GELU(h + bias), in place
    ops.add_layer_norm_(y, bias, residual, weight, beta, eps)   # y = LayerNorm(y + bias + residual)

Why. Some of the CPU's time goes to chains of torch ops that each make a pass over a whole tensor
for a few operations per element, where one loop would do them all:
- int8 inference quantizes every input row of every layer's matmuls (roberta/quantize.py): an
  absmax, a division, a rounding and a cast, each a pass over the (tokens, features) tensor; on
  roberta-base's FFN the passes took longer than its int8 GEMM (`python benchmarks/profile_a.py
  --dtype int8 --workload B`). The kernel does the same arithmetic a row at a time while the row is
  in cache: one read of the input, one write of the codes, bit for bit the formulas' results
  (tests/test_kernels.py), which stay the path wherever the kernels are not built.
- dropout in training is a Bernoulli draw per element from torch's generator, a division and a
  product: three passes, three times per layer, the draw the slowest. The kernel draws from a counter-based
  hash of each element's index and a seed taken from torch's generator (so torch.manual_seed
  still fixes a run), keeps an element where its draw clears p, and scales it, in one pass; the
  backward pass makes the same mask from the same seed instead of storing it. Its masks are not
  torch's (another random stream, the same distribution: tests/test_kernels.py checks the rate
  and independence).
- fp32 inference (roberta/packing.py, roberta/model.py): a packed batch's attention was one SDPA
  call per group of similar lengths, each gathering its sequences' rows into a padded block and
  scattering the result back; `varlen_attention` reads every sequence's rows where they are, in one
  call. Around the matmuls, torch's path copies a bias into each output before the GEMM, adds the
  residual and then normalises in two passes more, and runs the GELU in its own; `bias_gelu_` and
  `add_layer_norm_` do each block's end in one pass over the matmul's output. All three are fp32
  sums in another order: within 1e-5 of torch's ops (tests/test_kernels.py, tests/test_packing.py).
All of them run on torch's threads (OpenMP) with AVX-512 or AVX2.

How. `torch.utils.cpp_extension.load` builds `csrc/kernels.cpp` with the system's C++ compiler,
`-march=native`, once per CPU, source and torch version (the first process waits for it), into
$ROBERTA_KERNELS_DIR (default ~/.cache/roberta/kernels); later processes load the cached library.
It needs a C++ compiler and ninja (a dependency: `pip install ninja` puts one beside Python).
Where either is missing, the build fails, the CPU is not x86-64 or has neither AVX-512 nor AVX2,
`ops()` is None (the reason in `unavailable_reason()`) and torch's ops run as before.
ROBERTA_KERNELS=0 turns the kernels off.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
import shutil
import sys
import sysconfig
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "kernels.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp"]  # OpenMP: at::parallel_for runs on torch's threads
FAST_ISAS = ("avx512", "avx2")  # the vector builds; a scalar one would be slower than torch's ops

_lock = threading.Lock()
_loaded: list = []  # [the answer] once asked
_why_not: str | None = None


@functools.cache
def cpu_features() -> frozenset[str]:
    """The running CPU's feature flags (Linux /proc/cpuinfo: avx2, avx512_vnni, amx_bf16, ...);
    empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def build_name(flags: list[str]) -> str:
    """The build's name: one per source, flags, torch version and CPU (`-march=native` code)."""
    key = "\n".join([SOURCE.read_text(), torch.__version__, " ".join(flags), *sorted(cpu_features())])
    return "roberta_kernels_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_root() -> Path:
    return Path(os.environ.get("ROBERTA_KERNELS_DIR") or Path.home() / ".cache" / "roberta" / "kernels")


def missing_tools() -> str | None:
    """What the build needs and this machine lacks, or None."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH; set CXX or install g++)"
    scripts = sysconfig.get_path("scripts")  # where `pip install ninja` puts it, when PATH lacks it
    if shutil.which("ninja") is None and scripts and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    if shutil.which("ninja") is None:
        return "no ninja on PATH (pip install ninja)"
    return None


def build(flags: list[str] = FLAGS):
    """Compile `csrc/kernels.cpp` with these compiler flags (or load the cached build) and register its
    ops as torch.ops.roberta; returns that namespace. Raises where the build fails. A process can
    hold one build (the ops' names are the same in each): tests build others in a subprocess."""
    from torch.utils.cpp_extension import load

    name = build_name(flags)
    folder = build_root() / name
    if not any(folder.glob(f"{name}*.so")):
        print(
            f"roberta: compiling its CPU kernels for this machine, once, into {folder} ...", file=sys.stderr
        )
    folder.mkdir(parents=True, exist_ok=True)
    load(
        name,
        [str(SOURCE)],
        extra_cflags=flags,
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.roberta


def ops():
    """The compiled kernels for this CPU, torch.ops.roberta (built at the first call of a process where no
    cached build exists), or None where they are off or cannot be built (see the module docstring;
    `unavailable_reason()` says why). Thread-safe; the answer is kept for the process."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(_load())
    return _loaded[0]


def ops_for(x: torch.Tensor):
    """`ops()` where they can take x, an fp32 CPU tensor in eager mode (not while torch.compile or
    tracing records a graph, which cannot see into them); else None: torch's ops run."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return None
    return ops()


def unavailable_reason() -> str | None:
    """Why `ops()` is None, or None where it is not (or has not been asked yet)."""
    return _why_not


def _load():
    global _why_not
    if os.environ.get("ROBERTA_KERNELS", "1") == "0":
        _why_not = "turned off by ROBERTA_KERNELS=0"
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        _why_not = f"the kernels are written for x86-64 CPUs, not {platform.machine()}"
        return None
    missing = missing_tools()
    if missing:
        _why_not = missing
        return None
    try:
        ops = build()
    except Exception as err:  # a failed build costs speed, not the answer: torch's ops take over
        _why_not = f"the build failed: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}"
        warnings.warn(f"roberta's CPU kernels are not used: {_why_not}", stacklevel=3)
        return None
    if ops.isa() not in FAST_ISAS:
        _why_not = f"this CPU has neither AVX-512 nor AVX2 (the build is {ops.isa()!r})"
        return None
    return ops


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training): each element zeroed with probability p, the rest scaled by
    1 / (1 - p). On the CPU in fp32, in eager mode, with the kernels built: their one-pass dropout
    (see the module docstring); elsewhere torch's."""
    if not training or p == 0.0:
        return x
    if not (0.0 < p < 1.0 and ops_for(x) is not None):
        return torch.nn.functional.dropout(x, p, training)
    seed = int(torch.empty((), dtype=torch.int64).random_())  # from torch's generator: manual_seed fixes it
    return _Dropout.apply(x, p, seed)


class _Dropout(torch.autograd.Function):
    """y = x * mask / (1 - p), and the gradient the same op with the same seed: the same mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, seed: int) -> torch.Tensor:
        ctx.p, ctx.seed = p, seed
        return torch.ops.roberta.dropout(x.contiguous(), p, seed)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        return torch.ops.roberta.dropout(grad.contiguous(), ctx.p, ctx.seed), None, None


def attention_ops(x: torch.Tensor, dropout_p: float = 0.0):
    """`ops_for(x)` where `varlen_attention` may take x's attention: no dropout and no gradient
    wanted through x (the kernel has no backward); else None."""
    if dropout_p > 0.0 or (torch.is_grad_enabled() and x.requires_grad):
        return None
    return ops_for(x)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds: torch.Tensor,
    heads: int,
    rows: int,
    q_bias: torch.Tensor | None = None,
    v_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ/√d) v of each sequence over its own keys, every head, in one call, on packed rows.

    q: (M, C) queries, k and v: (N, C) keys and values, fp32 rows (each row contiguous, any row
    stride: column slices of a fused projection's output do), heads side by side (C = heads * d);
    q_bias and v_bias (C,), where given, are added to every query and value first. bounds: (B, 4)
    int64, per sequence its queries' first row and count in q, its keys' first row and count in k
    and v. Returns (rows, C): each query's attention over its sequence's keys; zeros at a query with
    no key and at the rows after the last query. Where `attention_ops(q)` is not None.

    One task per (sequence, head) on torch's threads, its keys transposed into a buffer and its
    queries taken four at a time against them in registers: no gather, no padding, one call for a
    batch of any lengths (`python benchmarks/cpu_kernels.py` times it against packing.py's SDPA calls)."""
    return torch.ops.roberta.varlen_attention(q, k, v, bounds, heads, rows, q_bias, v_bias)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """F.scaled_dot_product_attention (a boolean `attn_mask`, True = may attend). With dropout on
    the CPU in fp32, where torch computes it in its math form with its three-pass dropout, the same
    math with `dropout`'s one pass; otherwise torch's kernel. A query whose keys are all masked gets
    zeros, as in torch's math form."""
    boolean = attn_mask is None or attn_mask.dtype == torch.bool
    if dropout_p == 0.0 or is_causal or not boolean or ops_for(q) is None:
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
        )
    scores = (q @ k.transpose(-2, -1)).mul_(1 / math.sqrt(q.size(-1)))  # (..., Q, S)
    if attn_mask is None:
        return dropout(scores.softmax(dim=-1), dropout_p) @ v
    weights = scores.masked_fill_(~attn_mask, float("-inf")).softmax(dim=-1)
    if not bool(attn_mask.any(dim=-1).all()):  # a query with no key: NaNs from the softmax, zeros here
        weights = weights.masked_fill(~attn_mask, 0.0)
    return dropout(weights, dropout_p) @ v
