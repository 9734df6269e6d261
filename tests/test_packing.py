"""Every fast path changes no number: unpadded encoder == padded encoder (fp32, 1e-5).

The padded reference runs the same layers on (B, T, C) with the (B, 1, 1, T) key mask, the path
the model takes when a batch has no padding (and that test_model.py pins to transformers).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from roberta import kernels
from roberta.config import RobertaConfig
from roberta.heads import RobertaForMaskedLM, RobertaForQuestionAnswering, RobertaForSequenceClassification
from roberta.model import RobertaModel
from roberta.packing import (
    Packing,
    grouped_attention,
    make_plan,
    pack,
    packed_attention,
    plan_groups,
    subset_attention,
    unpack,
)

TOL = 1e-5
VOCAB = 97


def tiny_config(**overrides) -> RobertaConfig:
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    return RobertaConfig(**{**kw, **overrides})


def batch(lengths=(11, 4, 7, 1, 11), left=(), seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids <s> ... </s> padded with 1 (right, or left for rows in `left`); mask 1 = real."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids, mask = torch.ones(len(lengths), T, dtype=torch.long), torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        row = torch.randint(3, VOCAB, (n,), generator=g)
        row[0], row[-1] = 0, 2
        where = slice(T - n, T) if i in left else slice(0, n)
        ids[i, where], mask[i, where] = row, 1
    return ids, mask


def padded_forward(model: RobertaModel, ids, mask) -> list[torch.Tensor]:
    """The reference: every layer on (B, T, C) with the key mask; returns each layer's output."""
    x = model.embeddings(ids)
    key_mask = mask.bool()[:, None, None, :]
    states = []
    for layer in model.encoder.layers:
        x, _ = layer(x, key_mask)
        states.append(x)
    return states


@pytest.fixture(scope="module")
def model() -> RobertaModel:
    torch.manual_seed(0)
    return RobertaModel(tiny_config()).eval()


@pytest.fixture(params=["compiled", "torch"])
def kernels_or_not(request, monkeypatch):
    """Inference with roberta/kernels.py's kernels (where built here), then with torch's ops alone."""
    if request.param == "compiled" and kernels.ops() is None:
        pytest.skip(f"the compiled kernels are not built here: {kernels.unavailable_reason()}")
    if request.param == "torch":
        monkeypatch.setattr(kernels, "ops", lambda: None)
    return request.param


# ---- the pure functions ------------------------------------------------------------------------


def test_packing_by_hand():
    """Real tokens in order, then one padding slot per padded row; left and inner padding too."""
    real = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]])
    p = Packing.from_mask(real)
    assert p.indices.tolist() == [0, 1, 2, 5, 6, 7, 4, 8, 9, 10, 11, 12, 14, 13]
    assert p.lengths == (2, 3, 4, 2) and p.sizes == (3, 4, 4, 3)
    assert (p.batch_size, p.seq_len, p.num_rows) == (4, 4, 14)


def test_pack_unpack_round_trip():
    """unpack(pack(x)) == x when a row's padding positions agree (as padding embeddings do);
    otherwise every padding position gets the row's first one."""
    real = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]).bool()
    x = torch.randn(3, 5, 6)
    x[0, 4] = x[0, 3]
    x[1, 1] = x[1, 0]
    p = Packing.from_mask(real)
    assert pack(x, p).shape == (13, 6)  # 11 real tokens + 2 slots
    assert torch.equal(unpack(pack(x, p), p), x)
    x[0, 4] = 7.0
    back = unpack(pack(x, p), p)
    assert torch.equal(back[0, 4], x[0, 3]) and torch.equal(back[1:], x[1:])


def masked_sdpa(qkv: torch.Tensor, mask: torch.Tensor, p: Packing) -> torch.Tensor:
    """The plain path: SDPA on the padded batch, padding keys masked, then packed. (N, nh * hs)"""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
    return pack(ref.transpose(1, 2).flatten(2), p)  # padding slots included


def test_packed_attention_equals_masked_sdpa_at_every_row():
    ids, mask = batch(left=(1,))
    p = Packing.from_mask(mask)
    B, T = mask.shape
    qkv = torch.randn(B, T, 3, 4, 8)
    ref = masked_sdpa(qkv, mask, p)
    packed = pack(qkv, p)  # (N, 3, nh, hs)
    assert (packed_attention(packed, p) - ref).abs().max() < TOL
    for cost in (0, 30, float("inf")):  # a call per sequence, some groups, one call (as on a GPU)
        plan = make_plan(p.sizes, p, cost, packed.device)
        assert (grouped_attention(packed[:, 0], packed[:, 1:], plan) - ref).abs().max() < TOL
    assert len(make_plan(p.sizes, p, 0, packed.device).groups) == B - 1  # the two of 11 tokens share one
    assert len(make_plan(p.sizes, p, float("inf"), packed.device).groups) == 1


