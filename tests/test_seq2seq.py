"""The encoder-decoder (roberta.seq2seq) against transformers' EncoderDecoderModel.

A tiny random transformers EncoderDecoderModel of each family (RobertaModel encoder and
RobertaForCausalLM decoder; BertModel and BertLMHeadModel) is saved and loaded here: logits, loss, greedy and beam-search outputs must be
transformers'. Its LM head is biased towards </s> so that hypotheses end at different steps.
"""

from __future__ import annotations

import json

import pytest
import torch

from roberta import RobertaConfig, RobertaForMaskedLM
from roberta.predict import load_for_inference
from roberta.seq2seq import EncoderDecoder

transformers = pytest.importorskip("transformers")
# transformers warns that the loss moved into EncoderDecoderModel in v4.12: what is compared here
pytestmark = pytest.mark.filterwarnings("ignore:Version v4.12.0 introduces:FutureWarning")

TINY = dict(
    vocab_size=60,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=40,
    type_vocab_size=1,
    initializer_range=0.3,  # peaky outputs: inputs change the predictions, no near-ties
)


# family -> (config class, encoder class, causal-LM decoder class, the decoder's output bias)
FAMILIES = {
    "roberta": ("RobertaConfig", "RobertaModel", "RobertaForCausalLM", lambda m: m.lm_head.bias),
    "bert": ("BertConfig", "BertModel", "BertLMHeadModel", lambda m: m.cls.predictions.bias),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def hf_model(request, tmp_path_factory):
    """(transformers model in eval mode, the folder it was saved to), for each family."""
    config_class, encoder_class, decoder_class, bias = (
        getattr(transformers, c) if isinstance(c, str) else c for c in FAMILIES[request.param]
    )
    torch.manual_seed(0)
    encoder = encoder_class(config_class(**TINY, pad_token_id=1))
    decoder = decoder_class(config_class(**TINY, pad_token_id=1, is_decoder=True, add_cross_attention=True))
    with torch.no_grad():
        bias(decoder)[2] += 3.0  # </s> likely: hypotheses end after a few tokens
    model = transformers.EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id = 0, 1, 2
    model.generation_config = transformers.GenerationConfig.from_model_config(model.config)
    folder = tmp_path_factory.mktemp("hf-seq2seq")
    model.save_pretrained(folder)
    return model.eval(), folder


def source(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S) random source ids with right padding in some rows, and the mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5, 7, 1]
    ids = torch.ones(len(lengths), 7, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, TINY["vocab_size"], (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


def test_logits_and_loss_match_transformers(hf_model):
    hf, folder = hf_model
    ours = EncoderDecoder.from_pretrained(folder)
    ids, mask = source()
    labels = torch.randint(3, TINY["vocab_size"], (5, 6), generator=torch.Generator().manual_seed(1))
    labels[1, 3:], labels[4, 1:] = -100, -100
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(ids, mask, labels=labels)
    real = labels.ne(-100)
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "num_beams, length_penalty",
    [(1, 1.0), (3, 1.0), (4, 0.6), (4, 2.0)],
    ids=["greedy", "beam3", "lp0.6", "lp2"],
)
def test_generation_matches_transformers(hf_model, num_beams, length_penalty):
    hf, folder = hf_model
    ours = EncoderDecoder.from_pretrained(folder)
    lengths = []
    for seed in range(3):
        ids, mask = source(seed)
        want = hf.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=num_beams,
            length_penalty=length_penalty,
            do_sample=False,
            max_new_tokens=12,
        )
        got = ours.generate(ids, mask, num_beams=num_beams, max_new_tokens=12, length_penalty=length_penalty)
        assert got == [without_specials(row) for row in want.tolist()]
        lengths += [len(g) for g in got]
    assert min(lengths) < 12 and max(lengths) == 12  # some ended at </s>, some at the limit


def without_specials(row: list[int]) -> list[int]:
    """transformers' output row `<s> ... </s> <pad>...` -> the tokens between."""
    row = row[1:]
    return row[: row.index(2)] if 2 in row else row


def test_saved_checkpoint_loads_in_transformers(hf_model, tmp_path):
    _, folder = hf_model
    ours = EncoderDecoder.from_pretrained(folder)
    ours.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "encoder-decoder" and config["architectures"] == ["EncoderDecoderModel"]
    assert config["decoder"]["is_decoder"] and config["decoder"]["add_cross_attention"]
    hf = transformers.EncoderDecoderModel.from_pretrained(tmp_path).eval()
    ids, mask = source()
    decoder_ids = torch.randint(3, TINY["vocab_size"], (5, 4))
    with torch.no_grad():
        want = ours(ids, mask, decoder_input_ids=decoder_ids).logits
        got = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [None, torch.int8])  # int8 quantizes each token alone: still equal
