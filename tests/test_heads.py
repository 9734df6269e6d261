"""Task heads against the reference: transformers' task models with random weights, both directions.

Each head is checked on a right-padded batch of mixed lengths: logits at real positions and the loss
within 1e-5 (fp32), loading transformers' save_pretrained folder here and ours there. Also: the
masked-LM decoder is the word embedding matrix (one tensor) before and after both round trips, and
base <-> task checkpoints load with a fresh head / an ignored head.
"""

from __future__ import annotations

import logging

import pytest
import torch

from roberta import (
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

transformers = pytest.importorskip("transformers")

TOL = 1e-5
VOCAB = 103
LENGTHS = (11, 4, 8, 1)  # B = 4, T = 11; the last row is a lone <s>


def hf_config(**kw):
    """Tiny, odd sizes (4 heads of 9), RoBERTa's real values where transformers defaults to BERT's."""
    base = dict(
        vocab_size=VOCAB,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=42,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        attn_implementation="eager",
    )
    return transformers.RobertaConfig(**{**base, **kw})


def padded_batch(lengths=LENGTHS, seed: int = 0):
    """(B, T) ids <s> ... </s> with right padding (id 1); attention_mask 1 = real token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), 1, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, VOCAB, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 0, 2
        mask[i, :n] = 1
    return ids, mask


def labels_for(name: str, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Labels of each task for a batch (B, T); -100 where a position must be ignored."""
    g = torch.Generator().manual_seed(1)
    B, T = ids.shape
    if name == "masked_lm":
        labels = torch.where(torch.rand(B, T, generator=g) < 0.4, ids, -100)
        return {"labels": labels.masked_fill(mask == 0, -100)}
    if name == "single_label":
        return {"labels": torch.randint(0, 3, (B,), generator=g)}
    if name == "multi_label":
        return {"labels": torch.randint(0, 2, (B, 4), generator=g).float()}
    if name == "regression":
        return {"labels": torch.randn(B, generator=g)}
    if name == "regression_2":  # two regression targets per text
        return {"labels": torch.randn(B, 2, generator=g)}
    if name == "token":
        return {"labels": torch.randint(0, 5, (B, T), generator=g).masked_fill(mask == 0, -100)}
    if name == "qa":  # row 0's answer lies outside the window (index T): ignored, as in transformers
        lengths = mask.sum(1)
        start = (torch.rand(B, generator=g) * lengths).long()
        end = torch.minimum(start + 2, lengths - 1)
        start[0], end[0] = T + 3, T + 5
        return {"start_positions": start, "end_positions": end}
    raise KeyError(name)


# name: (our class, transformers class name, config overrides)
HEADS = {
    "masked_lm": (RobertaForMaskedLM, "RobertaForMaskedLM", {}),
    "single_label": (
        RobertaForSequenceClassification,
        "RobertaForSequenceClassification",
        dict(num_labels=3),
    ),
    "multi_label": (
        RobertaForSequenceClassification,
        "RobertaForSequenceClassification",
        dict(num_labels=4, problem_type="multi_label_classification"),
    ),
    "regression": (RobertaForSequenceClassification, "RobertaForSequenceClassification", dict(num_labels=1)),
    "regression_2": (
        RobertaForSequenceClassification,
        "RobertaForSequenceClassification",
        dict(num_labels=2, problem_type="regression"),
    ),
    "token": (RobertaForTokenClassification, "RobertaForTokenClassification", dict(num_labels=5)),
    "qa": (RobertaForQuestionAnswering, "RobertaForQuestionAnswering", {}),
}


def outputs_agree(ref, out, mask: torch.Tensor) -> None:
    """Logits at real positions and the loss agree within TOL."""
    if hasattr(ref, "start_logits"):
        pairs = [(ref.start_logits, out.start_logits), (ref.end_logits, out.end_logits)]
    else:
        pairs = [(ref.logits, out.logits)]
    for a, b in pairs:
        assert a.shape == b.shape
        if a.dim() >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: padding is undefined
            a, b = a[mask.bool()], b[mask.bool()]
        assert (a - b).abs().max() < TOL
    assert ref.loss is not None and out.loss is not None
    assert abs(ref.loss.item() - out.loss.item()) < TOL


@pytest.fixture(scope="module", params=list(HEADS))
def head(request, tmp_path_factory):
    """(name, our class, transformers model in eval mode, the folder it was saved to)."""
    ours_cls, hf_name, overrides = HEADS[request.param]
    torch.manual_seed(0)
    hf = getattr(transformers, hf_name)(hf_config(**overrides)).eval()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return request.param, ours_cls, hf, folder


@torch.no_grad()
def test_hf_checkpoint_loads_here_with_same_logits_and_loss(head):
    name, ours_cls, hf, folder = head
    ours = ours_cls.from_pretrained(folder)
    ids, mask = padded_batch()
    labels = labels_for(name, ids, mask)
    outputs_agree(hf(input_ids=ids, attention_mask=mask, **labels), ours(ids, mask, **labels), mask)


@torch.no_grad()
def test_our_checkpoint_loads_in_transformers_with_same_logits_and_loss(head, tmp_path):
    name, ours_cls, hf, _ = head
    torch.manual_seed(1)
    ours = ours_cls(_our_config(hf)).eval()
    ours.save_pretrained(tmp_path)
    ref, info = getattr(transformers, type(hf).__name__).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = padded_batch(seed=2)
    labels = labels_for(name, ids, mask)
    outputs_agree(ref.eval()(input_ids=ids, attention_mask=mask, **labels), ours(ids, mask, **labels), mask)


def _our_config(hf):
    from roberta import RobertaConfig

    return RobertaConfig.from_dict(hf.config.to_dict())


# ---- multiple choice: (B, num_choices, T) -------------------------------------------------------


@torch.no_grad()
def test_multiple_choice_both_directions(tmp_path):
    torch.manual_seed(0)
    hf = transformers.RobertaForMultipleChoice(hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    ids, mask = padded_batch(lengths=(9, 3, 6, 5, 2, 7))
    ids, mask = ids.view(2, 3, -1), mask.view(2, 3, -1)  # 2 questions x 3 choices
    labels = torch.tensor([2, 0])
    ours = RobertaForMultipleChoice.from_pretrained(tmp_path / "hf")
    outputs_agree(hf(input_ids=ids, attention_mask=mask, labels=labels), ours(ids, mask, labels=labels), mask)

    torch.manual_seed(1)
    ours = RobertaForMultipleChoice(_our_config(hf)).eval()
    ours.save_pretrained(tmp_path / "ours")
    ref = transformers.RobertaForMultipleChoice.from_pretrained(tmp_path / "ours").eval()
    outputs_agree(
        ref(input_ids=ids, attention_mask=mask, labels=labels), ours(ids, mask, labels=labels), mask
    )


def test_multiple_choice_needs_three_dimensions():
    model = RobertaForMultipleChoice(_our_config(transformers.RobertaForMultipleChoice(hf_config())))
    with pytest.raises(ValueError, match="num_choices"):
        model(*padded_batch())


# ---- the masked-LM decoder is the word embedding matrix ----------------------------------------


def _mlm_logits(model, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, mask).logits


def assert_tied(ours: RobertaForMaskedLM) -> None:
    """One tensor under two names, and editing it through the embeddings changes the MLM output."""
    word = ours.roberta.embeddings.word.weight
    assert ours.lm_head.decoder.weight is word
    ids, mask = padded_batch()
    before = _mlm_logits(ours, ids, mask)
    with torch.no_grad():
        word[7] += torch.randn(word.shape[1])  # a constant shift would vanish: LayerNorm output sums to ~0
    after = _mlm_logits(ours, ids, mask)
    assert (after[..., 7] - before[..., 7]).abs().min() > 1e-3  # token 7's logit moved everywhere


def assert_hf_tied(hf) -> None:
    word = hf.roberta.embeddings.word_embeddings.weight
    assert hf.lm_head.decoder.weight.data_ptr() == word.data_ptr()
    ids, mask = padded_batch()
    with torch.no_grad():
        before = hf(input_ids=ids, attention_mask=mask).logits
        word[7] += torch.randn(word.shape[1])
        after = hf(input_ids=ids, attention_mask=mask).logits
    assert (after[..., 7] - before[..., 7]).abs().min() > 1e-3


def test_masked_lm_decoder_is_tied_in_both_directions(tmp_path):
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_config()).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert_tied(RobertaForMaskedLM.from_pretrained(tmp_path / "hf"))  # transformers -> ours

    ours = RobertaForMaskedLM(_our_config(hf)).eval()
    assert_tied(ours)  # a fresh model
    ours.save_pretrained(tmp_path / "ours")
    assert_tied(RobertaForMaskedLM.from_pretrained(tmp_path / "ours"))  # ours -> ours
    assert_hf_tied(transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "ours").eval())  # ours -> hf


