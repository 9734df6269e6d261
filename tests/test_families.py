"""The families on RoBERTa's encoder: XLM-R, CamemBERT and DistilRoBERTa against transformers.

For each family, tiny random checkpoints saved by transformers (the base model and every head)
load here with the same outputs within 1e-5 on a padded batch, and ours, saved, load in
transformers' Auto classes as the family's own class with the same outputs. config.json keeps the
family (`model_type`, class names); the task registry reads a family's class names as RoBERTa's.
The family's tokenizers are in the second half: ids, pairs, offsets and overflow windows equal to
transformers' tokenizer of each family, from tokenizer.json and from `sentencepiece.bpe.model`.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_heads import TOL, hf_config, labels_for, outputs_agree, padded_batch

from roberta import RobertaConfig, RobertaModel
from roberta.architectures import architecture_class, saved_as
from roberta.config import FAMILIES, roberta_architecture
from roberta.heads import RobertaForSequenceClassification
from roberta.tasks import task_of

transformers = pytest.importorskip("transformers")

# family: (transformers config class, its prefix, config overrides). DistilRoBERTa is a 6-layer
# RoBERTa; CamemBERT's <s> and </s> are 5 and 6 (fairseq's offset of 4).
FAMILY_CONFIGS = {
    "xlm-roberta": ("XLMRobertaConfig", "XLMRoberta", {}),
    "camembert": ("CamembertConfig", "Camembert", dict(bos_token_id=5, eos_token_id=6)),
    "distilroberta": ("RobertaConfig", "Roberta", dict(num_hidden_layers=6)),
}
# head: (labels_for's name, config overrides); "Model" is the bare encoder
HEADS = {
    "Model": (None, {}),
    "ForMaskedLM": ("masked_lm", {}),
    "ForSequenceClassification": ("single_label", dict(num_labels=3)),
    "ForTokenClassification": ("token", dict(num_labels=5)),
    "ForQuestionAnswering": ("qa", {}),
    "ForMultipleChoice": ("multiple_choice", {}),
}


def family_config(family: str, **kw):
    config_name, _, overrides = FAMILY_CONFIGS[family]
    # RoBERTa's real values where transformers has BERT's; the model_type is the config class's own
    values = {k: v for k, v in hf_config(**overrides, **kw).to_dict().items() if k != "model_type"}
    return getattr(transformers, config_name)(**values)


def batch_for(head: str, seed: int = 0):
    """(ids, mask, labels) of a padded batch; multiple choice: 2 questions x 3 choices."""
    if head != "ForMultipleChoice":
        ids, mask = padded_batch(seed=seed)
        name = HEADS[head][0]
        return ids, mask, ({} if name is None else labels_for(name, ids, mask))
    ids, mask = padded_batch(lengths=(9, 3, 6, 5, 2, 7), seed=seed)
    return ids.view(2, 3, -1), mask.view(2, 3, -1), {"labels": torch.tensor([2, 0])}


def agree(head: str, ref, out, mask) -> None:
    if head == "Model":
        real = mask.bool()
        assert (ref.last_hidden_state[real] - out.last_hidden_state[real]).abs().max() < TOL
        assert (ref.pooler_output - out.pooler_output).abs().max() < TOL
    else:
        outputs_agree(ref, out, mask)


CASES = [(f, h) for f in FAMILY_CONFIGS for h in HEADS]


@pytest.mark.parametrize("family,head", CASES, ids=[f"{f}-{h}" for f, h in CASES])
@torch.no_grad()
def test_checkpoints_of_each_family_load_both_ways(family, head, tmp_path):
    prefix = FAMILY_CONFIGS[family][1]
    torch.manual_seed(0)
    hf = getattr(transformers, prefix + head)(family_config(family, **HEADS[head][1])).eval()
    hf.save_pretrained(tmp_path / "hf")
    # transformers -> ours: the registry picks our class from the family's name
    cls = architecture_class(tmp_path / "hf")
    assert cls.__name__ == "Roberta" + head
    ours = cls.from_pretrained(tmp_path / "hf")
    assert ours.config.model_type == hf.config.model_type
    ids, mask, labels = batch_for(head)
    agree(head, hf(input_ids=ids, attention_mask=mask, **labels), ours(ids, mask, **labels), mask)
    # ours -> transformers: written under the family's names, loaded by the Auto class as the same class
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == hf.config.model_type and config["architectures"] == [prefix + head]
    auto = transformers.AutoModel if head == "Model" else getattr(transformers, "AutoModel" + head)
    ref, info = auto.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert type(ref) is type(hf) and not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, labels = batch_for(head, seed=2)
    agree(head, ref.eval()(input_ids=ids, attention_mask=mask, **labels), ours(ids, mask, **labels), mask)


def test_distilroberta_is_a_six_layer_roberta(tmp_path):
    torch.manual_seed(0)
    transformers.RobertaForMaskedLM(family_config("distilroberta")).save_pretrained(tmp_path)
    ours = architecture_class(tmp_path).from_pretrained(tmp_path)
    assert ours.config.num_hidden_layers == 6 and ours.config.model_type == "roberta"


@pytest.mark.parametrize("family", ["xlm-roberta", "camembert"])
def test_a_family_keeps_its_name_through_our_models(family, tmp_path):
    """A family's config made here (not by transformers) saves under its names, and the registry
    and the task of each head read them as RoBERTa's."""
    config = RobertaConfig.from_dict({**family_config(family).to_dict(), "num_labels": 3})
    assert config.model_type == family and config.to_dict()["model_type"] == family
    RobertaForSequenceClassification(config).save_pretrained(tmp_path / "cls")
    assert RobertaConfig.from_json_file(tmp_path / "cls" / "config.json") == config
    assert saved_as(tmp_path / "cls", RobertaForSequenceClassification)
    assert task_of(tmp_path / "cls") == "classify"
    RobertaModel(config).save_pretrained(tmp_path / "base")
    assert task_of(tmp_path / "base") == "fill-mask"
    assert json.loads((tmp_path / "base" / "config.json").read_text())["architectures"] == [
        FAMILIES[family].prefix + "Model"
    ]


