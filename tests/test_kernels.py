"""roberta/kernels.py: the compiled int8 quantizers equal quantize.py's torch-op formulas bit for bit.

The formulas are the reference (tests/test_quantize.py pins them to the integer arithmetic); the
kernels must give the same codes and scales on any shape (rows of any length, vector loop plus
scalar tail), any magnitude, all-zero rows, and both the AVX-512 and the AVX2 build. Where this
machine cannot build them, the tests that need them are skipped with the reason, and the ones that
check the fallback still run.
"""

from __future__ import annotations

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
    ops = kernels.int8_ops()
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


@pytest.mark.slow
def test_the_avx2_build_equals_the_formulas_too(ops):
    """The build for CPUs without AVX-512 (an AMD EPYC of the AVX2 generation), compiled here with
    AVX-512 off, in a subprocess: a process holds one build of torch.ops.roberta."""
    code = textwrap.dedent(
        """
        import torch
        from roberta import kernels, quantize
        from tests.test_kernels import inputs
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
