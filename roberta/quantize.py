"""Opt-in int8 inference on the CPU: the Transformer layers' matmuls in int8, everything else fp32.

    quantize_int8(model)             # in place; or Predictor.from_pretrained(..., dtype=torch.int8)

Every `nn.Linear` inside an `EncoderLayer` (Q/K/V, Wᴼ, the FFN; in an encoder-decoder also the
decoder's layers and cross-attention) becomes an `Int8Linear`; embeddings, LayerNorms, attention
itself and the task heads stay fp32. That is where the work is: per token and layer the
projections and FFN take 24·C² FLOPs and attention 4·T·C, so 99% of roberta-base's FLOPs at
T = 41 tokens and 90% at 512.

The scheme is dynamic and per row on both sides:
- the weight, once: each output channel scaled by its own absmax to int8 in [-Q, Q];
- each input row (token), at every call: scaled by its own absmax to int8 in [-127, 127];
- y = (x_q @ W_qᵀ) summed exactly in int32, times the row's scale times the channel's scale, plus
  the fp32 bias;
- except the FFN's second matmul, whose input is the GELU's output, never below -0.17: each of its
  rows goes to u8 in [0, 255] between -0.17 and its max (`quantize_rows_above`), twice the
  resolution of a symmetric scale on that one-sided range, and -0.17 times the weight's row sums
  joins the bias. It lowers the largest difference from fp32 that `benchmarks/speed.py` prints.
The int8 GEMM is the CPU's (`int8_kernel`, chosen from its flags):
- AMX (`amx_int8`): oneDNN's (`torch.ops.onednn.qlinear_*`, a prepacked weight, the channel scale
  applied in the kernel) on the tile unit, which sums s8 x s8 products in int32: Q = 127
  ("onednn-amx"; faster than torch._int_mm there, whose int8 kernel does not use the tiles);
- VNNI without AMX: oneDNN's again, with the input rows shifted to u8 (x_q + 128, its zero point):
  VNNI multiplies u8 by s8 and sums in int32, so Q = 127 and the sums are exact ("onednn-vnni").
  Its output is fp32 with the channel scale applied, where torch._int_mm ("int_mm", kept for
  comparison) returns int32 sums that cost two more passes (to fp32, times the scale); oneDNN's
  int8 kernel for s8 inputs is its unvectorised reference on some of these CPUs (an AMD EPYC);
- AVX2 only: torch._int_mm has no fast kernel there, and oneDNN multiplies u8 by s8 in pairs summed
  in int16 (vpmaddubsw), which saturates unless |w| <= 63: so Q = 63 ("onednn", 7-bit weights),
  and the sums stay exact.
`python benchmarks/int8_kernels.py` times the three against fp32 on the running CPU; the speed
benchmark's GEMM line gives the chosen one's rate.
Per-token scales keep one outlier token from costing every other token its precision.
Quantizing the rows is a pass per step in torch's ops (absmax, divide, round, cast), which on
roberta-base's FFN took longer than its int8 GEMM; roberta/kernels.py compiles one op per
quantizer for the running CPU (a row at a time while it is in cache), bit for bit the same codes,
and these formulas run wherever it is not built.

Results differ from fp32: benchmarks/speed.py prints the largest difference in the final hidden
states (column `ours-int8`), and `roberta evaluate ... --dtype int8` measures what it does to a
task's score. Inference only: the int8 weights are buffers, not parameters, and a forward that
needs a gradient raises.

Why not a library. torch's own `quantize_dynamic` (fbgemm) is deprecated with the rest of
torch.ao.quantization, and quantizes each input as one tensor; torchao's int8 dynamic-activation
config is built for GPUs. `python benchmarks/speed.py` ends with a line that times roberta-base's
FFN block in fp32, in ours and in those two (when they import).
"""

from __future__ import annotations

import functools
import statistics
import time
import warnings

import torch
import torch.nn as nn

from roberta import kernels
from roberta.kernels import cpu_features

# the kernels and their weights' range
KERNEL_QMAX = {"onednn-amx": 127, "onednn-vnni": 127, "int_mm": 127, "onednn": 63}
U8_KERNELS = ("onednn-vnni",)  # take the input rows as u8 = x_q + 128, oneDNN's zero point 128


def int8_kernel() -> str:
    """The int8 GEMM used here: "onednn-amx" where the CPU has AMX tiles, "onednn-vnni" where it has
    VNNI, else "onednn" (7-bit weights); see the module docstring."""
    features = cpu_features()
    if "amx_int8" in features:
        return "onednn-amx"
    return "onednn-vnni" if features & {"avx512_vnni", "avx_vnni"} else "onednn"