def test_family_class_names_read_as_roberta_names():
    assert roberta_architecture("XLMRobertaForTokenClassification") == "RobertaForTokenClassification"
    assert roberta_architecture("CamembertModel") == "RobertaModel"
    assert roberta_architecture("RobertaForMaskedLM") == "RobertaForMaskedLM"
    assert roberta_architecture("EncoderDecoderModel") == "EncoderDecoderModel"
    assert roberta_architecture("BertForMaskedLM") == "RobertaForMaskedLM"
    assert roberta_architecture("BertForPreTraining") == "RobertaForMaskedLM"
    assert roberta_architecture("DebertaV2ForMaskedLM") == "DebertaV2ForMaskedLM"


def test_an_unknown_model_type_is_one_clear_error(tmp_path):
    torch.manual_seed(0)
    config = {**hf_config().to_dict(), "model_type": "deberta-v2", "architectures": ["DebertaV2Model"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"config.json: .*'model_type' is 'deberta-v2'.*roberta, xlm-roberta, camembert, bert \(RoBERTa, XLM-R, CamemBERT, BERT\)",
    ):
        RobertaModel.from_pretrained(tmp_path)


# ---- tokenizers: XLM-R and CamemBERT, from sentencepiece.bpe.model and from tokenizer.json ------

TEXTS = [
    "The old man walked slowly to the <mask>.",
    "Zwei junge Männer spielen Fußball auf der Straße.",
    "Ça va? Größe, naïve café",
    "Привет, мир! Как дела?",
    "日本語のテキストと中文",
    "مرحبا بالعالم",
    "combining: e\u0301te\u0301 and n\u0303",
    "emoji: I ❤️ 🍕 and 👩‍👩‍👧!",
    "<mask> at the start, and<mask>glued, and two <mask> <mask>",
    "  spaces   between\twords\nand lines  ",
    "",
]
PAIRS = [(TEXTS[0], TEXTS[1]), ("Wer spielt?", TEXTS[2] * 3), (TEXTS[3], TEXTS[7])]
TOKENIZER_CLASSES = {"xlm-roberta": "XLMRobertaTokenizer", "camembert": "CamembertTokenizer"}


@pytest.fixture(scope="module")
def sentencepiece_model(data_dir, tmp_path_factory):
    """A Unigram SentencePiece model (vocabulary 1,000) trained on 3,000 English and 3,000 German
    lines of Multi30k, as XLM-R's and CamemBERT's are (SentencePiece's <unk> <s> </s> at 0..2)."""
    spm = pytest.importorskip("sentencepiece")
    lines = []
    for name in ("train.en", "train.de"):
        lines += (data_dir / "multi30k" / name).read_text(encoding="utf-8").splitlines()[:3000]
    prefix = tmp_path_factory.mktemp("spm") / "sp"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(prefix),
        vocab_size=1000,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module", params=list(TOKENIZER_CLASSES))
def family_tokenizers(request, sentencepiece_model, tmp_path_factory):
    """(family, transformers' tokenizer, ours from sentencepiece.bpe.model, ours from the
    tokenizer.json that transformers saved, that folder)."""
    from tokenizers import AddedToken

    from roberta.tokenizer import Tokenizer

    family = request.param
    spm_dir = tmp_path_factory.mktemp(f"{family}-spm")
    (spm_dir / "sentencepiece.bpe.model").write_bytes(sentencepiece_model.read_bytes())
    (spm_dir / "config.json").write_text(json.dumps({"model_type": family}))  # how the family is told
    # <mask> takes the space before it, as in fairseq, RoBERTa and the Hub's tokenizer.json of both
    # families (transformers 5 gives XLM-R's lstrip=False when it builds one from the .model)
    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    ref = getattr(transformers, TOKENIZER_CLASSES[family]).from_pretrained(spm_dir, mask_token=mask)
    json_dir = tmp_path_factory.mktemp(f"{family}-json")
    ref.save_pretrained(json_dir)
    return family, ref, Tokenizer.from_pretrained(spm_dir), Tokenizer.from_pretrained(json_dir), json_dir


KEYS = ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask")


def as_lists(encoding, key):
    rows = encoding[key]
    return [[tuple(x) for x in r] for r in rows] if key == "offset_mapping" else rows


def assert_same(ours, ref, *args, **kw) -> None:
    """ids, masks, offsets (and the overflow mapping) of ours and transformers' tokenizer agree."""
    kw.update(return_offsets_mapping=True, return_special_tokens_mask=True)
    a, b = ours(*args, **kw), ref(*args, **kw)
    keys = KEYS + (("overflow_to_sample_mapping",) if kw.get("return_overflowing_tokens") else ())
    for key in keys:
        assert as_lists(a, key) == as_lists(b, key), (key, args, kw)


def test_family_tokenizers_equal_transformers(family_tokenizers):
    family, ref, from_model, from_json, _ = family_tokenizers
    for ours in (from_model, from_json):
        assert ours.model_type == family and len(ours) == len(ref)
        assert [
            ours.bos_token_id,
            ours.pad_token_id,
            ours.eos_token_id,
            ours.unk_token_id,
            ours.mask_token_id,
        ] == [
            ref.bos_token_id,
            ref.pad_token_id,
            ref.eos_token_id,
            ref.unk_token_id,
            ref.mask_token_id,
        ]
        assert_same(ours, ref, TEXTS, padding=True)
        assert_same(ours, ref, [p[0] for p in PAIRS], [p[1] for p in PAIRS], padding=True)
        assert_same(ours, ref, TEXTS, truncation=True, max_length=7)
        questions, contexts = ["Wer spielt?", "Что это?"], [TEXTS[1] + " " + TEXTS[2], TEXTS[3] + TEXTS[7]]
        window = dict(truncation="only_second", max_length=16, stride=3, return_overflowing_tokens=True)
        assert_same(ours, ref, questions, contexts, padding="max_length", **window)
        words = [t.split() for t in TEXTS if t.strip()]
        assert_same(ours, ref, words, is_split_into_words=True, padding=True)
        assert ours(words, is_split_into_words=True).word_ids(1) == ref(
            words, is_split_into_words=True
        ).word_ids(1)
        ids = ref(TEXTS)["input_ids"]
        assert ours.batch_decode(ids, skip_special_tokens=True) == ref.batch_decode(
            ids, skip_special_tokens=True
        )


def test_fairseq_ids_of_the_sentencepiece_vocabulary(family_tokenizers, sentencepiece_model):
    """XLM-R: SentencePiece id i is i + 1; CamemBERT: i + 4, with <s> </s> at 5, 6; <mask> last."""
    import sentencepiece

    family, _, ours, _, _ = family_tokenizers
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    offset = {"xlm-roberta": 1, "camembert": 4}[family]
    for i in (3, 4, 100, sp.get_piece_size() - 1):
        assert ours.convert_tokens_to_ids(sp.id_to_piece(i)) == i + offset
    assert ours.mask_token_id == sp.get_piece_size() + offset == len(ours) - 1
    specials = {"xlm-roberta": [0, 1, 2, 3], "camembert": [5, 1, 6, 3]}[family]
    assert [ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id] == specials


def test_a_family_tokenizer_json_is_kept_as_the_file_says(family_tokenizers, tmp_path):
    from tokenizers import models, pre_tokenizers

    family, ref, _, ours, json_dir = family_tokenizers
    assert isinstance(ours.backend.model, models.Unigram)
    assert not isinstance(ours.backend.pre_tokenizer, pre_tokenizers.ByteLevel)
    # saved by us: tokenizer.json and the family's class, which transformers' AutoTokenizer builds
    ours.save_pretrained(tmp_path)
    assert not (tmp_path / "vocab.json").exists()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == TOKENIZER_CLASSES[family]
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is type(ref)
    assert again(TEXTS)["input_ids"] == ref(TEXTS)["input_ids"]


def test_a_folder_without_a_tokenizer_names_what_it_found(tmp_path):
    from roberta.tokenizer import Tokenizer

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "spiece.model").write_text("not ours\n")
    with pytest.raises(
        FileNotFoundError, match=r"found: config.json, spiece.model\); supported: tokenizer.json.*"
    ):
        Tokenizer.from_pretrained(tmp_path)


