"""roberta/kernels.py: the compiled int8 quantizers equal quantize.py's torch-op formulas bit for bit;
the one-pass dropout is dropout.

The formulas are the reference (tests/test_quantize.py pins them to the integer arithmetic); the
kernels must give the same codes and scales on any shape (rows of any length, vector loop plus
scalar tail), any magnitude, all-zero rows, and both the AVX-512 and the AVX2 build. The dropout's
masks are pinned to its hash written out in Python here, and checked as a random stream: the rate,
no correlation between neighbours, fresh masks per call, torch.manual_seed fixing them, the backward
pass using the forward's. Where this machine cannot build the kernels, the tests that need them are
skipped with the reason, and the ones that check the fallback still run.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from roberta import kernels, quantize
from roberta.model import RobertaModel
from roberta.quantize import GELU_FLOOR, quantize_int8, quantize_rows, quantize_rows_above
from tests.test_packing import batch, tiny_config


@pytest.fixture(scope="module")
def ops():
    ops = kernels.ops()
    if ops is None:
        pytest.skip(f"the int8 kernels are not built here: {kernels.unavailable_reason()}")
    return ops


def formulas(monkeypatch):
    """quantize.py's torch-op path, the kernels out of the way."""
    monkeypatch.setattr(quantize, "fused_ops", lambda x: None)


def inputs() -> list[torch.Tensor]:
    """Rows of many lengths (vector loops of 16 and 8 plus tails) and magnitudes, zero rows."""
    g = torch.Generator().manual_seed(0)
    out = []
    for rows, cols in [(1, 768), (3, 1), (5, 13), (37, 768), (300, 3072), (64, 100), (17, 8), (9, 24)]:
        x = torch.randn(rows, cols, generator=g) * 10 ** torch.randn(rows, 1, generator=g)
        x[0, 0] = 0.0
        out.append(x)
    out.append(torch.zeros(4, 64))
    out.append(torch.full((2, 40), 0.5))  # every value a tie for the rounding
    return out


def test_kernels_equal_the_formulas_bit_for_bit(ops, monkeypatch):
    assert ops.isa() in kernels.FAST_ISAS
    for x in inputs():
        got = {
            "s8": ops.quantize_rows(x, False),
            "u8": ops.quantize_rows(x, True),
            "above": ops.quantize_rows_above(torch.nn.functional.gelu(x), GELU_FLOOR, quantize._STEP),
        }
        assert got["s8"][0].dtype == torch.int8 and got["u8"][0].dtype == torch.uint8
        with monkeypatch.context() as m:
            formulas(m)
            want = {
                "s8": quantize_rows(x.clone()),
                "u8": quantize_rows(x.clone(), u8=True),
                "above": quantize_rows_above(torch.nn.functional.gelu(x), GELU_FLOOR),
            }
        for key in got:
            assert torch.equal(got[key][0], want[key][0]), (key, tuple(x.shape))
            assert torch.equal(got[key][1], want[key][1]), (key, tuple(x.shape))


def test_quantize_rows_takes_the_kernels_where_they_are_built(ops):
    x = torch.randn(6, 48)
    before = x.clone()
    for fn in (
        lambda: quantize_rows(x, inplace=True),
        lambda: quantize_rows_above(x.abs(), 0.0, inplace=True),
    ):
        codes, scale = fn()
        assert codes.shape == x.shape and scale.shape == (6, 1)
    assert torch.equal(x, before)  # the kernels read their input; only torch's ops overwrite it
    # where a gradient is wanted, or another dtype, the formulas run
    assert quantize.fused_ops(x.requires_grad_()) is None
    assert quantize.fused_ops(torch.randn(4, 8, dtype=torch.float64)) is None
    assert quantize.fused_ops(torch.randn(2, 4, 8)) is None


def test_an_int8_model_gives_the_same_numbers_with_and_without_the_kernels(ops, monkeypatch):
    torch.manual_seed(0)
    model = quantize_int8(RobertaModel(tiny_config(), add_pooler=False))
    ids, mask = batch(left=(2,))
    with torch.inference_mode():
        fast = model(ids, mask).last_hidden_state
        formulas(monkeypatch)
        slow = model(ids, mask).last_hidden_state
    assert torch.equal(fast, slow)


MASK32 = 0xFFFFFFFF