def test_equal_lengths_take_the_attention_output_as_it_is():
    """A batch without padding whose sequences share one call (workload B's shape) gets SDPA's output
    as the result, with no copy into place; it equals the plain path, and so does the same batch
    when its queries must be put in place (spare rows, or a call per sequence)."""
    mask = torch.ones(3, 6, dtype=torch.long)
    p = Packing.from_mask(mask)
    qkv = pack(torch.randn(3, 6, 3, 4, 8), p)  # (18, 3, nh, hs)
    ref = masked_sdpa(unpack(qkv, p), mask, p)
    plan = p.attention_plan
    assert plan.in_order and len(plan.groups) == 1 and (plan.rows, plan.scratch) == (18, 0)
    assert (packed_attention(qkv, p) - ref).abs().max() < TOL
    one_each = make_plan(p.sizes, p, 0, qkv.device)
    assert len(one_each.groups) == 1 and one_each.in_order  # equal lengths share a call for free
    rounded = Packing.from_mask(mask, round_rows=lambda n: 32)
    assert not rounded.attention_plan.in_order
    torch.testing.assert_close(
        packed_attention(pack(unpack(qkv, p), rounded), rounded)[:18],
        packed_attention(qkv, p),
        rtol=0,
        atol=0,
    )


def test_padding_queries_write_scratch_rows_past_the_result():
    """Padded queries of a shared call (a shorter sequence's) land in scratch rows, one each, past
    the result's rows: no real row is written twice."""
    ids, mask = batch(left=(1,))
    p = Packing.from_mask(mask)
    plan = make_plan(p.sizes, p, float("inf"), torch.device("cpu"))  # one call: every sequence re-padded
    (g,) = plan.groups
    dest = g.dest.tolist()
    assert len(set(dest)) == len(dest) == g.b * g.Q
    assert sorted(d for d in dest if d < plan.rows) == list(range(plan.rows))
    assert plan.scratch == g.b * g.Q - plan.rows > 0 and not plan.in_order


def test_plan_groups_trades_calls_against_padding():
    cost = [(n, n) for n in (2, 2, 3, 10, 10, 11)]  # (queries, keys), sorted by keys
    assert plan_groups(cost, 0) == [[0, 1], [2], [3, 4], [5]]  # equal lengths share a call for free
    assert plan_groups(cost, 50) == [[0, 1, 2], [3, 4, 5]]
    assert plan_groups(cost, 1e9) == [[0, 1, 2, 3, 4, 5]]
    assert plan_groups([], 10) == []


def test_rows_of_by_hand():
    """Real positions map to their packed rows, padding positions to their row's slot."""
    real = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]])
    p = Packing.from_mask(real)  # rows: 0 1 | slot 2 | 3 4 5 | slot 6 | 7 8 9 10 | 11 12 | slot 13
    want = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]).bool()
    sub = p.rows_of(want)
    assert sub.indices.tolist() == [0, 2, 6, 3, 13, 12] and sub.counts == (2, 2, 0, 2)
    with pytest.raises(ValueError, match="positions must be"):
        p.rows_of(want[:, :3])


def test_subset_attention_equals_masked_sdpa_at_its_rows():
    ids, mask = batch(left=(1,))
    p = Packing.from_mask(mask)
    g = torch.Generator().manual_seed(7)
    want = torch.rand(mask.shape, generator=g) < 0.3
    want[2] = False  # a sequence with no wanted position
    sub = p.rows_of(want)
    qkv = pack(torch.randn(*mask.shape, 3, 4, 8, generator=g), p)  # (N, 3, nh, hs)
    ref = masked_sdpa(unpack(qkv, p), mask, p).index_select(0, sub.indices)  # (M, nh * hs)
    q, kv = qkv[:, 0].index_select(0, sub.indices), qkv[:, 1:]
    assert ref.shape[0] == int(want.sum()) > 0
    assert (subset_attention(q, kv, p, sub) - ref).abs().max() < TOL
    for cost in (0, 30, float("inf")):
        plan = make_plan(sub.counts, p, cost, q.device)
        assert (grouped_attention(q, kv, plan) - ref).abs().max() < TOL
    none = p.rows_of(torch.zeros_like(want))
    assert subset_attention(q[:0], kv, p, none).shape == (0, 32)


