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
    assert roberta_architecture("BertForMaskedLM") == "BertForMaskedLM"


def test_an_unknown_model_type_is_one_clear_error(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(
        transformers.BertConfig(**{**hf_config().to_dict(), "model_type": "bert"})
    ).save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match=r"config.json: .*'model_type' is 'bert'.*roberta, xlm-roberta, camembert"
    ):
        RobertaModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="BERT, MiniLM and sentence-transformers .* not supported yet"):
        RobertaConfig.from_dict({"model_type": "bert"})