def mix(x: int) -> int:
    """csrc/kernels.cpp's 32-bit hash (lowbias32), in Python."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def kept(n: int, p: float, seed: int) -> torch.Tensor:
    """The dropout's mask over n elements, from its hash of each index and the seed."""
    s0, s1 = seed & MASK32, (seed >> 32) & MASK32
    threshold = min(round(p * 2**32), MASK32)
    draws = [mix((mix((i & MASK32) ^ s0) + (i >> 32) + s1) & MASK32) for i in range(n)]
    return torch.tensor([d >= threshold for d in draws])


def test_dropout_keeps_what_its_hash_says_and_scales_it(ops):
    x = torch.randn(1000) + 3.0  # no zeros of its own
    for p, seed in [(0.1, 12345), (0.5, 2**40 + 7), (0.9, 2**63 - 1)]:
        y = ops.dropout(x, p, seed)
        mask = kept(len(x), p, seed)
        assert torch.equal(y != 0, mask)  # the vector loop and the scalar tail alike
        assert torch.equal(y[mask], x[mask] * torch.tensor(1 / (1 - p), dtype=torch.float32))


def test_dropout_is_a_fresh_random_mask_at_rate_p(ops):
    x = torch.ones(1000, 1000)
    for p in (0.1, 0.5):
        y = kernels.dropout(x, p)
        keep = (y != 0).float()
        rate, sd = keep.mean().item(), math.sqrt(p * (1 - p) / keep.numel())
        assert abs(rate - (1 - p)) < 5 * sd
        # neighbours (along a row, down a column) uncorrelated
        for a, b in [(keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1])]:
            r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
            assert abs(r) < 0.01
        assert not torch.equal(y, kernels.dropout(x, p))  # another call, another mask
    torch.manual_seed(3)
    first = kernels.dropout(x, 0.3)
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(kernels.dropout(x, 0.3), first)  # the seed fixes it, on any thread count
    finally:
        torch.set_num_threads(threads)


def test_dropout_backward_uses_the_forward_mask(ops):
    x = torch.randn(37, 50, requires_grad=True)
    y = kernels.dropout(x, 0.25)
    g = torch.randn(37, 50)
    y.backward(g)
    keep = y != 0
    assert torch.equal(x.grad != 0, keep)
    assert torch.allclose(x.grad[keep], g[keep] / 0.75)
    # a transposed (non-contiguous) input and gradient take the same path
    xt = torch.randn(50, 37).t().requires_grad_()
    kernels.dropout(xt, 0.5).sum().backward()
    assert xt.grad.shape == (37, 50)


def test_dropout_elsewhere_and_off_is_torchs(ops):
    x = torch.randn(8, 8, dtype=torch.float64)
    torch.manual_seed(0)
    want = torch.nn.functional.dropout(x, 0.5, True)
    torch.manual_seed(0)
    assert torch.equal(kernels.dropout(x, 0.5), want)  # float64: torch's own
    y = torch.randn(8, 8)
    assert kernels.dropout(y, 0.5, training=False) is y and kernels.dropout(y, 0.0) is y


def test_attention_with_dropout_is_the_math_form_with_that_dropout(ops):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(kernels.scaled_dot_product_attention(q, k, v, mask, 0.0), plain, atol=1e-6)
    torch.manual_seed(1)
    got = kernels.scaled_dot_product_attention(q, k, v, mask, 0.2)
    torch.manual_seed(1)
    seed = int(torch.empty((), dtype=torch.int64).random_())  # the seed the call drew
    weights = (q @ k.transpose(-2, -1) / math.sqrt(8)).masked_fill(~mask, float("-inf")).softmax(-1)
    assert torch.allclose(got, ops.dropout(weights.contiguous(), 0.2, seed) @ v, atol=1e-6)
    # a query with no key to attend gets zeros, as in torch's math form
    mask[1] = False
    out = kernels.scaled_dot_product_attention(q, k, v, mask, 0.2)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and not out.isnan().any()


# ---- the inference kernels: attention over packed rows, bias+GELU, residual+LayerNorm ----------


def sequences_attention(q, k, v, bounds, heads, rows, q_bias=None, v_bias=None) -> torch.Tensor:
    """What varlen_attention computes, written with SDPA one sequence at a time. (rows, C)"""
    C = q.shape[1]
    out = torch.zeros(rows, C)
    q = q if q_bias is None else q + q_bias
    v = v if v_bias is None else v + v_bias
    for q0, nq, k0, nk in bounds.tolist():
        if nq == 0 or nk == 0:
            continue
        qs, ks, vs = (
            t.reshape(n, heads, -1).transpose(0, 1)
            for t, n in ((q[q0 : q0 + nq], nq), (k[k0 : k0 + nk], nk), (v[k0 : k0 + nk], nk))
        )
        y = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs)  # (heads, nq, hs)
        out[q0 : q0 + nq] = y.transpose(0, 1).reshape(nq, C)
    return out


