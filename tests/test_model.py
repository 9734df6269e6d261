"""The encoder against the reference: transformers' RobertaModel with random weights, both directions."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from roberta import RobertaConfig, RobertaModel, kernels
from roberta.model import EncoderLayer, add_linear, attention_weights, position_ids_from_input_ids

transformers = pytest.importorskip("transformers")

# (hidden, layers, heads, ffn): tiny; odd sizes (3 heads of 24); roberta-base sizes (2 layers to stay fast).
CONFIGS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    "odd": dict(hidden_size=72, num_hidden_layers=3, num_attention_heads=3, intermediate_size=50),
    "base-sized": dict(hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072),
}
TOL = 1e-5


def hf_config(**kw):
    """A transformers config with RoBERTa's real values (its class defaults are BERT's)."""
    base = dict(
        vocab_size=211,
        max_position_embeddings=66,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    return transformers.RobertaConfig(**{**base, **kw})


def padded_batch(vocab: int = 211, lengths=(13, 5, 9, 1), seed: int = 0):
    """(B, T) ids with <s> ... </s>, right padding; mixed lengths; mask 1 = real token."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), 1, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
        mask[i, :n] = 1
    return ids, mask


def real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Only the real positions of a (B, T, C) tensor: padding outputs are not defined by either side."""
    return x[mask.bool()]


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(hf model, our model loaded from its save_pretrained folder, folder)."""
    torch.manual_seed(0)
    hf = transformers.RobertaModel(hf_config(**CONFIGS[request.param], attn_implementation="eager")).eval()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, RobertaModel.from_pretrained(folder), folder


@torch.no_grad()
def test_parity_hf_to_ours(pair):
    hf, ours, _ = pair
    ids, mask = padded_batch()
    ref, out = hf(input_ids=ids, attention_mask=mask), ours(ids, mask)
    assert (real(ref.last_hidden_state, mask) - real(out.last_hidden_state, mask)).abs().max() < TOL
    assert (ref.pooler_output - out.pooler_output).abs().max() < TOL


@torch.no_grad()
def test_parity_ours_to_hf(pair, tmp_path):
    _, ours, _ = pair
    ours.save_pretrained(tmp_path)
    hf = transformers.RobertaModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = padded_batch(seed=1)
    ref, out = hf(input_ids=ids, attention_mask=mask), ours(ids, mask)
    assert (real(ref.last_hidden_state, mask) - real(out.last_hidden_state, mask)).abs().max() < TOL
    assert (ref.pooler_output - out.pooler_output).abs().max() < TOL


@torch.no_grad()
def test_hidden_states_and_attentions_match_hf(pair):
    hf, ours, _ = pair
    ids, mask = padded_batch(seed=2)
    ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    out = ours(ids, mask, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == len(ref.hidden_states) == hf.config.num_hidden_layers + 1
    for a, b in zip(ref.hidden_states, out.hidden_states):
        assert (real(a, mask) - real(b, mask)).abs().max() < TOL
    for a, b in zip(ref.attentions, out.attentions):
        keys = mask[:, None, None, :].bool().expand_as(a) & mask[:, None, :, None].bool().expand_as(a)
        assert (a[keys] - b[keys]).abs().max() < TOL


@torch.no_grad()
def test_left_padding_gives_same_positions_and_states(pair):
    """Positions are counted over real tokens, so left padding does not shift them."""
    _, ours, _ = pair
    ids, mask = padded_batch(lengths=(9, 4))
    left_ids, left_mask = ids.clone(), mask.clone()
    left_ids[1] = torch.cat([ids[1, 4:], ids[1, :4]])
    left_mask[1] = torch.cat([mask[1, 4:], mask[1, :4]])
    a = ours(ids, mask).last_hidden_state[1, :4]
    b = ours(left_ids, left_mask).last_hidden_state[1, 5:]
    assert (a - b).abs().max() < TOL


@torch.no_grad()
def test_alone_equals_inside_padded_batch(pair):
    _, ours, _ = pair
    ids, mask = padded_batch(lengths=(13, 5, 9, 1))
    batch = ours(ids, mask).last_hidden_state
    for i, n in enumerate((13, 5, 9, 1)):
        alone = ours(ids[i : i + 1, :n]).last_hidden_state[0]
        assert (alone - batch[i, :n]).abs().max() < TOL


def test_position_ids_start_after_pad():
    ids = torch.tensor([[0, 5, 6, 2, 1, 1], [1, 1, 0, 7, 2, 1]])
    assert position_ids_from_input_ids(ids, pad_token_id=1).tolist() == [
        [2, 3, 4, 5, 1, 1],
        [1, 1, 2, 3, 4, 1],
    ]


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig.small(vocab_size=100)).eval()
    ids, mask = padded_batch(vocab=100)
    with torch.no_grad():
        fast = model(ids, mask).last_hidden_state
        slow = model(ids, mask, output_attentions=True)
    assert (real(fast, mask) - real(slow.last_hidden_state, mask)).abs().max() < TOL
    for w in slow.attentions:  # (B, nh, T, T)
        sums = w.sum(-1)[mask.bool()[:, None, :].expand(-1, w.size(1), -1)]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-6)
        assert w.masked_select(~mask.bool()[:, None, None, :].expand_as(w)).abs().max() == 0


