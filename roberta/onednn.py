"""fp32 inference on oneDNN where the running CPU runs it faster than torch's default GEMM.

    use_onednn(model)              # in place, where it pays here; Predictor.from_pretrained does it

torch multiplies an fp32 `nn.Linear` with its BLAS (MKL on x86), whose fastest code paths are
chosen for Intel CPUs; oneDNN, which torch also ships, has its own fp32 kernels for each SIMD level
and can apply the GELU after the FFN's first matmul while the output is still in cache (a post-op),
instead of in another pass over a (tokens, 3072) tensor. Which wins depends on the CPU, so it is
measured, once per process, at roberta-base's FFN shape (`onednn_speedup`, interleaved, best of
several): where oneDNN's plain matmul is at least `MIN_SPEEDUP` faster every Transformer layer's
linears take it, and where its matmul with the GELU fused is, the FFN's first one does.
`python benchmarks/speed.py` prints both ratios in its header and times the result.

Row counts are rounded up to a multiple of 32 (`padded_rows`), since oneDNN builds and caches a
kernel per shape and a server would otherwise hold one for every batch size it has seen.
The weights stay the model's own parameters (same memory, same state_dict, nothing reordered), and
the numbers are fp32 GEMM's (sums in another order: within 1e-5 of the plain path, pinned by
tests/test_onednn.py). Inference only: a forward that needs a gradient (training, attributions)
takes torch's path as before, so a model prepared here still trains as it did.
"""

from __future__ import annotations

import functools
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_SPEEDUP = 1.05  # below it the kernels are a tie within noise: torch's default stays
ROW_STEP = 32  # oneDNN's calls see row counts rounded up to a multiple of this (4x past 4096 rows)


def padded_rows(rows: int) -> int:
    """`rows` rounded up so that oneDNN sees few distinct shapes. It builds and caches a kernel per
    shape (about half a MiB each): a server's batches, every one a new number of tokens, would
    otherwise grow its memory with each new size (measured: 1,009 MiB against torch's 568 after 300
    varied batches of the built-in model; 569 rounded). Costs at most ROW_STEP - 1 rows of work."""
    step = ROW_STEP if rows <= 4096 else 4 * ROW_STEP
    return -(-rows // step) * step


class OneDNNLinear(nn.Linear):
    """nn.Linear, and with `gelu` the GELU after it, through oneDNN's fp32 kernel at inference
    (no gradient needed, fp32 on the CPU, eager); torch's F.linear (then F.gelu) otherwise, which
    is also what torch.compile, ONNX export and tracing see."""

    gelu: bool = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, gelu: bool = False) -> OneDNNLinear:
        """The same parameters (shared, not copied) behind the oneDNN kernel."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias, new.gelu = linear.weight, linear.bias, gelu
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32
        fast = fast and not (torch.compiler.is_compiling() or torch.jit.is_tracing())  # graphs: torch's ops
        if fast and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)):
            *lead, k = x.shape
            rows = x.reshape(-1, k)  # (M, in)
            m, padded = rows.shape[0], padded_rows(rows.shape[0])
            if padded != m:  # (padded, in): the real rows, then zeros
                rows = torch.cat([rows, rows.new_zeros(padded - m, k)])
            attr, algorithm = ("gelu", "none") if self.gelu else ("none", "")
            y = torch.ops.mkldnn._linear_pointwise(rows, self.weight, self.bias, attr, [], algorithm)
            return y[:m].view(*lead, self.out_features)  # (..., out)
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.gelu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (", gelu=True" if self.gelu else "")


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def onednn_speedup(rows: int = 256, dim: int = 768, hidden: int = 3072, reps: int = 8) -> tuple[float, float]:
    """(plain, with GELU): torch's default fp32 time over oneDNN's for a (rows, dim) @ (dim, hidden)
    linear on this CPU, without and with the GELU after it; the two kernels take turns, best of
    `reps` each, once per process (a few tenths of a second). (0, 0) where oneDNN is absent."""
    if not available():
        return 0.0, 0.0
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(rows, dim, generator=generator)
    w, b = torch.randn(hidden, dim, generator=generator) / dim**0.5, torch.zeros(hidden)
    candidates = {
        "torch": lambda: F.linear(x, w, b),
        "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
        "torch+gelu": lambda: F.gelu(F.linear(x, w, b)),
        "onednn+gelu": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "gelu", [], "none"),
    }
    best = dict.fromkeys(candidates, float("inf"))
    with torch.inference_mode():
        for rep in range(reps + 1):  # the first round warms up
            for name, run in candidates.items():
                start = time.perf_counter()
                run()
                if rep:
                    best[name] = min(best[name], time.perf_counter() - start)
    return best["torch"] / best["onednn"], best["torch+gelu"] / best["onednn+gelu"]


def use_onednn(model: nn.Module, plain: bool | None = None, gelu: bool | None = None) -> nn.Module:
    """Put the Transformer layers' linears on oneDNN, in place: every one where `plain`, the FFN's
    first one with its GELU fused where `gelu`; None: where `onednn_speedup` measures it at least
    MIN_SPEEDUP faster here. A model not on the CPU in fp32, or already prepared, is left as it is.
    Returns the model."""
    from roberta.model import EncoderLayer, FeedForward

    params = list(model.parameters())
    if (
        not available()
        or not params
        or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params)
    ):
        return model
    if plain is None or gelu is None:
        speedup = onednn_speedup()
        plain = speedup[0] >= MIN_SPEEDUP if plain is None else plain
        gelu = speedup[1] >= MIN_SPEEDUP if gelu is None else gelu
    for layer in [m for m in model.modules() if isinstance(m, EncoderLayer)]:
        for module in list(layer.modules()):
            if isinstance(module, FeedForward) and gelu and type(module.fc1) is nn.Linear:
                if isinstance(module.act, nn.GELU) and module.act.approximate == "none":
                    module.fc1, module.act = OneDNNLinear.from_linear(module.fc1, gelu=True), nn.Identity()
            for name, child in list(module.named_children()):
                if plain and type(child) is nn.Linear:
                    setattr(module, name, OneDNNLinear.from_linear(child))
    return model
