"""fp32 on oneDNN (roberta/onednn.py), pinned to torch's plain path.

The kernels are forced on here, whatever the probe says this CPU prefers, so that the path a
predictor may take on another CPU is tested on every one: same numbers within 1e-5, same
parameters and state_dict, and torch's path (which trains) wherever a gradient is needed.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from roberta import RobertaForSequenceClassification
from roberta.model import FeedForward, RobertaModel
from roberta.onednn import (
    ROW_STEP,
    InplaceGELU,
    OneDNNLinear,
    available,
    onednn_speedup,
    padded_rows,
    use_onednn,
)
from roberta.quantize import quantize_int8
from tests.test_packing import TOL, batch, tiny_config

pytestmark = pytest.mark.skipif(not available(), reason="this torch has no oneDNN (mkldnn) linear")


@pytest.mark.parametrize("gelu", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 48), (3, 5, 48), (0, 48)])
def test_linear_matches_torch(shape, bias, gelu):
    torch.manual_seed(0)
    plain = nn.Linear(48, 40, bias=bias)
    fast = OneDNNLinear.from_linear(plain, gelu=gelu)
    assert fast.weight is plain.weight and fast.bias is plain.bias  # shared, not copied
    x = torch.randn(*shape)
    with torch.inference_mode():
        want = F.gelu(plain(x)) if gelu else plain(x)
        got = fast(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)


def test_a_gradient_takes_torchs_path():
    torch.manual_seed(0)
    plain = nn.Linear(16, 8)
    fast = OneDNNLinear.from_linear(copy.deepcopy(plain), gelu=True)
    x = torch.randn(4, 16, requires_grad=True)
    F.gelu(plain(x)).sum().backward()
    want = x.grad.clone(), plain.weight.grad.clone()
    x.grad = None
    fast(x).sum().backward()
    torch.testing.assert_close(x.grad, want[0])
    torch.testing.assert_close(fast.weight.grad, want[1])


@pytest.fixture(scope="module")
def models() -> tuple[RobertaModel, RobertaModel]:
    torch.manual_seed(0)
    plain = RobertaModel(tiny_config()).eval()
    return plain, use_onednn(copy.deepcopy(plain), plain=True, gelu=True)


def test_every_layer_linear_is_prepared_and_the_state_dict_is_unchanged(models):
    plain, fast = models
    for layer in fast.encoder.layers:
        assert isinstance(layer.ffn.fc1, OneDNNLinear) and layer.ffn.fc1.gelu
        assert isinstance(layer.ffn.act, nn.Identity)
        for linear in (layer.attn.qkv, layer.attn.out, layer.ffn.fc2):
            assert isinstance(linear, OneDNNLinear) and not linear.gelu
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(fast.state_dict()[key], value)
    assert use_onednn(fast, plain=True, gelu=True) is fast  # twice: no change
    assert sum(isinstance(m, OneDNNLinear) for m in fast.modules()) == 4 * len(fast.encoder.layers)


@pytest.mark.parametrize("lengths", [(11, 4, 7, 1, 11), (9, 9)])  # packed (padding) and padded-free
def test_the_model_matches_the_plain_path(models, lengths):
    plain, fast = models
    ids, mask = batch(lengths)
    with torch.inference_mode():
        want, got = plain(ids, mask).last_hidden_state, fast(ids, mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], rtol=TOL, atol=TOL)


def test_a_packed_batch_reaches_the_linears_with_rounded_rows(models):
    """The encoder adds the rounding rows once (packing.py's spare rows): no linear copies its input."""
    plain, fast = models
    assert fast.encoder.round_rows is padded_rows and plain.encoder.round_rows is None
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
             for m in fast.modules() if isinstance(m, OneDNNLinear)]  # fmt: skip
    try:
        with torch.inference_mode():
            fast(*batch((11, 4, 7, 1, 11)))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen and all(rows == 2 * ROW_STEP for rows in seen)  # 34 real tokens + 3 slots, rounded
    quantize_int8(fast_copy := copy.deepcopy(fast))
    assert fast_copy.encoder.round_rows is None  # int8 kernels take any row count


@pytest.mark.parametrize("plain_on, gelu_on", [(True, False), (False, True), (False, False)])
def test_each_choice_is_applied_alone(plain_on, gelu_on):
    model = use_onednn(RobertaModel(tiny_config()), plain=plain_on, gelu=gelu_on)
    ffn: FeedForward = model.encoder.layers[0].ffn
    assert isinstance(ffn.fc1, OneDNNLinear) == (plain_on or gelu_on)
    assert (isinstance(ffn.fc1, OneDNNLinear) and ffn.fc1.gelu) == gelu_on
    assert isinstance(ffn.act, nn.Identity) == gelu_on
    assert isinstance(model.encoder.layers[0].attn.out, OneDNNLinear) == plain_on


