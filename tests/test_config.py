from __future__ import annotations

import json

import pytest

from roberta import RobertaConfig


def test_defaults_are_roberta_base(data_dir):
    """Our defaults equal the real roberta-base config.json."""
    real = json.loads((data_dir / "roberta-base-tokenizer" / "config.json").read_text())
    ours = RobertaConfig().to_dict()
    for key, value in real.items():
        if key not in ("architectures", "model_type"):
            assert ours[key] == value, key
    assert RobertaConfig.from_dict(real) == RobertaConfig()


def test_presets():
    large = RobertaConfig.large()
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    assert RobertaConfig.base().max_length == 512
    assert RobertaConfig.small().max_length == 128


def test_json_round_trip_keeps_unknown_keys_and_labels(tmp_path):
    d = RobertaConfig(num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}).to_dict()
    d["some_future_key"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(d))
    config = RobertaConfig.from_json_file(tmp_path / "config.json")
    assert config.extra["some_future_key"] == {"a": 1}
    assert config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    config.save_json(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["some_future_key"] == {"a": 1} and again["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}


def test_transformers_reads_our_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    RobertaConfig.small(position_embedding_type="learned").save_json(tmp_path / "config.json")
    hf = transformers.AutoConfig.from_pretrained(tmp_path)
    assert (hf.hidden_size, hf.vocab_size, hf.layer_norm_eps, hf.type_vocab_size) == (256, 8192, 1e-5, 1)


def test_bad_values_are_clear():
    with pytest.raises(ValueError, match="divisible"):
        RobertaConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="position_embedding_type"):
        RobertaConfig(position_embedding_type="rotary")
    with pytest.raises(ValueError, match="RoBERTa uses 'gelu'"):
        RobertaConfig(hidden_act="swish")