def test_sparse_logits_equal_the_dense_ones_at_labelled_positions():
    torch.manual_seed(0)
    model = RobertaForMaskedLM(_our_config(transformers.RobertaForMaskedLM(hf_config()))).eval()
    ids, mask = padded_batch()
    labels = labels_for("masked_lm", ids, mask)["labels"]
    with torch.no_grad():
        dense, sparse = model(ids, mask, labels=labels), model(ids, mask, labels=labels, sparse_logits=True)
    assert torch.allclose(dense.logits[labels != -100], sparse.logits, atol=TOL)
    assert abs(dense.loss.item() - sparse.loss.item()) < TOL


@pytest.mark.parametrize("sparse_logits", [False, True])
def test_the_tied_matrix_gradient_is_transformers_dense_one(tmp_path, sparse_logits):
    """The lookup hands its rows on sparse (WordEmbedding.sparse_grad), summed into the decoder's
    dense gradient: the matrix's .grad is dense and transformers' own, and DistributedDataParallel,
    which reads nn.Embedding.sparse, is told to expect a dense one."""
    torch.manual_seed(0)
    hf = transformers.RobertaForMaskedLM(hf_config()).eval()
    hf.save_pretrained(tmp_path)
    ours = RobertaForMaskedLM.from_pretrained(tmp_path).eval()
    word = ours.roberta.embeddings.word
    assert word.sparse_grad and not word.sparse
    ids, mask = padded_batch()
    labels = labels_for("masked_lm", ids, mask)["labels"]
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    ours(ids, mask, labels=labels, sparse_logits=sparse_logits).loss.backward()
    ref = hf.roberta.embeddings.word_embeddings.weight.grad
    assert word.weight.grad.layout == torch.strided
    torch.testing.assert_close(word.weight.grad, ref, atol=1e-6, rtol=1e-4)
    clf = RobertaForSequenceClassification(_our_config(hf))
    assert not clf.roberta.embeddings.word.sparse_grad  # no decoder to sum into