def test_a_sentencepiece_model_of_no_known_family_is_a_clear_error(sentencepiece_model, tmp_path):
    from roberta.tokenizer import Tokenizer

    (tmp_path / "sentencepiece.bpe.model").write_bytes(sentencepiece_model.read_bytes())
    with pytest.raises(ValueError, match="cannot tell whose SentencePiece vocabulary.*xlm-roberta"):
        Tokenizer.from_pretrained(tmp_path)


def test_without_sentencepiece_the_error_names_the_extra(sentencepiece_model, monkeypatch):
    import sys

    from roberta.tokenizer import Tokenizer

    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match=r"pip install 'roberta\[sentencepiece\]'"):
        Tokenizer.from_sentencepiece(sentencepiece_model)


@torch.no_grad()
def test_fill_mask_runs_on_a_family_folder(family_tokenizers, tmp_path):
    """A whole family folder (transformers' tiny masked LM + its tokenizer.json) serves fill-mask:
    the same top tokens as transformers' masked LM on the same ids."""
    from roberta.tasks import FillMask

    family, ref_tok, _, _, json_dir = family_tokenizers
    overrides = dict(
        vocab_size=len(ref_tok), bos_token_id=ref_tok.bos_token_id, eos_token_id=ref_tok.eos_token_id
    )
    config_name = {"xlm-roberta": "XLMRobertaConfig", "camembert": "CamembertConfig"}[family]
    values = {k: v for k, v in hf_config(**overrides).to_dict().items() if k != "model_type"}
    torch.manual_seed(0)
    hf = transformers.AutoModelForMaskedLM.from_config(getattr(transformers, config_name)(**values)).eval()
    hf.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((json_dir / name).read_bytes())
    assert task_of(tmp_path) == "fill-mask"
    text = "Zwei Männer gehen zur <mask>."
    best = FillMask.from_pretrained(tmp_path).fill_mask(text, top_k=3)
    batch = ref_tok(text, return_tensors="pt")
    logits = hf(**batch).logits[0, batch["input_ids"][0].tolist().index(ref_tok.mask_token_id)]
    assert [p["token"] for p in best] == logits.topk(3).indices.tolist()
