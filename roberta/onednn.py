"""fp32 inference on oneDNN where the running CPU runs it faster than torch's default GEMM.

    use_onednn(model)              # in place, where it pays here; Predictor.from_pretrained does it

torch multiplies an fp32 `nn.Linear` with its BLAS (MKL on x86), whose fastest code paths are
chosen for Intel CPUs; oneDNN, which torch also ships, has its own fp32 kernels for each SIMD level
and can apply the GELU after the FFN's first matmul while the output is still in cache (a post-op),
instead of in another pass over a (tokens, 3072) tensor. Which wins depends on the CPU and on the
batch's size, so it is measured, once per process and model size, on one Transformer layer's four
matmuls on a batch of `PROBE_ROWS` tokens (`onednn_speedup`: the kernels back to back, the median
of the rounds' ratios): where oneDNN's plain matmuls are at least `MIN_SPEEDUP` faster every
Transformer layer's linears take it, and where its matmul with the GELU fused is faster than the
matmul then the GELU (`GELU_MIN_SPEEDUP`), the FFN's first one fuses them. (The winner can change
with the batch: on a CPU where the two tie at a few hundred rows and torch's wins at a thousand, a
probe of one matmul at 256 rows picked the slower one; `python benchmarks/speed.py` prints both
kernels' rate at every layer matmul.)
`python benchmarks/speed.py` prints both ratios in its header and times the result.

Row counts are rounded up to a multiple of 32 (`padded_rows`), since oneDNN builds and caches a
kernel per shape and a server would otherwise hold one for every batch size it has seen. The encoder
adds the extra rows to a packed batch once (`Encoder.round_rows`, packing.py's spare rows) where
all its linears are oneDNN's, so that they need not copy their inputs; `OneDNNLinear` rounds any
other input itself (the fused FFN-in's where the others are torch's).
The weights stay the model's own parameters (same memory, same state_dict, nothing reordered), and
the numbers are fp32 GEMM's (sums in another order: within 1e-5 of the plain path, pinned by
tests/test_onednn.py). Inference only: a forward that needs a gradient (training, attributions)
takes torch's path as before, so a model prepared here still trains as it did.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from roberta.model import cpu_fp32_inference

MIN_SPEEDUP = 1.05  # below it the kernels are a tie within noise: torch's default stays
# Where the layers are on oneDNN, the fused GELU is the same matmul with one pass over its output
# fewer, so a tie goes to it; where oneDNN's GELU post-op is the slower of the two (an AVX2-only
# EPYC), the probe measures it so. Where they stay on torch's GEMM, the GELU is not fused: that
# would move the FFN's first matmul alone to the other library, and on a CPU where the probe of that
# matmul put the fused one either side of the separate pass from one process to the next, the whole
# model ran slower with it (`python benchmarks/onednn_choice.py` times the four choices there).
GELU_MIN_SPEEDUP = 1.0
ROW_STEP = 32  # oneDNN's calls see row counts rounded up to a multiple of this (4x past 4096 rows)


def padded_rows(rows: int) -> int:
    """`rows` rounded up so that oneDNN sees few distinct shapes. It builds and caches a kernel per
    shape: a server's batches, every one a new number of tokens, would otherwise grow its memory
    with each new size (`python benchmarks/onednn_memory.py`, output in benchmarks/results/).
    Costs a copy of the input and at most ROW_STEP - 1 rows of work."""
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
        if cpu_fp32_inference(x, self.weight):  # graphs and gradients: torch's ops
            *lead, k = x.shape
            rows = x.reshape(-1, k)  # (M, in)
            m, padded = rows.shape[0], padded_rows(rows.shape[0])
            if padded != m:  # (padded, in): the real rows, then zeros
                rows = torch.cat([rows, rows.new_zeros(padded - m, k)])
            y = linear(rows, self.weight, self.bias, self.gelu)  # (padded, out)
            return y[:m].view(*lead, self.out_features)  # (..., out)
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if self.gelu else y

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + self(x) (roberta/model.py's `add_linear`): the sum in oneDNN's kernel (a
        binary post-op) where `forward` takes oneDNN's and the rows come rounded (the encoder's
        packed batches); the plain sum otherwise."""
        rows = x.reshape(-1, self.in_features)  # (M, in)
        m = rows.shape[0]  # tested last: under tracing it is a traced value
        if self.gelu or not cpu_fp32_inference(residual, x, self.weight) or m != padded_rows(m):
            return residual + self(x)
        other = residual.reshape(-1, self.out_features)  # (M, out)
        y = torch.ops.mkldnn._linear_pointwise.binary(rows, other, self.weight, self.bias, "add")
        return y.view(residual.shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", gelu=True" if self.gelu else "")