def attention_cases():
    """(q, k, v, bounds, heads, rows): every sequence shape the encoder makes: queries = keys, one
    query more (a padding slot), a subset of queries, no query, a query with no key, lengths past
    one and two blocks of keys and queries, spare rows after the last query; head sizes that are and
    are not multiples of the vector width; q, k and v as column slices of one fused output."""
    g = torch.Generator().manual_seed(3)
    lengths = [(5, 5), (1, 1), (13, 12), (0, 7), (1, 0), (40, 40), (70, 69), (16, 16), (3, 17)]
    for heads, hs in [(2, 8), (4, 16), (2, 24), (12, 64), (1, 40)]:
        C = heads * hs
        bounds, q0, k0 = [], 0, 0
        for nq, nk in lengths:
            bounds.append([q0, nq, k0, nk])
            q0, k0 = q0 + nq, k0 + max(nk, nq)
        qkv = torch.randn(max(q0, k0) + 3, 3 * C, generator=g) * 2
        q, k, v = qkv.chunk(3, dim=1)
        yield q, k, v, torch.tensor(bounds), heads, q0 + 3


def test_varlen_attention_is_each_sequences_attention(ops):
    for q, k, v, bounds, heads, rows in attention_cases():
        got = ops.varlen_attention(q, k, v, bounds, heads, rows)
        want = sequences_attention(q, k, v, bounds, heads, rows)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5, (heads, q.shape)
        assert not got[bounds[:, :2].sum(1).max() :].any()  # the rows after the last query: zeros
        C = q.shape[1]
        g = torch.Generator().manual_seed(5)
        qb, vb = torch.randn(C, generator=g), torch.randn(C, generator=g)
        got = ops.varlen_attention(q, k, v, bounds, heads, rows, qb, vb)
        want = sequences_attention(q, k, v, bounds, heads, rows, qb, vb)  # no key: zeros, bias or not
        assert (got - want).abs().max() < 1e-5


def test_varlen_attention_refuses_bounds_outside_its_tensors(ops):
    q = torch.randn(6, 16)
    with pytest.raises(RuntimeError, match="fall outside"):
        ops.varlen_attention(q, q, q, torch.tensor([[0, 4, 3, 4]]), 2, 6)  # keys 3..6 of 6 rows
    with pytest.raises(RuntimeError, match="do not split"):
        ops.varlen_attention(q, q, q, torch.tensor([[0, 2, 0, 2]]), 3, 6)


def test_packed_attention_takes_the_kernel_with_the_projections_bias(ops, monkeypatch):
    """packing.packed_attention at inference is one kernel call; given the projection's bias it
    adds Q's and V's and leaves out K's (a shift of each query's scores that the softmax removes):
    the torch path's numbers with the whole bias added, at every row."""
    from roberta.packing import Packing, pack, packed_attention

    ids, mask = batch(left=(1,))
    p = Packing.from_mask(mask)
    g = torch.Generator().manual_seed(1)
    qkv = pack(torch.randn(*mask.shape, 3, 4, 16, generator=g), p)  # (N, 3, nh, hs)
    bias = torch.randn(3 * 64, generator=g) * 3
    with torch.inference_mode():
        got = packed_attention(qkv, p, bias=bias)
        monkeypatch.setattr(kernels, "attention_ops", lambda x, p=0.0: None)
        want = packed_attention(qkv + bias.view(3, 4, 16), p)
        plain = packed_attention(qkv, p, bias=bias)
    assert (got - want).abs().max() < 1e-5 and torch.equal(plain, want)


def test_bias_gelu_is_gelu_of_the_sum_in_place(ops):
    g = torch.Generator().manual_seed(0)
    for rows, cols in [(1, 3072), (7, 13), (33, 100), (5, 8), (2, 1)]:
        h = torch.randn(rows, cols, generator=g) * 4
        h[0, 0] = -30.0  # where erf is -1 and the GELU 0
        b = torch.randn(cols, generator=g)
        want = torch.nn.functional.gelu(h + b)
        got = ops.bias_gelu_(h, b)
        assert got.data_ptr() == h.data_ptr()
        assert (got - want).abs().max() < 1e-5 * max(1.0, float(want.abs().max())), (rows, cols)


