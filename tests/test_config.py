from __future__ import annotations

import dataclasses
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


# ---- validation: one ValueError naming the key, the value and what is expected --------------------


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("hidden_size", "256", r"'hidden_size' is '256' \(str\); expected an integer >= 1"),
        ("num_hidden_layers", True, r"'num_hidden_layers' is True \(bool\); expected an integer"),
        ("vocab_size", 8192.0, r"'vocab_size' is 8192.0 \(float\); expected an integer"),
        ("vocab_size", -1, r"'vocab_size' is -1 \(int\); expected an integer >= 1"),
        ("num_attention_heads", 0, r"'num_attention_heads' is 0 \(int\); expected an integer >= 1"),
        ("pad_token_id", None, r"'pad_token_id' is None \(NoneType\); expected an integer >= 0"),
        ("layer_norm_eps", 0, r"'layer_norm_eps' is 0 \(int\); expected a number > 0"),
        (
            "hidden_dropout_prob",
            float("nan"),
            r"'hidden_dropout_prob' is nan \(float\); expected a probability",
        ),
        (
            "classifier_dropout",
            "0.1",
            r"'classifier_dropout' is '0.1' \(str\); expected null or a probability",
        ),
        ("initializer_range", [0.02], r"'initializer_range' is \[0.02\] \(list\); expected a number >= 0"),
        ("position_embedding_type", ["learned"], r"'position_embedding_type' is \['learned'\] \(list\)"),
        ("problem_type", "ranking", r"'problem_type' is 'ranking' \(str\); expected null or one of"),
        ("hidden_size", [[[[[[1]]]]]], r"'hidden_size' is \[\[\[\.\.\.\]\]\] \(list\)"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(key, value, expected):
    with pytest.raises(ValueError, match=expected):
        RobertaConfig.from_dict({key: value})
    with pytest.raises(ValueError, match=expected):  # the Python constructor checks the same
        RobertaConfig(**{key: value})


def test_fields_that_must_fit_together():
    with pytest.raises(
        ValueError,
        match=r"'hidden_size' is 256 \(int\); expected a number divisible by num_attention_heads \(3\)",
    ):
        RobertaConfig.small(num_attention_heads=3)
    with pytest.raises(
        ValueError, match=r"'pad_token_id' is 60 \(int\); expected a token id in the vocabulary, 0\.\.59"
    ):
        RobertaConfig(vocab_size=60, pad_token_id=60)
    with pytest.raises(ValueError, match=r"'eos_token_id' is 2 \(int\); expected a token id .* 0\.\.1"):
        RobertaConfig(vocab_size=2, pad_token_id=1, bos_token_id=0)
    with pytest.raises(ValueError, match=r"'max_position_embeddings' is 2 .* at least pad_token_id \+ 2 = 3"):
        RobertaConfig(max_position_embeddings=2)


@pytest.mark.parametrize(
    "id2label, expected",
    [
        (
            ["neg", "pos"],
            r"'id2label' is \['neg', 'pos'\] \(list\); expected an object mapping the label ids",
        ),
        ({}, r"'id2label' is \{\} \(dict\); expected an object"),
        ({"a": "neg"}, r"'id2label' has the key 'a' \(str\)"),
        ({"0": "neg", "2": "pos"}, r"'id2label' has the key '2' \(str\); expected .* label ids 0\.\.n-1"),
        ({"0": ["neg"]}, r"'id2label' maps 0 to \['neg'\] \(list\)"),
        ({0: "neg", "0": "neg"}, r"'id2label' has the label id 0 twice"),
    ],
)
def test_bad_id2label(id2label, expected):
    with pytest.raises(ValueError, match=expected):
        RobertaConfig.from_dict({"id2label": id2label})


def test_bad_files_name_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"config\.json nests JSON too deeply to read"):
        RobertaConfig.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config\.json must hold a JSON object, got list"):
        RobertaConfig.from_json_file(path)
    path.write_text(json.dumps({"hidden_size": "256"}))
    with pytest.raises(ValueError, match=r"config\.json: config key 'hidden_size' is '256'"):
        RobertaConfig.from_json_file(path)
    path.write_text('{"vocab_size": 1' + "0" * 5000 + "}")  # past Python's int digit limit
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        RobertaConfig.from_json_file(path)
    with pytest.raises(ValueError, match="must be a JSON object"):
        RobertaConfig.from_dict([("hidden_size", 256)])


@pytest.mark.parametrize(
    "sizes",
    [
        dict(hidden_size=10**9, num_attention_heads=8),
        dict(vocab_size=10**9),
        dict(num_hidden_layers=10**6),
        dict(hidden_size=2**4000, num_attention_heads=1),
    ],
)
def test_sizes_that_cannot_fit_in_memory_are_refused(sizes, monkeypatch):
    import roberta.config

    monkeypatch.setattr(roberta.config, "available_memory", lambda: 64 * 2**30)
    with pytest.raises(
        ValueError,
        match=r"config sizes \(hidden_size .*\) make .* weights, .* GiB in fp32, "
        r"more than the 64 GiB of memory available; is a size in config.json wrong\?",
    ):
        RobertaConfig(**sizes)


def test_memory_check_uses_the_parameter_count(monkeypatch):
    import roberta.config
    from roberta import RobertaModel

    config = RobertaConfig.small(type_vocab_size=2)
    assert config.num_parameters() == sum(p.numel() for p in RobertaModel(config).parameters())
    assert RobertaConfig().num_parameters() == 124_645_632  # roberta-base's RobertaModel
    monkeypatch.setattr(roberta.config, "available_memory", lambda: 2**30)
    RobertaConfig.base()  # 0.46 GiB
    with pytest.raises(ValueError, match=r"make 3\.55e\+08 weights, 1\.32 GiB in fp32, more than the 1 GiB"):
        RobertaConfig.large()
    monkeypatch.setattr(roberta.config, "available_memory", lambda: None)  # unknown: no check
    assert RobertaConfig(vocab_size=10**9).vocab_size == 10**9


def test_configs_written_by_transformers_load(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.RobertaConfig(
        vocab_size=50265,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    hf.save_pretrained(tmp_path)  # the diff against PretrainedConfig, as on the Hub
    saved = RobertaConfig.from_json_file(tmp_path / "config.json")
    assert dataclasses.replace(saved, extra={}) == RobertaConfig()
    assert saved.extra["use_cache"] is True
    full = RobertaConfig.from_dict(hf.to_dict())  # every key, id2label and nulls included
    assert dataclasses.replace(full, extra={}, id2label=None) == RobertaConfig()
    assert full.id2label == {0: "LABEL_0", 1: "LABEL_1"}


def test_an_extra_key_that_is_not_an_object_is_kept_as_an_unknown_key():
    assert RobertaConfig.from_dict({"extra": [1]}).extra == {"extra": [1]}
    assert RobertaConfig.from_dict({"extra": {"a": 1}}).extra == {"a": 1}  # dataclasses.asdict's form
