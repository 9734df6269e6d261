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