def test_a_loss_that_skips_the_decoder_still_gives_the_word_matrix_a_dense_gradient():
    """Only the lookup's sparse rows reach the matrix: they are made dense after accumulation, so
    fused AdamW and gradient clipping, which take dense gradients only, still work."""
    torch.manual_seed(0)
    model = RobertaForMaskedLM(_our_config(transformers.RobertaForMaskedLM(hf_config()))).eval()
    ids, mask = padded_batch()
    grads = []
    for sparse in (True, False):
        model.roberta.embeddings.word.sparse_grad = sparse
        model.roberta(ids, mask).last_hidden_state.sum().backward()  # the encoder alone
        grads.append(model.roberta.embeddings.word.weight.grad)
        model.zero_grad(set_to_none=True)
    assert grads[0].layout == torch.strided
    torch.testing.assert_close(grads[0], grads[1])
    model.roberta.embeddings.word.sparse_grad = True
    model.roberta(ids, mask).last_hidden_state.sum().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    torch.optim.AdamW(model.parameters(), fused=True).step()


# ---- base <-> task checkpoints -----------------------------------------------------------------

TASK_CLASSES = [
    RobertaForMaskedLM,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaForQuestionAnswering,
    RobertaForMultipleChoice,
]


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    """(transformers RobertaModel, the folder of its checkpoint)."""
    torch.manual_seed(0)
    hf = transformers.RobertaModel(hf_config()).eval()
    folder = tmp_path_factory.mktemp("base")
    hf.save_pretrained(folder)
    return hf, folder


@pytest.mark.parametrize("cls", TASK_CLASSES, ids=lambda c: c.__name__)
def test_base_checkpoint_loads_into_every_task_model(cls, base_folder, caplog):
    hf, folder = base_folder
    with caplog.at_level(logging.WARNING, logger="roberta.checkpoint"):
        model = cls.from_pretrained(folder)
    assert "newly initialised" in caplog.text
    head = {"RobertaForMaskedLM": "lm_head", "RobertaForQuestionAnswering": "qa_outputs"}.get(
        cls.__name__, "classifier"
    )
    assert head in caplog.text
    ids, mask = padded_batch()
    with torch.no_grad():
        ref, out = hf(input_ids=ids, attention_mask=mask), model.roberta(ids, mask)
    real = mask.bool()
    assert (ref.last_hidden_state[real] - out.last_hidden_state[real]).abs().max() < TOL


@pytest.mark.parametrize("name", ["masked_lm", "single_label", "token", "qa"])
def test_task_checkpoint_loads_into_the_base_model(name, tmp_path, caplog):
    _, hf_name, overrides = HEADS[name]
    torch.manual_seed(0)
    hf = getattr(transformers, hf_name)(hf_config(**overrides)).eval()
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="roberta.checkpoint"):
        model = RobertaModel.from_pretrained(tmp_path)
    assert "not used by RobertaModel" in caplog.text  # the head is ignored, and said so
    ids, mask = padded_batch()
    with torch.no_grad():
        ref, out = hf.roberta(input_ids=ids, attention_mask=mask), model(ids, mask)
    real = mask.bool()
    assert (ref.last_hidden_state[real] - out.last_hidden_state[real]).abs().max() < TOL


# ---- configuration errors ----------------------------------------------------------------------


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels must be 2"):
        RobertaForQuestionAnswering(_our_config(transformers.RobertaModel(hf_config(num_labels=3))))


def test_multi_label_labels_of_the_wrong_shape_are_a_clear_error():
    hf = transformers.RobertaForSequenceClassification(
        hf_config(num_labels=4, problem_type="multi_label_classification")
    )
    model = RobertaForSequenceClassification(_our_config(hf)).eval()
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="multi-label labels must be"):
        model(ids, mask, labels=torch.ones(4, 3))
