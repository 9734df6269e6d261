"""Opt-in int8 inference on the CPU: the Transformer layers' matmuls in int8, everything else fp32.

    quantize_int8(model)             # in place; or Predictor.from_pretrained(..., dtype=torch.int8)

Every `nn.Linear` inside an `EncoderLayer` (Q/K/V, Wᴼ, the FFN; in an encoder-decoder also the
decoder's layers and cross-attention) becomes an `Int8Linear`; embeddings, LayerNorms, attention
itself and the task heads stay fp32. That is where the work is: per token and layer the
projections and FFN take 24·C² FLOPs and attention 4·T·C, so 99% of roberta-base's FLOPs at
T = 41 tokens and 90% at 512.

The scheme is symmetric, dynamic and per row on both sides:
- the weight, once: each output channel scaled by its own absmax to int8 in [-127, 127];
- each input row (token), at every call: scaled by its own absmax to int8 in [-127, 127];
- y = (x_q @ W_qᵀ) summed exactly in int32 (`torch._int_mm`; on this project's AVX-512 VNNI
  CPU 3-4x the rate of the fp32 GEMM: the GEMM line of benchmarks/speed.py), times the row's
  scale times the channel's scale, plus the fp32 bias.
Per-token scales keep one outlier token from costing every other token its precision.

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

import torch
import torch.nn as nn


class Int8Linear(nn.Module):
    """y = x Wᵀ + b with W and each row of x in int8 (see the module docstring).

    weight: (out, in) int8; scale: (out,) fp32, W ≈ weight * scale[:, None]; bias: (out,) or None.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127  # (out,)
        weight = torch.round(w / scale[:, None]).to(torch.int8)  # (out, in)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        return cls(weight, scale, bias)

    def rows(self, start: int, stop: int) -> Int8Linear:
        """Output features start:stop only (a view, no copy): the fused QKV's Q, or its K and V."""
        bias = self.bias[start:stop] if self.bias is not None else None
        return Int8Linear(self.weight[start:stop], self.scale[start:stop], bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "this model was quantized to int8 for inference and cannot be trained; "
                "train the fp32 model and quantize the result"
            )
        shape = x.shape
        x = x.reshape(-1, self.in_features).float()  # (M, in)
        absmax = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())  # (M, 1)
        x_scale = absmax.clamp_(min=torch.finfo(torch.float32).tiny).div_(127)  # (M, 1)
        x_q = torch.div(x, x_scale).round_().to(torch.int8)  # (M, in), in [-127, 127]
        y = torch._int_mm(x_q, self.weight.t()).float().mul_(x_scale)  # (M, out): exact int32 sums, scaled
        y = torch.addcmul(self.bias, y, self.scale, out=y) if self.bias is not None else y.mul_(self.scale)
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


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
    from roberta.model import EncoderLayer  # here: roberta.model imports this module (via checkpoint)

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
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    setattr(module, name, Int8Linear.from_linear(child))
    return model.eval()


def set_dtype(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """The model in `dtype`: torch.int8 quantizes it (quantize_int8), another dtype converts it,
    None leaves it as it is. Returns the model."""
    if dtype == torch.int8:
        return quantize_int8(model)
    return model.to(dtype) if dtype is not None else model