class InplaceGELU(nn.GELU):
    """nn.GELU that, at inference (no gradient, eager), overwrites its input: the FFN's (tokens,
    3072) hidden tensor is the matmul's fresh output, and a second tensor that size costs the
    allocator fresh pages on every layer (`python benchmarks/speed.py`, B, shows the sum of such
    costs). Same numbers; training, graphs and tracing take nn.GELU's path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return super().forward(x)
        return torch.ops.aten.gelu_(x, approximate=self.approximate)

    @classmethod
    def of(cls, act: nn.GELU) -> InplaceGELU:
        return cls(approximate=act.approximate)


def in_place_gelus(model: nn.Module) -> None:
    """Every FeedForward's nn.GELU (exact type) becomes an InplaceGELU, in place."""
    from roberta.model import FeedForward

    for ffn in [m for m in model.modules() if isinstance(m, FeedForward)]:
        if type(ffn.act) is nn.GELU:
            ffn.act = InplaceGELU.of(ffn.act)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False):
    """oneDNN's fp32 x @ weightᵀ + bias, with the exact GELU applied in the kernel where `gelu`."""
    attr, algorithm = ("gelu", "none") if gelu else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


PROBE_ROWS = 1024  # tokens in the probe's batch: a batch's size, where the time is spent
PROBE_ROUNDS = 5


def layer_shapes(dim: int, hidden: int) -> tuple[tuple[int, int], ...]:
    """(in, out) of a Transformer layer's four linears: the fused QKV, Wᴼ, the FFN's in and out."""
    return (dim, 3 * dim), (dim, dim), (dim, hidden), (hidden, dim)


def paired_ratio(baseline: Callable[[], object], candidate: Callable[[], object], rounds: int = 6) -> float:
    """The median over `rounds` of baseline's time / candidate's, the two back to back in
    alternating order (after one round to warm up). On a shared machine whose speed changes from one
    tenth of a second to the next, the two of a round see the same speed, and a round that does not
    is outvoted (a best time per kernel, tried before, picked the slower kernel in some processes)."""
    ratios = []
    for rnd in range(rounds + 1):
        seconds = {}
        for run in (baseline, candidate) if rnd % 2 else (candidate, baseline):
            start = time.perf_counter()
            run()
            seconds[run] = time.perf_counter() - start
        if rnd:
            ratios.append(seconds[baseline] / seconds[candidate])
    return statistics.median(ratios)


def onednn_speedup(dim: int = 768, hidden: int = 3072) -> tuple[float, float]:
    """(plain, gelu) measured on this CPU, once per process and model size (hidden size `dim`, FFN
    size `hidden`; about a second at roberta-base's): plain, the time of torch's default fp32 kernel
    over oneDNN's for one Transformer layer's four linears (`layer_shapes`) on PROBE_ROWS tokens;
    gelu, the time of the FFN's first linear then a separate GELU, on the kernel `plain` picks
    (oneDNN where plain >= MIN_SPEEDUP), over oneDNN's with the GELU fused. Fused is not always
    faster: on an AVX2-only AMD EPYC oneDNN's GELU post-op cost more than the separate pass. Each is
    a `paired_ratio` of PROBE_ROUNDS rounds. (0, 0) where oneDNN is absent."""
    return _measured(dim, hidden)