def test_spare_rows_are_zeros_no_sequence_reads():
    """round_rows adds zero rows after the packed ones: attention gives them zeros, every packed
    row gets what it gets without them, and unpack ignores them."""
    real = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]])
    plain, spare = Packing.from_mask(real), Packing.from_mask(real, round_rows=lambda n: 32)
    assert (spare.num_rows, spare.spare) == (14, 18) and torch.equal(spare.indices, plain.indices)
    x = torch.randn(4, 4, 3, 2, 8)  # (B, T, 3, nh, hs)
    packed = pack(x, spare)
    assert packed.shape == (32, 3, 2, 8) and torch.equal(packed[:14], pack(x, plain))
    assert not packed[14:].any()
    y = packed_attention(packed, spare)  # (32, 16)
    assert y.shape == (32, 16) and not y[14:].any()
    torch.testing.assert_close(y[:14], packed_attention(pack(x, plain), plain), rtol=0, atol=0)
    assert torch.equal(unpack(y, spare), unpack(y[:14], plain))
    with pytest.raises(ValueError, match="below the row count"):
        Packing.from_mask(real, round_rows=lambda n: n - 1)


@torch.no_grad()
def test_an_encoder_that_rounds_rows_gives_the_same_numbers(model):
    """Encoder.round_rows (set by roberta/onednn.py) changes no state, at any position, in any output."""
    ids, mask = batch(left=(2,))
    want = model(ids, mask, output_hidden_states=True)
    subset = mask.bool() & (torch.arange(ids.shape[1]) % 3 == 0)
    want_subset = model(ids, mask, subset_mask=subset).last_hidden_state
    model.encoder.round_rows = lambda n: n + 29
    try:
        got = model(ids, mask, output_hidden_states=True)
        got_subset = model(ids, mask, subset_mask=subset).last_hidden_state
    finally:
        model.encoder.round_rows = None
    for a, b in zip(want.hidden_states, got.hidden_states):
        torch.testing.assert_close(b, a, rtol=TOL, atol=TOL)
    torch.testing.assert_close(got_subset, want_subset, rtol=TOL, atol=TOL)


# ---- the model ---------------------------------------------------------------------------------


@torch.no_grad()
def test_unpadded_forward_equals_padded_at_every_position(model):
    ids, mask = batch(left=(2,))
    ref = padded_forward(model, ids, mask)
    out = model(ids, mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref) + 1
    for a, b in zip(ref, out.hidden_states[1:]):
        assert (a - b).abs().max() < TOL  # padding positions too
    assert (out.last_hidden_state - ref[-1]).abs().max() < TOL
    weights = model(ids, mask, output_attentions=True)  # the explicit path, padded
    assert (weights.last_hidden_state - ref[-1]).abs().max() < TOL


@torch.no_grad()
@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_embedding_the_packed_rows_equals_packing_the_embeddings(family):
    """At inference RobertaModel embeds only the rows its layers run on (Embeddings.packed): the
    rows of the (B, T, C) embeddings, with token types, explicit positions and spare rows too."""
    torch.manual_seed(0)
    config = tiny_config(model_type="bert", type_vocab_size=2) if family == "bert" else tiny_config()
    emb = RobertaModel(config).eval().embeddings
    ids, mask = batch(left=(1,))
    T = ids.shape[1]
    cases = [{}, {"position_ids": torch.arange(T).expand_as(ids) + 2}]
    if family == "bert":
        cases.append({"token_type_ids": (torch.arange(T) > 3).long().expand_as(ids)})
    for packing in (Packing.from_mask(mask), Packing.from_mask(mask, round_rows=lambda n: 64)):
        for kw in cases:
            want = pack(emb(ids, **kw), packing)
            assert torch.equal(emb(ids, **kw, packing=packing), want), (family, kw)


@torch.no_grad()
def test_alone_equals_its_row_in_a_padded_batch(model, kernels_or_not):
    lengths = (11, 4, 7, 1, 11)
    ids, mask = batch(lengths, left=(1,))
    out = model(ids, mask).last_hidden_state
    for i in range(len(lengths)):
        row = ids[i][mask[i].bool()][None]
        alone = model(row).last_hidden_state[0]
        assert (alone - out[i][mask[i].bool()]).abs().max() < TOL


