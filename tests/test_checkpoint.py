"""Checkpoints in and out, strict loading, and clear errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from roberta import RobertaConfig, RobertaForMaskedLM, RobertaModel
from roberta.checkpoint import hf_names
from roberta.hub import resolve

SMALL = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(**SMALL, max_position_embeddings=20)).eval()
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_save_load_round_trip_is_exact(saved):
    model, folder = saved
    again = RobertaModel.from_pretrained(folder)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert again.config == model.config
    assert not again.training


def test_fp16_storage_loads_back_as_fp32(saved, tmp_path):
    model, _ = saved
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    again = RobertaModel.from_pretrained(tmp_path / "half")
    assert again.embeddings.word.weight.dtype == torch.float32
    assert (again.embeddings.word.weight - model.embeddings.word.weight).abs().max() < 1e-3


def test_pytorch_model_bin_is_read(saved, tmp_path):
    model, folder = saved
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.hf_state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    again = RobertaModel.from_pretrained(tmp_path / "bin")
    assert torch.equal(again.pooler.dense.weight, model.pooler.dense.weight)


def test_key_map_fuses_query_key_value():
    assert hf_names("encoder.layers.3.attn.qkv.bias") == (
        "encoder.layer.3.attention.self.query.bias",
        "encoder.layer.3.attention.self.key.bias",
        "encoder.layer.3.attention.self.value.bias",
    )
    assert hf_names("embeddings.norm.weight") == ("embeddings.LayerNorm.weight",)


def test_task_checkpoint_into_base_and_back(saved, tmp_path, caplog):
    _, folder = saved
    mlm = RobertaForMaskedLM.from_pretrained(folder)  # base -> task: fresh head, said so
    assert "newly initialised" in caplog.text and "lm_head" in caplog.text
    mlm.save_pretrained(tmp_path / "mlm")
    base = RobertaModel.from_pretrained(tmp_path / "mlm")  # task -> base: head ignored
    assert torch.equal(base.embeddings.word.weight, mlm.roberta.embeddings.word.weight)


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_weights_file(saved):
    _, folder = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors or pytorch_model.bin"):
        RobertaModel.from_pretrained(folder)


def test_corrupt_weights_file(saved):
    _, folder = saved
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        RobertaModel.from_pretrained(folder)


def test_corrupt_config(saved):
    _, folder = saved
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RobertaModel.from_pretrained(folder)


def test_config_that_does_not_match_the_weights(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=32, num_hidden_layers=1)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as e:
        RobertaModel.from_pretrained(folder)
    msg = str(e.value)
    assert "shapes that differ" in msg and "checkpoint (60, 16) vs model (60, 32)" in msg
    assert "in the checkpoint but not in the model: encoder.layer.1." in msg
    assert "Does config.json belong to these weights?" in msg


def test_missing_keys_are_named(saved):
    from safetensors.torch import load_file, save_file

    _, folder = saved
    weights = load_file(folder / "model.safetensors")
    del weights["encoder.layer.1.output.dense.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint: encoder\.layers\.1\.ffn\.fc2\.weight"
    ):
        RobertaModel.from_pretrained(folder)


def test_input_longer_than_positions_names_the_limit(saved):
    model, _ = saved
    ids = torch.full((1, 19), 5)
    with pytest.raises(
        ValueError, match=r"19 tokens .* holds 18; encode with truncation=True, max_length=18"
    ):
        model(ids)


def test_wrong_dtype_shape_and_range():
    model = RobertaModel(RobertaConfig(**SMALL))
    with pytest.raises(TypeError, match="integer token ids"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="add a batch dimension"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary 0..59"):
        model(torch.tensor([[0, 60, 2]]))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(torch.tensor([[0, 5, 2]]), torch.ones(1, 4))
    with pytest.raises(ValueError, match="0 tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of"):
        model()


def test_unknown_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="Are you offline"):
        resolve("no-such-org/no-such-model", ["config.json"])
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve("./does/not/exist", ["config.json"])


def test_file_instead_of_folder(saved):
    _, folder = saved
    with pytest.raises(NotADirectoryError, match="pass the folder"):
        RobertaModel.from_pretrained(folder / "config.json")


# ---- the checkpoint is checked before a model is built -------------------------------------------


@pytest.fixture
def real_inits(monkeypatch):
    """The device types of every module _init_weights initialises: 'meta' only means no full model."""
    from roberta.checkpoint import PretrainedModel

    seen: list[str] = []
    original = PretrainedModel._init_weights

    def spy(self, module):
        seen.extend(p.device.type for p in module.parameters(recurse=False))
        original(self, module)

    monkeypatch.setattr(PretrainedModel, "_init_weights", spy)
    return seen


def _base_size_folder(folder, weights):
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    RobertaConfig().save_json(folder / "config.json")  # roberta-base: 125M weights if built
    save_file(weights, folder / "model.safetensors")
    return folder


def test_empty_weights_fail_before_a_full_size_model_is_built(tmp_path, real_inits):
    folder = _base_size_folder(tmp_path / "empty", {})
    with pytest.raises(
        ValueError, match=r"missing from the checkpoint: roberta\.embeddings\.word\.weight, .* in all\)"
    ):
        RobertaForMaskedLM.from_pretrained(folder)
    assert "cpu" not in real_inits and "meta" in real_inits
    (folder / "model.safetensors").unlink()
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="missing from the checkpoint"):
        RobertaModel.from_pretrained(folder)
    torch.save([torch.zeros(1)], folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds a list, not a state dict"):
        RobertaModel.from_pretrained(folder)
    (folder / "pytorch_model.bin").unlink()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        RobertaModel.from_pretrained(folder)
    assert "cpu" not in real_inits


def test_weights_of_another_size_fail_before_a_full_size_model_is_built(saved, tmp_path, real_inits):
    model, _ = saved
    embeddings_only = {k: v for k, v in model.hf_state_dict().items() if k.startswith("embeddings.")}
    folder = _base_size_folder(tmp_path / "partial", embeddings_only)
    real_inits.clear()
    with pytest.raises(ValueError) as e:
        RobertaModel.from_pretrained(folder)
    assert "embeddings.word.weight: checkpoint (60, 16) vs model (50265, 768)" in str(e.value)
    assert "missing from the checkpoint: encoder.layers.0.attn.qkv.weight" in str(e.value)
    assert "cpu" not in real_inits


def test_tied_weights_stay_tied_and_fresh_heads_are_initialised(saved, tmp_path):
    _, folder = saved
    mlm = RobertaForMaskedLM.from_pretrained(folder)
    assert mlm.lm_head.decoder.weight is mlm.roberta.embeddings.word.weight
    assert mlm.lm_head.dense.weight.std() > 0  # a fresh head: initialised, not left empty
    mlm.save_pretrained(tmp_path / "mlm")
    again = RobertaForMaskedLM.from_pretrained(tmp_path / "mlm")
    assert again.lm_head.decoder.weight is again.roberta.embeddings.word.weight
    assert torch.equal(again.lm_head.decoder.weight, mlm.lm_head.decoder.weight)


# ---- weights that do not load: named, before anything is copied -----------------------------------


def _edit_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors")


def test_query_of_another_shape_is_named_before_fusing(saved):
    _, folder = saved
    query = "encoder.layer.0.attention.self.query.weight"
    _edit_weights(folder, lambda w: w.update({query: w[query][:8].contiguous()}))
    with pytest.raises(ValueError) as e:
        RobertaModel.from_pretrained(folder)
    msg = str(e.value)
    assert "shapes that differ: " + query + " (part of encoder.layers.0.attn.qkv.weight): " in msg
    assert "checkpoint (8, 16) vs model (16, 16)" in msg
    assert "self.key.weight" not in msg  # the parts that fit are not named


def test_non_finite_weights_are_refused_by_name(saved):
    _, folder = saved

    def poison(w):
        w["encoder.layer.1.output.dense.bias"][3] = float("nan")
        w["embeddings.word_embeddings.weight"][5, :2] = float("inf")

    _edit_weights(folder, poison)
    with pytest.raises(ValueError) as e:
        RobertaModel.from_pretrained(folder)
    msg = str(e.value)
    assert (
        "values that cannot be loaded: embeddings.word_embeddings.weight has 2 of 960 values inf or NaN"
        in msg
    )
    assert "encoder.layer.1.output.dense.bias has 1 of 16 values inf or NaN" in msg
    assert "training diverged" in msg and "Does config.json" not in msg


def test_integer_weights_are_refused_by_name(saved):
    _, folder = saved
    name = "encoder.layer.0.attention.output.dense.weight"
    _edit_weights(folder, lambda w: w.update({name: w[name].round().to(torch.int64)}))
    with pytest.raises(ValueError, match=name + r" is torch\.int64, not floating point"):
        RobertaModel.from_pretrained(folder)


def test_a_failed_load_copies_nothing(saved):
    model, folder = saved
    hf = model.hf_state_dict()
    hf = {k: torch.full_like(v, 7.0) for k, v in hf.items()}
    hf["pooler.dense.bias"][0] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="pooler.dense.bias has 1 of 16 values inf or NaN"):
        model.load_hf_state_dict(hf)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