def test_attention_formula_by_hand():
    """attention_weights is softmax(QKᵀ/√d_k)·V, computed here from its definition."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 4, 3, generator=g) for _ in range(3))
    y, w = attention_weights(q, k, v, mask=None)
    for h in range(2):
        scores = torch.tensor([[float(q[0, h, i] @ k[0, h, j]) / 3**0.5 for j in range(4)] for i in range(4)])
        expect_w = scores.exp() / scores.exp().sum(-1, keepdim=True)
        assert torch.allclose(w[0, h], expect_w, atol=1e-6)
        assert torch.allclose(y[0, h], expect_w @ v[0, h], atol=1e-6)


def test_inputs_embeds_path_matches_ids_without_padding(pair):
    _, ours, _ = pair
    ids, _ = padded_batch(lengths=(7,))
    with torch.no_grad():
        a = ours(ids).last_hidden_state
        b = ours(inputs_embeds=ours.embeddings.word(ids)).last_hidden_state
    assert (a - b).abs().max() < TOL


def test_sinusoidal_positions_are_fixed_and_trainable_model_runs():
    config = RobertaConfig.small(vocab_size=50, position_embedding_type="sinusoidal")
    model = RobertaModel(config)
    table = model.embeddings.position.weight
    assert not table.requires_grad
    assert torch.allclose(table[0, :2], torch.tensor([0.0, 1.0]))  # sin(0), cos(0)
    ids, mask = padded_batch(vocab=50)
    out = model(ids, mask).last_hidden_state
    out.sum().backward()
    assert table.grad is None


def test_model_in_train_mode_is_stochastic_and_eval_is_not():
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig.small(vocab_size=50))
    ids, mask = padded_batch(vocab=50)
    model.train()
    assert not torch.equal(model(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)
    model.eval()
    assert torch.equal(model(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)


# ---- the residual sums at inference (model.add_linear) ------------------------------------------


class OpNames(TorchDispatchMode):
    """Records the name of every aten op run inside it."""

    def __init__(self):
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def linear_kinds() -> dict[str, object]:
    """name -> a function nn.Linear -> the linear as the model may hold it at inference."""
    from roberta.onednn import OneDNNLinear, available
    from roberta.quantize import Int8Linear

    kinds = {"torch": lambda lin: lin, "int8": Int8Linear.from_linear}
    if available():
        kinds["oneDNN"] = OneDNNLinear.from_linear
    return kinds


@pytest.mark.parametrize("kind", ["torch", "int8", "oneDNN"])
@pytest.mark.parametrize("shape", [(64,), (4, 16)])
def test_add_linear_is_the_residual_plus_the_linear(kind, shape):
    """At inference each kind sums residual + linear(h) its own way (the GEMM adding into
    residual + bias, oneDNN's binary post-op, int8's dequantize into the GEMM's output): the plain sum
    to fp32 rounding; with a gradient wanted, the plain sum itself."""
    if kind not in linear_kinds():
        pytest.skip("oneDNN is not available in this torch")
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 20)
    torch.nn.init.normal_(plain.bias)
    linear = linear_kinds()[kind](plain)
    h, residual = torch.randn(*shape, 24), torch.randn(*shape, 20)
    with torch.inference_mode():
        want = residual + linear(h.clone())  # a clone: int8 may quantize its input in place
        got = add_linear(residual, linear, h.clone())
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    if kind != "int8":  # int8 cannot be trained
        r = residual.clone().requires_grad_()
        out = add_linear(r, linear, h)
        out.sum().backward()
        assert torch.equal(out, r + linear(h)) and torch.equal(r.grad, torch.ones_like(r))


@pytest.mark.parametrize("fused", [True, False])
def test_a_layer_at_inference_adds_each_residual_in_its_linear(fused, monkeypatch):
    """Without dropout (eval) the layer's sums x + Attn(x) and x + FFN(x) are added by Wᴼ's and the
    FFN's second GEMM (two in-place addmm_, no separate add of the branch), or, with the compiled
    kernels, each in one pass with its bias and LayerNorm after a bias-less matmul (as is the FFN's
    GELU); the same numbers as the formula op by op. With dropout (training) each branch is dropped
    out, then added."""
    if fused and kernels.ops() is None:
        pytest.skip(f"the compiled kernels are not built here: {kernels.unavailable_reason()}")
    if not fused:
        monkeypatch.setattr(kernels, "ops", lambda: None)
    torch.manual_seed(0)
    config = RobertaConfig(**CONFIGS["odd"], vocab_size=50, max_position_embeddings=40)
    layer = EncoderLayer(config).eval()
    with torch.no_grad():
        for p in layer.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.5)  # biases and LayerNorm shifts that are not 0
    x = torch.randn(3, 11, config.hidden_size)
    with torch.inference_mode():
        h = layer.norm1(x + layer.attn(x, None)[0])
        want = layer.norm2(h + layer.ffn(h))
        with OpNames() as ops:
            got, _ = layer(x, None)
    assert (got - want).abs().max() < TOL
    draws = ("aten.bernoulli_", "roberta.dropout")  # torch's dropout, or roberta/kernels.py's
    assert not set(draws) & set(ops.names)
    if fused:
        assert ops.names.count("roberta.add_layer_norm_") == 2 and ops.names.count("roberta.bias_gelu_") == 1
        assert not {"aten.addmm_", "aten.addmm", "aten.native_layer_norm", "aten.gelu"} & set(ops.names)
    else:
        assert ops.names.count("aten.addmm_") == 2
    layer.train()
    with OpNames() as ops:
        layer(x, None)
    # dropout draws its masks: the attention weights', then each branch's
    assert "aten.addmm_" not in ops.names and sum(ops.names.count(d) for d in draws) == 3