def test_cached_steps_equal_the_full_forward(hf_model, dtype):
    ours = load_for_inference(EncoderDecoder, hf_model[1], device="cpu", dtype=dtype)
    ids, mask = source()
    target = torch.randint(3, TINY["vocab_size"], (5, 6))
    with torch.no_grad():
        full, _ = ours.decoder(target, *ours.encode(ids, mask))  # (B, T, C)
        memory_kv, memory_mask = ours.encode(ids, mask)
        past, steps = None, []
        for t in range(target.shape[1]):
            h, past = ours.decoder(target[:, t : t + 1], memory_kv, memory_mask, past)
            steps.append(h)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_source_padding_does_not_change_the_translation(hf_model):
    ours = EncoderDecoder.from_pretrained(hf_model[1])
    ids, mask = source()
    for limit in (10, None):  # None: each source's own limit (its length x 2 + 10), whatever its batchmates
        batched = ours.generate(ids, mask, num_beams=3, max_new_tokens=limit)
        alone = [
            ours.generate(i[m.bool()][None], num_beams=3, max_new_tokens=limit)[0] for i, m in zip(ids, mask)
        ]
        assert batched == alone


def test_from_encoder_pretrained_copies_roberta_into_both_stacks(tmp_path):
    torch.manual_seed(0)
    config = RobertaConfig(**{k: v for k, v in TINY.items() if k != "initializer_range"})
    mlm = RobertaForMaskedLM(config)
    mlm.save_pretrained(tmp_path)
    model = EncoderDecoder.from_encoder_pretrained(tmp_path)
    body = mlm.roberta.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in model.encoder.state_dict().items())
    for k, v in model.decoder.state_dict().items():
        if k.startswith("lm_head."):
            assert torch.equal(v, mlm.lm_head.state_dict()[k.removeprefix("lm_head.")])
        elif ".cross." in k or ".norm_cross." in k:
            continue  # fresh
        else:
            ref = body[k.replace("layers.", "encoder.layers.")] if k.startswith("layers.") else body[k]
            assert torch.equal(v, ref), k
    assert model.decoder.lm_head.decoder.weight is model.decoder.embeddings.word.weight  # tied
    assert model.training
    # it learns: a few steps on one batch lower the loss
    ids, mask = source()
    labels = torch.randint(3, TINY["vocab_size"], (5, 6), generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(ids, mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_from_encoder_pretrained_warm_starts_bert_as_transformers_bert2bert(tmp_path):
    """A BERT masked LM (no bos/eos in its config) starts both stacks; generation starts at [CLS]
    and ends at [SEP], from the folder's tokenizer; the saved model loads in transformers with the
    same logits, its decoder a BertLMHeadModel."""
    torch.manual_seed(0)
    config = RobertaConfig.from_dict({"model_type": "bert", **TINY, "pad_token_id": 0})
    RobertaForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(TINY["vocab_size"] - 5))]
    (tmp_path / "mlm" / "vocab.txt").write_text("\n".join(words) + "\n")
    model = EncoderDecoder.from_encoder_pretrained(tmp_path / "mlm")
    assert (model.config.decoder_start_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        2,
        3,
        0,
    )
    model.eval().save_pretrained(tmp_path / "bert2bert")
    hf = transformers.EncoderDecoderModel.from_pretrained(tmp_path / "bert2bert").eval()
    assert type(hf.decoder).__name__ == "BertLMHeadModel" and hf.config.decoder_start_token_id == 2
    ids, mask = source()
    ids = ids.masked_fill(mask.eq(0), 0)  # BERT's padding id
    decoder_ids = torch.randint(5, TINY["vocab_size"], (5, 4))
    with torch.no_grad():
        want = model(ids, mask, decoder_input_ids=decoder_ids).logits
        got = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_plain_checkpoint_is_a_clear_error(tmp_path):
    RobertaForMaskedLM(
        RobertaConfig(**{k: v for k, v in TINY.items() if k != "initializer_range"})
    ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an encoder-decoder.*roberta finetune translate"):
        EncoderDecoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_beams must be at least 1"):
        EncoderDecoder.from_encoder_pretrained(tmp_path).generate(*source(), num_beams=0)