@torch.no_grad()
def test_no_padding_takes_the_padded_path_and_agrees(model):
    ids, _ = batch((9, 9))
    ones = torch.ones_like(ids)
    assert (model(ids, ones).last_hidden_state - model(ids).last_hidden_state).abs().max() == 0
    assert (model(ids).last_hidden_state - padded_forward(model, ids, ones)[-1]).abs().max() < TOL


@torch.no_grad()
@pytest.mark.parametrize("lengths,left", [((11, 4, 7, 1, 11), (1,)), ((9, 9, 9), ())])
def test_subset_mask_equals_full_forward_at_its_positions(model, lengths, left, kernels_or_not):
    """Padded (either side) and unpadded batches; wanted positions real or padding; a row with none."""
    ids, mask = batch(lengths, left=left, seed=8)
    full = model(ids, mask).last_hidden_state  # (B, T, C)
    want = torch.rand(ids.shape, generator=torch.Generator().manual_seed(9)) < 0.4
    want[:, 0], want[-1] = True, False
    out = model(ids, mask, subset_mask=want)
    assert out.last_hidden_state.shape == (int(want.sum()), full.shape[-1]) and out.pooler_output is None
    assert (out.last_hidden_state - full[want]).abs().max() < TOL
    both = model(ids, mask, subset_mask=want, output_hidden_states=True)  # the full path, then selected
    assert torch.equal(both.last_hidden_state, full[want]) and torch.equal(both.hidden_states[-1], full)


@torch.no_grad()
def test_a_subset_of_real_tokens_packs_no_slots(model):
    """Where the wanted positions are all real (a classifier's <s>, masked tokens), no padding
    position's state is read, so the layers run on the real tokens alone: the same numbers."""
    ids, mask = batch(left=(1,), seed=8)
    full = model(ids, mask).last_hidden_state  # (B, T, C)
    want = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(9)) < 0.4) & mask.bool()
    rows = []
    hook = model.encoder.layers[0].register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    try:
        out = model(ids, mask, subset_mask=want).last_hidden_state
        padded_too = model(ids, mask, subset_mask=want | ~mask.bool()).last_hidden_state
    finally:
        hook.remove()
    assert rows == [int(mask.sum()), int(mask.sum()) + int((~mask.bool()).any(dim=1).sum())]
    assert (out - full[want]).abs().max() < TOL and (padded_too - full[want | ~mask.bool()]).abs().max() < TOL


@torch.no_grad()
@pytest.mark.parametrize("left", [(1,), ()])
def test_wanting_every_real_token_runs_the_layers_on_them_alone(model, left, kernels_or_not):
    """subset_mask = the attention mask (an embedder reads the real tokens): every layer, the last
    included, runs whole on the real tokens (no slots, no last-layer subset); their states come back
    in row-major order. Also without padding, where the (B, T) rows are all wanted."""
    ids, mask = batch(left=left, seed=8)
    full = model(ids, mask).last_hidden_state  # (B, T, C)
    calls = []
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((args[0].shape[0], kwargs.get("subset"))), with_kwargs=True
        )
        for layer in model.encoder.layers
    ]
    try:
        out = model(ids, mask, subset_mask=mask.bool()).last_hidden_state
        unpadded = model(ids, subset_mask=torch.ones_like(mask, dtype=torch.bool)).last_hidden_state
    finally:
        [hook.remove() for hook in hooks]
    L = len(model.encoder.layers)
    assert calls[:L] == [(int(mask.sum()), None)] * L and all(subset is None for _, subset in calls)
    assert (out - full[mask.bool()]).abs().max() < TOL
    assert torch.equal(unpadded, model(ids).last_hidden_state.flatten(0, 1))