def to_u8(x_q: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """int8 x_q -> uint8 x_q + 128: the same bits with the sign bit flipped (in x_q's memory where
    `inplace`)."""
    u8 = x_q.view(torch.uint8)
    return u8.bitwise_xor_(128) if inplace else u8 ^ 128


def fused_ops(x: torch.Tensor):
    """roberta/kernels.py's compiled quantizers where they take x ((M, K) fp32 on the CPU, eager,
    no gradient), else None: the torch-op formulas below, which they equal bit for bit."""
    return None if x.dim() != 2 or x.requires_grad else kernels.ops_for(x)


def quantize_rows(
    x: torch.Tensor, inplace: bool = False, u8: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float -> (x_q (M, K) int8 in [-127, 127], scale (M, 1) fp32): x ≈ x_q * scale, each row at
    its own absmax / 127 (an all-zero row gets the smallest scale and stays 0). `u8`: x_q + 128 as
    uint8 instead (`to_u8`). Where roberta/kernels.py's kernels are built, one pass of them;
    else torch's ops, where `inplace` scales and rounds x in its own memory (x is then garbage)
    instead of in a new tensor the size of it."""
    ops = fused_ops(x)
    if ops is not None:
        return ops.quantize_rows(x.contiguous(), u8)
    absmax = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())  # (M, 1)
    scale = absmax.clamp_(min=torch.finfo(torch.float32).tiny).div_(127)  # (M, 1)
    scaled = x.div_(scale) if inplace else torch.div(x, scale)  # (M, K) in [-127, 127]
    x_q = scaled.round_().to(torch.int8)
    return (to_u8(x_q, inplace=True) if u8 else x_q), scale


# exact GELU's minimum is -0.16997 (at x = -0.75): every output of it is above this
GELU_FLOOR = -0.17
# (max - floor) / 255 a hair larger, so that a row's max lands at most on 255 after rounding errors
_STEP = (1 + 2**-20) / 255


def quantize_rows_above(
    x: torch.Tensor, floor: float, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) float, every x above `floor` -> (x_q (M, K) uint8 in [0, 255], scale (M, 1) fp32):
    x ≈ floor + x_q * scale, each row at (its max - floor) / 255. For one-sided inputs (a GELU's
    output: GELU_FLOOR) that is twice the resolution of `quantize_rows`' symmetric scale. `inplace`
    and the kernels as there."""
    ops = fused_ops(x)
    if ops is not None:
        return ops.quantize_rows_above(x.contiguous(), floor, _STEP)
    top = x.amax(dim=1, keepdim=True)  # (M, 1)
    scale = (top - floor).mul_(_STEP)  # (M, 1), > 0 where x > floor
    # rounded as int8 around floor + 128 * scale, then shifted to u8: float -> int8 is the fast cast
    low = scale.mul(128).add_(floor)  # (M, 1)
    scaled = (x.sub_(low) if inplace else torch.sub(x, low)).div_(scale)  # (M, K) in (-128, 127)
    return to_u8(scaled.round_().to(torch.int8), inplace=True), scale  # (M, K) in [0, 255]


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W and each row of x in int8 (see the module docstring).

    weight: (out, in) int8 in [-qmax, qmax]; scale: (out,) fp32, W ≈ weight * scale[:, None];
    bias: (out,) or None. kernel: one of KERNEL_QMAX (`int8_kernel`).

    `owns_input` (set by quantize_int8): the input is a temporary made for this linear alone, and
    quantizing it overwrites it instead of allocating a second fp32 tensor its size, whose fresh
    pages cost the allocator more than the pass itself on every call (`python benchmarks/speed.py`,
    int8 B). A forward hook on such a linear sees its input overwritten.
    `input_floor` (set by quantize_int8 on the FFN's second matmul): a lower bound of its input, the
    GELU's output. Such input rows are quantized above it (`quantize_rows_above`, u8 with zero point
    0: x ≈ floor + x_q * s), and the floor's share, floor * (the weight's row sums), is a constant
    added to the bias. Not on "int_mm", whose inputs are s8.
    """

    owns_input: bool = False
    input_floor: float | None = None

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, kernel: str):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.kernel = kernel
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = (
            None  # oneDNN's weight layout, at the first call
        )
        self._rows: dict[tuple[int, int], Int8Linear] = {}
        self._floor_bias: tuple[float, torch.Tensor] | None = None  # (input_floor, floor_bias())

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str | None = None) -> Int8Linear:
        kernel = kernel or int8_kernel()
        if kernel not in KERNEL_QMAX:
            raise ValueError(f"unknown int8 kernel {kernel!r}: use one of {', '.join(KERNEL_QMAX)}")
        qmax = KERNEL_QMAX[kernel]
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / qmax  # (out,)
        weight = torch.round(w / scale[:, None]).to(torch.int8)  # (out, in)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        return cls(weight, scale, bias, kernel)

    def rows(self, start: int, stop: int) -> Int8Linear:
        """Output features start:stop only (views of the weights, made once): the fused QKV's Q, or
        its K and V."""
        if (start, stop) not in self._rows:
            bias = self.bias[start:stop] if self.bias is not None else None
            part = Int8Linear(self.weight[start:stop], self.scale[start:stop], bias, self.kernel)
            self._rows[start, stop] = part
        return self._rows[start, stop]

    def matmul(self, x_q: torch.Tensor, zero_point: int = 0) -> torch.Tensor:
        """(M, in) int8, or uint8 with its zero point -> (M, out) fp32: the exact int32 sums
        (x_q - zero_point) @ weightᵀ times each channel's scale. A u8 kernel (U8_KERNELS) takes an
        int8 x_q as x_q + 128 (`to_u8`, into a copy) with zero point 128."""
        if self.kernel == "int_mm":
            if x_q.dtype != torch.int8:
                raise ValueError(f"the int_mm kernel takes int8 inputs, not {x_q.dtype}")
            return torch._int_mm(x_q, self.weight.t()).float().mul_(self.scale)
        if self._packed is None:  # (packed weight, zero points)
            zero = torch.zeros(self.out_features, dtype=torch.long)
            self._packed = (torch.ops.onednn.qlinear_prepack(self.weight, None), zero)
        packed, zero = self._packed
        if self.kernel in U8_KERNELS and x_q.dtype == torch.int8:
            x_q, zero_point = to_u8(x_q), 128  # (M, in) uint8
        return torch.ops.onednn.qlinear_pointwise(
            x_q, 1.0, zero_point, packed, self.scale, zero, None, 1.0, 0, torch.float32, "none", [], ""
        )

    def floor_bias(self) -> torch.Tensor:
        """bias + input_floor * each output channel's sum of the dequantized weight (made once per
        floor): what the floor of inputs quantized above it contributes to every output."""
        if self._floor_bias is None or self._floor_bias[0] != self.input_floor:
            w = self.weight.double() * self.scale.double()[:, None]  # (out, in)
            shift = self.input_floor * w.sum(dim=1)  # (out,)
            bias = shift + self.bias.double() if self.bias is not None else shift
            self._floor_bias = (self.input_floor, bias.float())
        return self._floor_bias[1]

    def products(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (..., in) -> (y (M, out) the int8 GEMM's output with the channel scale applied, x_scale
        (M, 1) the rows' scales, the bias to add): the linear is y * x_scale + bias."""
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "this model was quantized to int8 for inference and cannot be trained; "
                "train the fp32 model and quantize the result"
            )
        rows = x.reshape(-1, self.in_features).float()  # (M, in)
        if self.input_floor is not None and self.kernel != "int_mm":  # one-sided inputs: u8 above the floor
            # (M, in) uint8, (M, 1)
            x_q, x_scale = quantize_rows_above(rows, self.input_floor, self.owns_input)
            return self.matmul(x_q, zero_point=0), x_scale, self.floor_bias()
        u8 = self.kernel in U8_KERNELS  # then (M, in) uint8 x_q + 128, zero point 128
        x_q, x_scale = quantize_rows(rows, inplace=self.owns_input, u8=u8)  # (M, in), (M, 1)
        return self.matmul(x_q, 128 if u8 else 0), x_scale, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, x_scale, bias = self.products(x)  # (M, out), (M, 1)
        y = torch.addcmul(bias, y, x_scale, out=y) if bias is not None else y.mul_(x_scale)
        return y.view(*x.shape[:-1], self.out_features)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + self(x) (roberta/model.py's `add_linear`), summed into the GEMM's output: no
        new tensor the size of the sum."""
        y, x_scale, bias = self.products(x)  # (M, out), (M, 1)
        y = torch.addcmul(residual.reshape(-1, self.out_features), y, x_scale, out=y)
        y = y.add_(bias) if bias is not None else y
        return y.view(residual.shape)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.kernel})"


def int8_device(device: str | torch.device | None) -> torch.device:
    """Where an int8 model runs: the CPU. ValueError if another device was asked for."""
    if device is not None and str(device).split(":")[0] != "cpu":
        raise ValueError(f"int8 runs on the CPU only (device {str(device)!r}); on a GPU use bf16")
    return torch.device("cpu")


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear inside the model's Transformer layers by an Int8Linear, in place.

    The model must be on the CPU and in fp32 (ValueError otherwise); it is put in eval mode.
    Returns the model.
    """
    # here: roberta.model imports this module (via checkpoint)
    from roberta.model import Encoder, EncoderLayer, FeedForward, SelfAttention
    from roberta.onednn import in_place_gelus
    from roberta.seq2seq import CrossAttention

    for p in model.parameters():
        if p.device.type != "cpu" or p.dtype != torch.float32:
            raise ValueError(
                f"int8 quantization needs an fp32 model on the CPU (found {p.dtype} on {p.device}); "
                "load it with device='cpu' and no other dtype"
            )
    layers = [m for m in model.modules() if isinstance(m, EncoderLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Transformer layers to quantize")
    for layer in layers:
        for module in list(layer.modules()):
            if isinstance(module, FeedForward) and getattr(module.fc1, "gelu", False):
                module.act = nn.GELU()  # oneDNN's GELU fused in fc1 (roberta/onednn.py) goes apart again
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, Int8Linear.from_linear(child))
    # the linears whose input is a temporary no one else reads: the FFN's second matmul takes the
    # GELU's output, Wᴼ the heads' outputs concatenated (also in the decoder's layers)
    owners = {FeedForward: "fc2", SelfAttention: "out", CrossAttention: "out"}
    for module in model.modules():
        name = next((n for cls, n in owners.items() if isinstance(module, cls)), None)
        if name is not None and isinstance(getattr(module, name), Int8Linear):
            getattr(module, name).owns_input = True
        exact_gelu = isinstance(module, FeedForward) and isinstance(module.act, nn.GELU)
        if exact_gelu and module.act.approximate == "none" and isinstance(module.fc2, Int8Linear):
            module.fc2.input_floor = GELU_FLOOR
    for encoder in [m for m in model.modules() if isinstance(m, Encoder)]:
        encoder.round_rows = None  # oneDNN's rounded rows (roberta/onednn.py), not the int8 kernels'
    in_place_gelus(model)
    kernels.ops()  # the compiled quantizers (roberta/kernels.py) built now, at load, not at a first request
    return model.eval()


def set_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The model in `dtype`: torch.int8 quantizes it (quantize_int8), another dtype converts it,
    None leaves it as it is. Returns the model. bf16 on a CPU where it is slower than fp32 warns
    (`bf16_cpu_warning`)."""
    if dtype == torch.int8:
        return quantize_int8(model)
    if dtype == torch.bfloat16 and any(p.device.type == "cpu" for p in model.parameters()):
        message = bf16_cpu_warning()
        if message:
            warnings.warn(message, stacklevel=3)
    return model.to(dtype) if dtype is not None else model


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the CPU flags of native bf16 matmuls


@functools.cache
def bf16_cpu_speed(n: int = 256, dim: int = 768, hidden: int = 3072, rounds: int = 5) -> tuple[float, float]:
    """(bf16, fp32) GFLOP/s of a (n, dim) @ (dim, hidden) linear (roberta-base's FFN) on this CPU:
    bf16 through torch's kernel, fp32 through the one the layers take here (torch's default or
    oneDNN's, roberta/onednn.py). Each round times the two back to back in alternating order, and
    each rate is from the median time over the rounds, so that other work on the machine falls on
    both; measured once per process (about a second where bf16 is emulated)."""
    from roberta import onednn

    fp32_linear = onednn.linear if onednn.chosen()[0] else torch.nn.functional.linear
    x, w = torch.randn(n, dim), torch.randn(hidden, dim)
    xb, wb = x.bfloat16(), w.bfloat16()
    runs = {"bf16": lambda: torch.nn.functional.linear(xb, wb), "fp32": lambda: fp32_linear(x, w)}
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for rnd in range(rounds + 1):  # the first round warms up
            for name in runs if rnd % 2 else reversed(runs):
                start = time.perf_counter()
                runs[name]()
                if rnd:
                    seconds[name].append(time.perf_counter() - start)
    flops = 2 * n * dim * hidden
    return flops / statistics.median(seconds["bf16"]) / 1e9, flops / statistics.median(seconds["fp32"]) / 1e9


def bf16_cpu_warning() -> str | None:
    """Why bf16 does not pay on this CPU, measured; None where its bf16 GEMM is at least as fast as
    the fp32 one the layers take here (`bf16_cpu_speed`)."""
    bf16, fp32 = bf16_cpu_speed()
    if bf16 >= fp32:
        return None
    has = [f for f in BF16_FLAGS if f in cpu_features()]
    why = (
        f"it has {', '.join(has)}" if has else f"it has neither {' nor '.join(BF16_FLAGS)}: bf16 is emulated"
    )
    return (
        f"bf16 on this CPU is slower than fp32: a 256x768 @ 768x3072 GEMM runs at {bf16:.0f} GFLOP/s in bf16 "
        f"against {fp32:.0f} in fp32 ({bf16 / fp32:.2f}x, measured now); {why}. "
        "Use fp32 (the default) or int8 (--dtype int8) here; bf16 pays on GPUs and on CPUs whose bf16 "
        "matmuls beat fp32 (AMX, and some with AVX512-BF16)."
    )
