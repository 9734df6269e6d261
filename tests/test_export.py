"""ONNX export (roberta.export): the graph onnxruntime runs gives the PyTorch model's numbers.

Tiny random models of every exportable class are exported once (traced on a (2, 8) batch) and run
in onnxruntime on other shapes, padded and not; they must match our eager model (whose unpadded
fast path the graph does not contain) to 1e-5, and a checkpoint saved by transformers must give
transformers' numbers.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from roberta import RobertaConfig  # noqa: E402
from roberta.cli import main  # noqa: E402
from roberta.export import OUTPUTS, _Graph, export_onnx, max_difference, spec_of  # noqa: E402
from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification  # noqa: E402
from roberta.seq2seq import EncoderDecoder  # noqa: E402
from roberta.tokenizer import Tokenizer  # noqa: E402

TINY = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=40,  # 38 tokens
)


def batch(lengths: list[int], T: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded random ids (B, T) and the mask, 1 = real token."""
    g = torch.Generator().manual_seed(seed)
    T = T or max(lengths)
    ids = torch.ones(len(lengths), T, dtype=torch.long)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, TINY["vocab_size"], (n,), generator=g)
        mask[i, :n] = 1
    return ids, mask


SHAPES = [[5], [1], [38, 38], [7, 3, 12, 1], [20, 20, 20], [2] * 9]  # batch 1, length 1, the longest


@pytest.mark.parametrize("cls", list(OUTPUTS), ids=lambda c: c.__name__)
def test_onnx_graph_matches_the_eager_model_on_any_shape(cls, tmp_path):
    torch.manual_seed(0)
    model = cls(
        RobertaConfig(**TINY, num_labels=3) if "Classification" in cls.__name__ else RobertaConfig(**TINY)
    )
    path = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert tuple(o.name for o in session.get_outputs()) == OUTPUTS[cls]
    choices = len(spec_of(model).onnx_axes) == 3  # multiple choice: (batch, choice, length)
    model.eval()
    for seed, lengths in enumerate(SHAPES):
        ids, mask = batch(lengths, seed=seed)
        if choices:  # the rows as the choices of one question, and of two
            ids, mask = (
                (ids[None], mask[None])
                if seed % 2
                else (torch.cat([ids, ids])[None], torch.cat([mask, mask])[None])
            )
        got = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            want = _Graph(model)(ids, mask)
        real = mask.bool()
        for g, w in zip(got, want):
            g = torch.from_numpy(g)
            assert g.shape == w.shape
            if w.dim() >= 2 and w.shape[:2] == real.shape:  # per token: compare real tokens
                g, w = g[real], w[real]
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        assert max_difference(path, model, ids, mask) < 1e-5


def test_export_leaves_the_model_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(RobertaConfig(**TINY)).train().to(torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "model.onnx")
    assert model.training and next(model.parameters()).dtype == torch.float64
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_saved_by_transformers_exports_to_transformers_numbers(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.RobertaConfig(**TINY, num_labels=2, type_vocab_size=1, pad_token_id=1)
    hf = transformers.RobertaForSequenceClassification(hf_config).eval()
    hf.save_pretrained(tmp_path / "hf")
    path = export_onnx(RobertaForSequenceClassification.from_pretrained(tmp_path / "hf"), tmp_path / "m.onnx")
    ids, mask = batch([9, 4, 13])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


def encoder_decoder(folder) -> EncoderDecoder:
    """A tiny encoder-decoder (translation has no ONNX export), both stacks from a random masked LM."""
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(**TINY)).save_pretrained(folder / "mlm")
    return EncoderDecoder.from_encoder_pretrained(folder / "mlm")


def test_unsupported_model_is_a_clear_error(tmp_path):
    with pytest.raises(
        TypeError, match="ONNX export takes one of RobertaForMaskedLM, .*; got EncoderDecoder"
    ):
        export_onnx(encoder_decoder(tmp_path), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_writes_a_folder_onnxruntime_and_the_tokenizer_can_use(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert main(["export-onnx", "--model", str(tiny_model_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RobertaForMaskedLM: inputs input_ids, attention_mask" in printed and "outputs logits" in printed
    diff = float(printed.split("max |diff| ")[1].split()[0])
    assert diff < 1e-4
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "config.json", "tokenizer.json", "vocab.json"}
    tokenizer = Tokenizer.from_pretrained(out)
    enc = tokenizer(["Paris is the <mask> of France."], return_tensors="pt")
    feed = {name: enc[name].numpy() for name in ("input_ids", "attention_mask")}
    (logits,) = ort.InferenceSession(str(out / "model.onnx")).run(None, feed)
    vocab_size = RobertaConfig.from_json_file(out / "config.json").vocab_size
    assert logits.shape == (1, enc["input_ids"].shape[1], vocab_size)


def test_cli_refuses_a_model_it_cannot_export(tmp_path, capsys):
    encoder_decoder(tmp_path).save_pretrained(tmp_path / "translate")
    assert main(["export-onnx", "--model", str(tmp_path / "translate"), "--out", str(tmp_path / "o")]) == 2
    assert "holds a EncoderDecoder; ONNX export takes one of RobertaForMaskedLM" in capsys.readouterr().err