@functools.cache  # on positional arguments only, so that every caller finds the one measurement
def _measured(
    dim: int, hidden: int, rows: int = PROBE_ROWS, rounds: int = PROBE_ROUNDS
) -> tuple[float, float]:
    if not available():
        return 0.0, 0.0
    generator = torch.Generator().manual_seed(0)
    layer = [
        (
            torch.randn(rows, k, generator=generator),
            torch.randn(n, k, generator=generator) / k**0.5,
            torch.zeros(n),
        )
        for k, n in layer_shapes(dim, hidden)
    ]  # (x (rows, in), weight (out, in), bias (out,)) per linear

    def run(kernel: Callable[..., torch.Tensor]) -> Callable[[], None]:
        return lambda: [kernel(x, w, b) for x, w, b in layer]

    with torch.inference_mode():
        plain = paired_ratio(run(F.linear), run(linear), rounds)
        unfused = linear if plain >= MIN_SPEEDUP else F.linear
        x, w, b = layer[2]  # the FFN's first linear
        # the separate GELU as the model runs it at inference: in place (InplaceGELU)
        separate = lambda: torch.ops.aten.gelu_(unfused(x, w, b))  # noqa: E731
        fused = paired_ratio(separate, lambda: linear(x, w, b, gelu=True), rounds)
    return plain, fused


def chosen(dim: int = 768, hidden: int = 3072) -> tuple[bool, bool]:
    """(plain, gelu): whether `use_onednn` puts the layers' linears on oneDNN here, at this model
    size (hidden size `dim`, FFN size `hidden`), and whether it fuses the FFN's GELU into its first
    one (the layers where oneDNN measured at least MIN_SPEEDUP faster than torch's, `onednn_speedup`;
    the GELU where they are, and the fused one at least GELU_MIN_SPEEDUP as fast)."""
    plain, gelu = onednn_speedup(dim, hidden)
    on_onednn = plain >= MIN_SPEEDUP
    return on_onednn, on_onednn and gelu >= GELU_MIN_SPEEDUP


def use_onednn(model: nn.Module, plain: bool | None = None, gelu: bool | None = None) -> nn.Module:
    """Put the Transformer layers' linears on oneDNN, in place: every one where `plain`, the FFN's
    first one with its GELU fused where `gelu`; None: where `chosen` says it pays here. A model not
    on the CPU in fp32, or already prepared, is left as it is. Returns the model."""
    from roberta.model import Encoder, EncoderLayer, FeedForward

    params = list(model.parameters())
    if (
        not available()
        or not params
        or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params)
    ):
        return model
    if plain is None or gelu is None:
        ffn = next((m for m in model.modules() if isinstance(m, FeedForward)), None)
        if ffn is None or not isinstance(ffn.fc1, nn.Linear):
            return model  # no Transformer layer to put on oneDNN
        measured = chosen(ffn.fc1.in_features, ffn.fc1.out_features)  # at this model's size
        plain = measured[0] if plain is None else plain
        gelu = measured[1] if gelu is None else gelu
    for layer in [m for m in model.modules() if isinstance(m, EncoderLayer)]:
        for module in list(layer.modules()):
            if isinstance(module, FeedForward) and gelu and type(module.fc1) is nn.Linear:
                if isinstance(module.act, nn.GELU) and module.act.approximate == "none":
                    module.fc1, module.act = OneDNNLinear.from_linear(module.fc1, gelu=True), nn.Identity()
            for name, child in list(module.named_children()):
                if plain and type(child) is nn.Linear:
                    setattr(module, name, OneDNNLinear.from_linear(child))
    for encoder in [m for m in model.modules() if isinstance(m, Encoder)]:
        linears = [m for m in encoder.modules() if isinstance(m, nn.Linear)]
        if linears and all(isinstance(m, OneDNNLinear) for m in linears):
            # a packed batch brings its rows rounded; where only the fused FFN-in is oneDNN's, it
            # rounds its own input, and torch's GEMMs (which take any row count) get no spare rows
            encoder.round_rows = padded_rows
    in_place_gelus(model)  # where the GELU is not fused
    return model