def test_a_packing_without_slots_has_only_real_rows():
    real = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]])
    p = Packing.from_mask(real, slots=False)
    assert p.indices.tolist() == [0, 1, 5, 6, 7, 8, 9, 10, 11, 12, 14] and p.sizes == p.lengths == (
        2,
        3,
        4,
        2,
    )
    qkv, with_slots = torch.randn(4, 4, 3, 2, 8), Packing.from_mask(real)
    is_real = real.bool().flatten()[with_slots.indices]  # (14,) the rows that are not slots
    got, want_all = packed_attention(pack(qkv, p), p), packed_attention(pack(qkv, with_slots), with_slots)
    assert got.shape == (11, 16) and (got - want_all[is_real]).abs().max() < TOL
    want = real.bool() & torch.tensor([[1, 0, 1, 1]] * 4).bool()
    sub = p.rows_of(want)
    assert sub.indices.tolist() == [0, 3, 4, 5, 7, 8, 9, 10] and sub.counts == (1, 2, 3, 2)
    with pytest.raises(ValueError, match="no padding slots"):
        p.rows_of(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no padding slots"):
        unpack(torch.zeros(11, 16), p)


@torch.no_grad()
def test_classifier_logits_equal_with_and_without_the_last_layer_subset():
    torch.manual_seed(4)
    clf = RobertaForSequenceClassification(tiny_config()).eval()
    ids, mask = batch(left=(2,), seed=10)
    fast = clf(ids, mask).logits
    full = clf(ids, mask, output_hidden_states=True)  # every position of every layer computed
    assert (fast - full.logits).abs().max() < TOL
    assert (fast - clf.classifier(full.hidden_states[-1][:, 0])).abs().max() < TOL


def test_sparse_mlm_logits_and_gradients_equal_the_dense_ones():
    torch.manual_seed(5)
    mlm = RobertaForMaskedLM(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).train()
    ids, mask = batch(seed=11)
    labels = torch.full_like(ids, -100)
    keep = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(12)) < 0.2) & mask.bool()
    keep[0, 1] = True
    labels[keep] = ids[keep]

    def sparse():
        return mlm(ids, mask, labels=labels, sparse_logits=True)

    def dense():
        return mlm(ids, mask, labels=labels)

    assert (sparse().logits - dense().logits[keep]).abs().max() < TOL
    a, b = grads(mlm, lambda: sparse().loss), grads(mlm, lambda: dense().loss)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < TOL, name


def grads(model, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradients_equal_in_training_mode_without_dropout():
    """A QA loss takes its softmax over all T positions, padding included, as transformers does:
    the padding slots must carry the same values and gradients as the padded path."""
    torch.manual_seed(1)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    qa = RobertaForQuestionAnswering(config).train()
    ids, mask = batch(left=(0,), seed=3)
    starts, ends = torch.tensor([0, 1, 2, 0, 5]), torch.tensor([3, 2, 4, 0, 9])

    def fast():
        return qa(ids, mask, start_positions=starts, end_positions=ends).loss

    def padded():
        h = padded_forward(qa.roberta, ids, mask)[-1]
        start, end = qa.qa_outputs(h).unbind(-1)
        return (F.cross_entropy(start, starts) + F.cross_entropy(end, ends)) / 2

    assert abs(fast().item() - padded().item()) < TOL
    a, b = grads(qa, fast), grads(qa, padded)
    assert a.keys() == b.keys() and len(a) == len(list(qa.parameters()))
    for name in a:
        assert (a[name] - b[name]).abs().max() < TOL, name


def test_classifier_training_step_matches_with_dropout_off():
    torch.manual_seed(2)
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    clf = RobertaForSequenceClassification(config).train()
    ids, mask = batch(seed=4)
    labels = torch.tensor([0, 1, 1, 0, 1])
    a = grads(clf, lambda: clf(ids, mask, labels=labels).loss)
    b = grads(
        clf, lambda: F.cross_entropy(clf.classifier(padded_forward(clf.roberta, ids, mask)[-1][:, 0]), labels)
    )
    for name in a:
        assert (a[name] - b[name]).abs().max() < TOL, name


def test_training_with_dropout_runs_on_the_unpadded_path():
    torch.manual_seed(3)
    model = RobertaModel(tiny_config()).train()
    ids, mask = batch()
    out = model(ids, mask).last_hidden_state
    out[mask.bool()].sum().backward()
    assert torch.isfinite(model.embeddings.word.weight.grad).all()


@torch.no_grad()
def test_bf16_weights_stay_close_to_fp32(model):
    """The opt-in bf16 mode (`from_pretrained(..., dtype=torch.bfloat16)`): states after
    LayerNorm are O(1); bf16 keeps 8 bits of mantissa, so we allow 0.1 absolute."""
    ids, mask = batch(seed=5)
    ref = model(ids, mask).last_hidden_state
    half = RobertaModel(tiny_config()).eval()
    half.load_state_dict(model.state_dict())
    out = half.to(torch.bfloat16)(ids, mask).last_hidden_state
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref)[mask.bool()].abs().max() < 0.1