def test_the_in_place_gelu_is_nn_gelus_and_keeps_its_input_only_at_inference():
    gelu, inplace = nn.GELU(), InplaceGELU.of(nn.GELU())
    x = torch.randn(5, 7, requires_grad=True)
    y = inplace(x)  # a gradient: nn.GELU's path, x kept
    y.sum().backward()
    torch.testing.assert_close(y, gelu(x), rtol=0, atol=0)
    assert x.grad is not None and not torch.equal(x.detach(), y.detach())
    h = x.detach().clone()
    with torch.inference_mode():
        out = inplace(h)
    assert out.data_ptr() == h.data_ptr() and torch.equal(out, gelu(x).detach())
    model = use_onednn(RobertaModel(tiny_config()), plain=True, gelu=False)
    assert all(type(layer.ffn.act) is InplaceGELU for layer in model.encoder.layers)


def test_not_fp32_on_the_cpu_is_left_alone():
    model = RobertaModel(tiny_config()).to(torch.bfloat16)
    use_onednn(model, plain=True, gelu=True)
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())


def test_a_prepared_classifier_still_trains_as_the_plain_one():
    torch.manual_seed(0)
    plain = RobertaForSequenceClassification(tiny_config(num_labels=2)).train()
    fast = use_onednn(copy.deepcopy(plain), plain=True, gelu=True).train()
    ids, mask = batch()
    labels = torch.tensor([0, 1, 1, 0, 1])
    losses = []
    for model in (plain, fast):
        torch.manual_seed(1)  # the same dropout
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_the_probe_measures_both_kernels():
    plain, gelu = onednn_speedup()
    assert plain > 0 and gelu > 0  # a ratio of two measured times, whichever is faster here


def test_the_probe_is_taken_at_the_models_size(monkeypatch):
    """use_onednn asks the probe about this model's layer sizes, and follows its answer."""
    import roberta.onednn as module

    asked = []
    monkeypatch.setattr(module, "onednn_speedup", lambda *size: asked.append(size) or (2.0, 0.5))
    config = tiny_config()
    model = use_onednn(RobertaModel(config).eval())
    assert asked == [(config.hidden_size, config.intermediate_size)]
    ffn = model.encoder.layers[0].ffn
    assert isinstance(ffn.fc2, OneDNNLinear) and not ffn.fc1.gelu and isinstance(ffn.act, InplaceGELU)
    assert model.encoder.round_rows is padded_rows
    monkeypatch.setattr(module, "onednn_speedup", lambda *size: (0.9, 1.2))  # torch's GEMM wins
    model = use_onednn(RobertaModel(config).eval())
    assert not any(isinstance(m, OneDNNLinear) for m in model.modules())
    assert isinstance(model.encoder.layers[0].ffn.act, InplaceGELU) and model.encoder.round_rows is None
    # the fused GELU on oneDNN's matmuls where it is at least level with the separate one, never
    # beside torch's (it would move FFN-in alone to the other library)
    for plain, gelu, fused in [(0.9, 1.5, False), (2.0, 1.0, True), (2.0, 0.95, False)]:
        monkeypatch.setattr(module, "onednn_speedup", lambda *size, r=(plain, gelu): r)
        fc1 = use_onednn(RobertaModel(config).eval()).encoder.layers[0].ffn.fc1
        assert (isinstance(fc1, OneDNNLinear) and fc1.gelu) is fused, (plain, gelu)


def test_row_counts_are_rounded_to_few_shapes():
    """oneDNN caches a kernel per shape: a server's varied batches must map to a bounded set."""
    sizes = [padded_rows(m) for m in range(1, 16385)]
    assert all(m <= p < m + 4 * ROW_STEP for m, p in zip(range(1, 16385), sizes))
    assert all(p - m < ROW_STEP for m, p in zip(range(1, 4097), sizes))  # small batches waste < 32 rows
    assert len(set(sizes)) == 4096 // ROW_STEP + (16384 - 4096) // (4 * ROW_STEP)
    assert padded_rows(0) == 0


def test_a_prepared_model_traces_as_the_plain_one(models):
    """Graphs see torch's ops: a predictor's model can be traced (or exported) as it is."""

    class Hidden(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids, mask):
            return self.model(ids, mask).last_hidden_state

    plain, fast = models
    ids, mask = batch((9, 9))
    with torch.no_grad():
        want = plain(ids, mask).last_hidden_state
        traced = torch.jit.trace(Hidden(fast), (ids, mask), check_trace=False)
        got = traced(ids, mask)
    graph = str(traced.inlined_graph)
    assert "mkldnn" not in graph and "aten::linear" in graph
    torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