def test_bias_gelus_erf_is_close_everywhere(ops):
    """The kernel's erf (a rational fit, benchmarks/fit_erf.py) against float64 on a fine grid,
    through the saturation at |x| > 4√2 and at 0."""
    x = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    want = torch.nn.functional.gelu(x)
    got = ops.bias_gelu_(x.float().view(1, -1).contiguous(), torch.zeros(x.numel())).view(-1).double()
    assert ((got - want).abs() / x.abs().clamp(min=1.0)).max() < 1e-6  # torch's own fp32 GELU: 3.5e-7
    assert ops.bias_gelu_(torch.zeros(1, 17), torch.zeros(17)).eq(0).all()


def test_add_layer_norm_is_the_layer_norm_of_the_sum_in_place(ops):
    g = torch.Generator().manual_seed(0)
    for rows, cols in [(1, 768), (9, 13), (40, 100), (3, 8)]:
        y, r = torch.randn(rows, cols, generator=g), torch.randn(rows, cols, generator=g) * 10 + 3
        b, w, beta = (torch.randn(cols, generator=g) for _ in range(3))
        want = torch.nn.functional.layer_norm(y + b + r, (cols,), w, beta, 1e-5)
        got = ops.add_layer_norm_(y, b, r, w, beta, 1e-5)
        assert got.data_ptr() == y.data_ptr() and (got - want).abs().max() < 1e-5, (rows, cols)
    with pytest.raises(RuntimeError, match="residual must have"):
        ops.add_layer_norm_(torch.randn(2, 8), b[:8], torch.randn(3, 8), w[:8], beta[:8], 1e-5)


@pytest.mark.slow
def test_the_avx2_build_equals_the_formulas_too(ops):
    """The build for CPUs without AVX-512 (an AMD EPYC of the AVX2 generation), compiled here with
    AVX-512 off, in a subprocess: a process holds one build of torch.ops.roberta."""
    code = textwrap.dedent(
        """
        import torch
        from roberta import kernels, quantize
        from tests.test_kernels import attention_cases, inputs, kept, sequences_attention
        ops = kernels.build(["-O3", "-march=native", "-mno-avx512f", "-fopenmp"])
        assert ops.isa() == "avx2", ops.isa()
        for x in inputs():
            h = torch.nn.functional.gelu(x)
            got = [ops.quantize_rows(x, False), ops.quantize_rows(x, True),
                   ops.quantize_rows_above(h, quantize.GELU_FLOOR, quantize._STEP)]
            quantize.fused_ops = lambda x: None
            want = [quantize.quantize_rows(x.clone()), quantize.quantize_rows(x.clone(), u8=True),
                    quantize.quantize_rows_above(h, quantize.GELU_FLOOR)]
            for (a, s), (b, t) in zip(got, want):
                assert torch.equal(a, b) and torch.equal(s, t), tuple(x.shape)
        x = torch.randn(1000) + 3.0
        assert torch.equal(ops.dropout(x, 0.3, 99) != 0, kept(1000, 0.3, 99))
        for q, k, v, bounds, heads, rows in attention_cases():  # the inference kernels, 8 lanes
            want = sequences_attention(q, k, v, bounds, heads, rows)
            assert (ops.varlen_attention(q, k, v, bounds, heads, rows) - want).abs().max() < 1e-5
        h, b = torch.randn(5, 99) * 4, torch.randn(99)
        assert (ops.bias_gelu_(h.clone(), b) - torch.nn.functional.gelu(h + b)).abs().max() < 1e-5
        y, r, w = torch.randn(4, 37), torch.randn(4, 37), torch.randn(37)
        want = torch.nn.functional.layer_norm(y + b[:37] + r, (37,), w, b[:37], 1e-5)
        assert (ops.add_layer_norm_(y, b[:37], r, w, b[:37], 1e-5) - want).abs().max() < 1e-5
        print("ok")
        """
    )
    if "avx2" not in kernels.cpu_features():
        pytest.skip("this CPU has no AVX2")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_without_a_compiler_or_when_turned_off_the_formulas_run(monkeypatch):
    monkeypatch.setattr(kernels, "_why_not", kernels.unavailable_reason())  # restored after
    monkeypatch.setenv("ROBERTA_KERNELS", "0")
    assert kernels._load() is None
    assert "ROBERTA_KERNELS=0" in kernels.unavailable_reason()
    monkeypatch.setenv("ROBERTA_KERNELS", "1")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert kernels._load() is None
    assert "no C++ compiler" in kernels.unavailable_reason()
