"""The opt-in int8 inference (roberta/quantize.py).

Int8Linear is pinned to the integer arithmetic it describes, computed independently in float64.
Because every token is quantized on its own, a quantized model keeps the fast paths' guarantees:
unpadded equals padded, a text alone equals its row in a batch, the last-layer subset equals the
full forward (all to 1e-5). Its distance from fp32 is bounded, not zero.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from roberta import RobertaForSequenceClassification
from roberta.model import RobertaModel
from roberta.predict import load_for_inference
from roberta.quantize import (
    GELU_FLOOR,
    KERNEL_QMAX,
    Int8Linear,
    cpu_features,
    quantize_int8,
    quantize_rows_above,
)
from tests.test_packing import TOL, batch, padded_forward, tiny_config


def reference(linear: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """float64: each row of x rounded to int8 at its absmax/127, times the dequantized weight."""
    x = x.reshape(-1, linear.in_features).double()
    scale = (x.abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    x_q = torch.round(x / scale)
    assert x_q.abs().max() <= 127
    w = linear.weight.double() * linear.scale.double()[:, None]  # (out, in)
    y = (x_q @ linear.weight.double().t()) * scale * linear.scale.double()
    assert torch.allclose(y, (x_q * scale) @ w.t())
    return y + (linear.bias.double() if linear.bias is not None else 0)


@torch.no_grad()
def kernels() -> list:
    """int_mm and onednn run on any x86 CPU, fast or not; onednn-amx's and onednn-vnni's 8-bit
    weights are exact only on AMX tiles and VNNI (elsewhere oneDNN may sum pairs in int16)."""
    amx = pytest.mark.skipif("amx_int8" not in cpu_features(), reason="this CPU has no AMX (amx_int8)")
    has_vnni = cpu_features() & {"avx512_vnni", "avx_vnni"}
    vnni = pytest.mark.skipif(not has_vnni, reason="this CPU has no VNNI (avx512_vnni, avx_vnni)")
    return [
        "int_mm",
        "onednn",
        pytest.param("onednn-amx", marks=amx),
        pytest.param("onednn-vnni", marks=vnni),
    ]


@pytest.mark.parametrize("kernel", kernels())
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_is_the_integer_arithmetic_it_claims(bias, kernel):
    torch.manual_seed(0)
    fp32 = nn.Linear(48, 40, bias=bias)
    q = Int8Linear.from_linear(fp32, kernel)
    qmax = KERNEL_QMAX[kernel]  # 63 for oneDNN without VNNI, which sums pairs in int16: 7-bit weights
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() == qmax  # each channel's absmax -> qmax
    assert (
        q.weight.double() * q.scale.double()[:, None] - fp32.weight.double()
    ).abs().max() <= q.scale.max() / 2
    x = torch.randn(3, 5, 48) * torch.logspace(-3, 2, 5)[None, :, None]  # rows of very different sizes
    x[1, 2] = 0  # an all-zero row: no division by zero, the output is the bias
    y = q(x)
    assert y.shape == (3, 5, 40) and y.dtype == torch.float32
    torch.testing.assert_close(y.reshape(-1, 40).double(), reference(q, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(y[1, 2], fp32.bias if bias else torch.zeros(40))
    assert (y - fp32(x)).abs().max() < 0.05 * fp32(x).abs().max()  # int8 is close to fp32, not equal
    part = q.rows(8, 24)  # the fused QKV's K, say: those output features only
    torch.testing.assert_close(part(x), y[..., 8:24], rtol=0, atol=0)
    assert q.rows(8, 24) is part  # made once
    assert q(torch.empty(0, 48)).shape == (0, 40)


@torch.no_grad()
@pytest.mark.parametrize("kernel", kernels())
def test_int8_sums_are_exact_at_full_range(kernel):
    """The worst case for a kernel that sums pairs in int16: every input and weight at its limit."""
    torch.manual_seed(1)
    qmax = KERNEL_QMAX[kernel]
    q = Int8Linear.from_linear(nn.Linear(64, 32, bias=False), kernel)
    q.weight.copy_(torch.randint(0, 2, q.weight.shape) * 2 * qmax - qmax)  # +-qmax
    x_q = (torch.randint(0, 2, (24, 64)) * 254 - 127).to(torch.int8)  # +-127
    exact = (x_q.double() @ q.weight.double().t()) * q.scale.double()
    torch.testing.assert_close(q.matmul(x_q).double(), exact, rtol=1e-6, atol=0)
    same_sign = torch.full((24, 64), 127, dtype=torch.int8)  # every pair at +127 * +qmax: the int16 edge
    q = Int8Linear.from_linear(nn.Linear(64, 32, bias=False), kernel)  # a fresh one: oneDNN packs once
    q.weight.fill_(qmax)
    exact = (same_sign.double() @ q.weight.double().t()) * q.scale.double()
    torch.testing.assert_close(q.matmul(same_sign).double(), exact, rtol=1e-6, atol=0)


@pytest.fixture(scope="module")
def pair() -> tuple[RobertaModel, RobertaModel]:
    """(fp32 model, its int8 copy)."""
    torch.manual_seed(0)
    model = RobertaModel(tiny_config()).eval()
    return model, quantize_int8(copy.deepcopy(model))


def test_quantize_replaces_the_layers_linears_only(pair):
    model, q = pair
    for name, module in q.named_modules():
        if name.startswith("encoder.layers.") and isinstance(module, (nn.Linear, Int8Linear)):
            assert isinstance(module, Int8Linear), name
    assert isinstance(q.pooler.dense, nn.Linear) and isinstance(q.embeddings.word, nn.Embedding)
    n_layers, n_linear = len(q.encoder.layers), 4  # qkv, out, fc1, fc2
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == n_layers * n_linear
    assert sum(isinstance(m, Int8Linear) for m in model.modules()) == 0  # the fp32 model is untouched


@torch.no_grad()
def test_int8_model_keeps_the_fast_paths_guarantees_and_stays_near_fp32(pair):
    model, q = pair
    ids, mask = batch(left=(2,))
    real = mask.bool()
    out = q(ids, mask).last_hidden_state  # unpadded
    ref = padded_forward(q, ids, mask)[-1]  # every layer padded
    assert (out - ref)[real].abs().max() < TOL
    for i in range(ids.shape[0]):
        alone = q(ids[i][real[i]][None]).last_hidden_state[0]
        assert (alone - out[i][real[i]]).abs().max() < TOL
    want = torch.zeros_like(real)
    want[:, 0] = True
    assert (q(ids, mask, subset_mask=want).last_hidden_state - out[want]).abs().max() < TOL
    fp32 = model(ids, mask).last_hidden_state
    assert (out - fp32)[real].abs().max() < 0.1  # post-LayerNorm states are O(1)


@torch.no_grad()
def test_linears_fed_temporaries_quantize_them_in_place_with_the_same_numbers(pair, monkeypatch):
    # torch's ops: roberta/kernels.py's quantizers read their input and write the codes elsewhere
    monkeypatch.setattr("roberta.quantize.fused_ops", lambda x: None)
    _, q = pair
    owners = [m for n, m in q.named_modules() if isinstance(m, Int8Linear) and m.owns_input]
    names = {n for n, m in q.named_modules() if isinstance(m, Int8Linear) and m.owns_input}
    assert names == {
        f"encoder.layers.{i}.{n}" for i in range(len(q.encoder.layers)) for n in ("attn.out", "ffn.fc2")
    }
    ids, mask = batch(left=(2,))
    out = q(ids, mask).last_hidden_state
    linear = q.encoder.layers[0].ffn.fc2
    x = torch.randn(5, linear.in_features)
    before, kept = x.clone(), x.clone()
    y = linear(x)
    assert not torch.equal(x, before)  # overwritten
    try:
        for m in owners:
            m.owns_input = False
        assert torch.equal(q(ids, mask).last_hidden_state, out)  # bit for bit
        assert torch.equal(linear(kept), y) and torch.equal(kept, before)  # not overwritten
    finally:
        for m in owners:
            m.owns_input = True


def test_rows_above_a_floor_take_all_256_levels_between_it_and_their_max():
    torch.manual_seed(2)
    x = torch.nn.functional.gelu(torch.randn(6, 64) * torch.logspace(-2, 1, 6)[:, None])
    x[0] = torch.nn.functional.gelu(torch.linspace(-3, -0.2, 64))  # all negative, min near the floor
    x[1] = 0.0
    assert x.min() > GELU_FLOOR
    x_q, scale = quantize_rows_above(x.clone(), GELU_FLOOR)
    assert x_q.dtype == torch.uint8 and scale.shape == (6, 1)
    assert torch.equal(x_q.amax(dim=1), torch.full((6,), 255, dtype=torch.uint8))  # each row's max
    back = GELU_FLOOR + x_q.double() * scale.double()
    assert ((back - x.double()).abs() <= scale.double() / 2 * 1.0001).all()  # rounded to the nearest level
    kept = x.clone()
    assert torch.equal(quantize_rows_above(kept, GELU_FLOOR, inplace=True)[0], x_q)


def reference_above(linear: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """float64: each row of x rounded to 256 levels from input_floor up to its max, times the
    dequantized weight."""
    floor = linear.input_floor
    x = x.reshape(-1, linear.in_features).double()
    scale = (x.amax(dim=1, keepdim=True) - floor) * (1 + 2**-20) / 255
    x_q = torch.round((x - floor) / scale)
    assert x_q.min() >= 0 and x_q.max() <= 255
    w = linear.weight.double() * linear.scale.double()[:, None]  # (out, in)
    bias = linear.bias.double() if linear.bias is not None else 0
    return (x_q * scale + floor) @ w.t() + bias


@torch.no_grad()
@pytest.mark.parametrize("kernel", kernels())
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_above_a_floor_is_the_arithmetic_it_claims(bias, kernel):
    torch.manual_seed(3)
    fp32 = nn.Linear(48, 40, bias=bias)
    q = Int8Linear.from_linear(fp32, kernel)
    x = torch.nn.functional.gelu(torch.randn(3, 5, 48) * torch.logspace(-2, 1, 5)[None, :, None])
    symmetric = q(x)
    q.input_floor = GELU_FLOOR
    y = q(x)
    if kernel == "int_mm":  # s8 inputs only: the symmetric scheme
        assert torch.equal(y, symmetric)
        return
    torch.testing.assert_close(y.reshape(-1, 40).double(), reference_above(q, x), rtol=1e-5, atol=1e-5)
    assert (y - fp32(x)).abs().max() < 0.05 * fp32(x).abs().max()
    assert q(torch.empty(0, 48)).shape == (0, 40)
    x_q = torch.full((24, 48), 255, dtype=torch.uint8)  # every pair at 255 * +qmax: the int16 edge
    q.weight.fill_(KERNEL_QMAX[kernel])
    q._packed = None  # oneDNN packs the weight again
    exact = (x_q.double() @ q.weight.double().t()) * q.scale.double()
    torch.testing.assert_close(q.matmul(x_q).double(), exact, rtol=1e-6, atol=0)


@torch.no_grad()
def test_the_ffn_second_matmul_takes_its_gelu_input_above_the_floor(pair):
    _, q = pair
    floors = {n: m.input_floor for n, m in q.named_modules() if isinstance(m, Int8Linear)}
    assert {n for n, f in floors.items() if f is not None} == {
        f"encoder.layers.{i}.ffn.fc2" for i in range(len(q.encoder.layers))
    }
    assert set(floors.values()) == {None, GELU_FLOOR}


@torch.no_grad()
def test_quantizing_a_model_on_onednn_keeps_its_fused_gelu(pair):
    """use_onednn may fuse the GELU into fc1 (its act becomes Identity); the int8 fc1 cannot, so
    quantize_int8 puts the GELU back: the same numbers as quantizing the plain model."""
    from roberta.onednn import OneDNNLinear, use_onednn

    model, q = pair
    fused = use_onednn(copy.deepcopy(model), plain=False, gelu=True)
    assert isinstance(fused.encoder.layers[0].ffn.fc1, OneDNNLinear)
    fused = quantize_int8(fused)
    ids, mask = batch(left=(2,))
    assert torch.equal(fused(ids, mask).last_hidden_state, q(ids, mask).last_hidden_state)


@torch.no_grad()
def test_int8_classifier_logits_with_and_without_the_last_layer_subset():
    torch.manual_seed(4)
    clf = quantize_int8(RobertaForSequenceClassification(tiny_config()).eval())
    ids, mask = batch(left=(2,), seed=10)
    full = clf(ids, mask, output_hidden_states=True)  # every position of every layer
    assert (clf(ids, mask).logits - full.logits).abs().max() < TOL


def test_int8_is_for_inference_on_cpu_in_fp32(pair, tmp_path):
    model, q = pair
    ids, mask = batch()
    with pytest.raises(RuntimeError, match="cannot be trained"):
        q.embeddings.word.weight.requires_grad_(True)
        try:
            q(ids, mask)
        finally:
            q.embeddings.word.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="fp32 model on the CPU"):
        quantize_int8(copy.deepcopy(model).to(torch.bfloat16))
    with pytest.raises(ValueError, match="no Transformer layers"):
        quantize_int8(nn.Sequential(nn.Linear(4, 4)))
    model.save_pretrained(tmp_path)
    loaded = load_for_inference(RobertaModel, tmp_path, dtype=torch.int8, device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).last_hidden_state, q(ids, mask).last_hidden_state)
    with pytest.raises(ValueError, match="CPU only"):
        load_for_inference(RobertaModel, tmp_path, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="quantize_int8"):  # the checkpoint code knows nothing of int8
        RobertaModel.from_pretrained(tmp_path, dtype=torch.int8)
    with pytest.raises(ValueError, match="save the fp32 model"):
        loaded.save_pretrained(tmp_path / "int8")
    assert not (tmp_path / "int8").exists()  # nothing half-written


def test_bf16_on_a_cpu_where_it_is_slower_warns_with_the_measured_rates(monkeypatch, tmp_path):
    from roberta import onednn, quantize

    model = RobertaModel(tiny_config())
    monkeypatch.setattr(quantize, "bf16_cpu_speed", lambda: (5.0, 50.0))  # (bf16, fp32) GFLOP/s
    monkeypatch.setattr(onednn, "onednn_speedup", lambda *size: (1.0, 1.0))  # fp32 as fast either way
    with pytest.warns(
        UserWarning, match=r"slower than fp32: .* 5 GFLOP/s in bf16 against 50 in fp32 \(0.10x"
    ):
        assert next(quantize.set_dtype(model, torch.bfloat16).parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(quantize, "bf16_cpu_speed", lambda: (80.0, 50.0))  # AMX: bf16 pays, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quantize.set_dtype(model.float(), torch.bfloat16)
    model.float().save_pretrained(tmp_path)  # and nothing picks bf16 by itself
    assert next(load_for_inference(RobertaModel, tmp_path, device="cpu").parameters()).dtype == torch.float32


def test_bf16_speed_is_measured_once():
    from roberta.quantize import bf16_cpu_speed

    bf16, fp32 = bf16_cpu_speed()
    assert bf16 > 0 and fp32 > 0 and bf16_cpu_speed() == (bf16, fp32)
