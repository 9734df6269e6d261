"""MLM pretraining: FULL-SENTENCES packing, dynamic masking statistics, the recipe end to end."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from roberta import pretrain as P
from roberta.cli import main
from roberta.config import RobertaConfig
from roberta.heads import IGNORE_INDEX, RobertaForMaskedLM
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, read_metrics

WORDS = "the a cat dog sat ran on under mat rug big small red old man woman walked slowly to house".split()


def write_corpus(path, n_paragraphs: int, seed: int = 0) -> None:
    """Paragraphs of simple sentences, hard-wrapped like the books, blank lines between."""
    rng = random.Random(seed)
    paras = []
    for _ in range(n_paragraphs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 40))]
        lines = [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
        paras.append("\n".join(lines) + ".")
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_corpus(folder / "a.txt", 300, seed=0)
    write_corpus(folder / "b.txt", 100, seed=1)
    write_corpus(folder / "heldout.txt", 40, seed=2)
    return folder


@pytest.fixture(scope="module")
def tok(corpus):
    return Tokenizer.train([corpus / "a.txt"], vocab_size=300)


# ---- packing ---------------------------------------------------------------------------------------


def test_read_documents_joins_wrapped_lines(tmp_path):
    (tmp_path / "t.txt").write_text("One two\nthree.\n\n  \nFour\n  five.\n\n\n", encoding="utf-8")
    assert list(P.read_documents(tmp_path / "t.txt")) == ["One two three.", "Four five."]


def test_stream_is_every_document_then_eos(corpus, tok):
    files = [corpus / "a.txt", corpus / "b.txt"]
    stream = P.tokenize_corpus(files, tok)
    expected = []
    for f in files:
        for doc in P.read_documents(f):
            expected += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert stream.dtype == np.uint16 and stream.tolist() == expected


def test_blocks_concatenate_to_the_stream_exactly(corpus, tok):
    stream = P.tokenize_corpus([corpus / "a.txt", corpus / "b.txt"], tok)
    blocks = P.Blocks(stream, max_length=32, bos_id=tok.bos_token_id)
    rows = [blocks[i] for i in range(len(blocks))]
    assert all(r[0] == tok.bos_token_id for r in rows)
    assert all(len(r) == 32 for r in rows[:-1]) and 2 <= len(rows[-1]) <= 32
    assert torch.cat([r[1:] for r in rows]).tolist() == stream.tolist()  # nothing lost, nothing twice
    assert tok.pad_token_id not in torch.cat(rows).tolist()
    with pytest.raises(IndexError):
        blocks[len(blocks)]


def test_token_cache_is_reused_and_keyed_by_content(corpus, tok, tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("Hello there.\n\nGeneral Kenobi.\n", encoding="utf-8")
    first = P.tokenize_corpus([f], tok, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    assert np.array_equal(P.tokenize_corpus([f], tok, cache_dir=tmp_path / "cache"), first)
    f.write_text("Something else.\n", encoding="utf-8")
    assert not np.array_equal(P.tokenize_corpus([f], tok, cache_dir=tmp_path / "cache"), first)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_missing_corpus_file_is_a_clear_error(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        P.tokenize_corpus([tmp_path / "nope.txt"], tok)


# ---- masking ---------------------------------------------------------------------------------------


def synthetic_masker() -> P.Masker:
    specials = torch.tensor([0, 1, 2, 3, 999])
    return P.Masker(mask_id=999, special_ids=specials, random_ids=torch.arange(4, 999))


def test_masking_statistics_over_100k_tokens():
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(4, 999, (130_000,), generator=g)
    stream[torch.randint(0, len(stream), (8_000,), generator=g)] = 2  # </s> between documents
    blocks = P.Blocks(stream.numpy().astype(np.uint16), 128, bos_id=0)
    masker = synthetic_masker()
    counts = dict(candidates=0, chosen=0, masked=0, random=0, kept=0, special_chosen=0, other_changed=0)
    for i in range(len(blocks)):
        ids = blocks[i]
        out, labels = masker.mask_block(ids, seed=0, epoch=0, index=i)
        chosen = labels != IGNORE_INDEX
        special = torch.isin(ids, masker.special_ids)
        counts["candidates"] += int((~special).sum())
        counts["chosen"] += int(chosen.sum())
        counts["special_chosen"] += int((chosen & special).sum())
        counts["other_changed"] += int((~chosen & (out != ids)).sum())
        assert torch.equal(labels[chosen], ids[chosen])
        counts["masked"] += int((out[chosen] == 999).sum())
        counts["kept"] += int((out[chosen] == ids[chosen]).sum())
        counts["random"] += int(((out[chosen] != 999) & (out[chosen] != ids[chosen])).sum())
    assert counts["candidates"] > 100_000
    assert counts["chosen"] / counts["candidates"] == pytest.approx(0.15, abs=0.005)
    assert counts["masked"] / counts["chosen"] == pytest.approx(0.80, abs=0.01)
    assert counts["random"] / counts["chosen"] == pytest.approx(0.10, abs=0.01)
    assert counts["kept"] / counts["chosen"] == pytest.approx(0.10, abs=0.01)
    assert counts["special_chosen"] == 0 and counts["other_changed"] == 0


def test_random_replacements_are_never_special():
    masker = P.Masker(mask_id=9, special_ids=torch.tensor([0, 1, 2, 3, 9]), random_ids=torch.arange(4, 9))
    ids = torch.randint(4, 9, (20_000,), generator=torch.Generator().manual_seed(1))
    out, labels = masker(ids, torch.Generator().manual_seed(2))
    assert set(out.tolist()) <= {4, 5, 6, 7, 8, 9}


def test_masks_depend_only_on_seed_epoch_and_index():
    ids = torch.randint(4, 999, (128,), generator=torch.Generator().manual_seed(0))
    masker = synthetic_masker()

    def mask(seed, epoch, index):
        return masker.mask_block(ids, seed, epoch, index)

    a, b = mask(0, 0, 7), mask(0, 0, 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for other in (mask(0, 1, 7), mask(1, 0, 7), mask(0, 0, 8)):
        assert not torch.equal(other[1], a[1])


def test_mlm_batches_mask_each_epoch_afresh_and_resume_identically(corpus, tok):
    blocks = P.Blocks(P.tokenize_corpus([corpus / "a.txt"], tok), 32, tok.bos_token_id)
    data = P.MLMBatches(blocks, 8, P.Masker.for_tokenizer(tok), tok.pad_token_id, seed=3)
    again = P.MLMBatches(blocks, 8, P.Masker.for_tokenizer(tok), tok.pad_token_id, seed=3)
    b = data.batch(1, 4)
    assert b["input_ids"].shape == (8, 32) and b["attention_mask"].sum() == b["input_ids"].ne(1).sum()
    assert all(torch.equal(b[k], again.batch(1, 4)[k]) for k in b)
    assert sorted(data.order(0).tolist()) == list(range(len(blocks)))  # each block once per epoch
    assert not torch.equal(data.order(0), data.order(1))
    # the same block in two epochs gets two different masks
    idx = int(data.order(0)[0])
    m0 = data.masker.mask_block(blocks[idx], 3, 0, idx)[1]
    m1 = data.masker.mask_block(blocks[idx], 3, 1, idx)[1]
    assert not torch.equal(m0, m1)


# ---- the recipe ------------------------------------------------------------------------------------


def tiny_config(tok, **sizes) -> RobertaConfig:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    base.update(max_position_embeddings=34, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return RobertaConfig(vocab_size=len(tok), **{**base, **sizes})


def test_pretraining_lowers_the_loss_and_saves_a_loadable_model(corpus, tok, tmp_path):
    cfg = TrainConfig(
        out_dir=str(tmp_path),
        lr=3e-3,
        batch_size=16,
        max_steps=60,
        eval_every=30,
        log_every=10,
        progress=False,
    )
    result = P.pretrain(
        [corpus / "a.txt", corpus / "b.txt"],
        tok,
        tiny_config(tok),
        cfg,
        heldout=[corpus / "heldout.txt"],
        cache_dir=tmp_path / "cache",
    )
    train_losses = [r["loss"] for r in read_metrics(tmp_path) if "loss" in r]
    evals = [r["eval_accuracy"] for r in read_metrics(tmp_path) if "eval_accuracy" in r]
    assert train_losses[-1] < train_losses[0] - 1.0, train_losses
    # the words are drawn uniformly from 21: ~ln(21) = 3.0 nats is the floor, ln(300) = 5.7 is chance
    assert result.last_eval["loss"] < 4.0 and result.last_eval["accuracy"] > 0.1 and len(evals) == 2
    held = [r["eval_loss"] for r in read_metrics(tmp_path) if "eval_loss" in r]
    assert (tmp_path / "best" / "model.safetensors").exists() and result.best_metric == pytest.approx(
        min(held)
    )
    last = tmp_path / "last"
    model = RobertaForMaskedLM.from_pretrained(last)
    assert Tokenizer.from_pretrained(last).get_vocab() == tok.get_vocab()

    blocks = P.Blocks(P.tokenize_corpus([corpus / "heldout.txt"], tok), 32, tok.bos_token_id)
    metrics = P.evaluate_mlm(model, blocks, P.Masker.for_tokenizer(tok), tok.pad_token_id)
    assert metrics["perplexity"] == pytest.approx(np.exp(metrics["loss"]))
    assert metrics["accuracy"] == pytest.approx(result.last_eval["accuracy"], abs=0.05)


def test_cli_tokenizer_train_pretrain_and_evaluate(corpus, tmp_path, capsys):
    tok_dir, out = tmp_path / "tok", tmp_path / "run"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--corpus",
                str(corpus / "a.txt"),
                "--vocab-size",
                "300",
                "--out",
                str(tok_dir),
            ]
        )
        == 0
    )
    vocab = json.loads((tok_dir / "vocab.json").read_text())
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 299]
    cfg_file = tmp_path / "config.json"
    tiny_config(Tokenizer.from_pretrained(tok_dir)).save_json(cfg_file)
    args = [
        "pretrain",
        "--corpus",
        str(corpus / "b.txt"),
        "--config",
        str(cfg_file),
        "--tokenizer",
        str(tok_dir),
    ]
    args += ["--out", str(out), "--max-steps", "3", "--batch-size", "4", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "mlm",
                "--model",
                str(out / "last"),
                "--corpus",
                str(corpus / "heldout.txt"),
                "--json",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert (
        set(metrics) == {"loss", "accuracy", "perplexity", "masked_tokens"} and metrics["masked_tokens"] > 100
    )


def test_pretrain_refuses_blocks_longer_than_the_position_table(corpus, tok, tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=1, progress=False)
    with pytest.raises(ValueError, match="position table"):
        P.pretrain([corpus / "a.txt"], tok, tiny_config(tok), cfg, max_length=64)


# ---- continued pretraining --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(corpus, tok, tmp_path_factory):
    """A tiny MLM and its tokenizer saved as a model folder, the way `pretrain` leaves one."""
    folder = tmp_path_factory.mktemp("pretrained")
    P.build_model(tiny_config(tok), tok, seed=3).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_continued_pretraining_starts_from_the_given_weights(corpus, tok, pretrained, tmp_path):
    # lr 0: the run must end with exactly the weights it started from (a fresh init would differ)
    cfg = TrainConfig(out_dir=str(tmp_path), lr=0.0, batch_size=8, max_steps=2, progress=False)
    P.pretrain([corpus / "b.txt"], tok, None, cfg, cache_dir=tmp_path / "c", init_from=pretrained)
    start = RobertaForMaskedLM.from_pretrained(pretrained).state_dict()
    end = RobertaForMaskedLM.from_pretrained(tmp_path / "last").state_dict()
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)


def test_continued_pretraining_learns_from_a_lower_loss_than_scratch(corpus, tok, tmp_path):
    first = TrainConfig(out_dir=str(tmp_path / "a"), lr=3e-3, batch_size=16, max_steps=40, progress=False)
    P.pretrain([corpus / "a.txt"], tok, tiny_config(tok), first, cache_dir=tmp_path / "c")
    again = TrainConfig(
        out_dir=str(tmp_path / "b"), lr=1e-3, batch_size=16, max_steps=10, log_every=1, seed=1, progress=False
    )
    P.pretrain(
        [corpus / "b.txt"], tok, None, again, cache_dir=tmp_path / "c", init_from=tmp_path / "a" / "last"
    )
    scratch = TrainConfig(
        out_dir=str(tmp_path / "s"), lr=1e-3, batch_size=16, max_steps=10, log_every=1, seed=1, progress=False
    )
    P.pretrain([corpus / "b.txt"], tok, tiny_config(tok), scratch, cache_dir=tmp_path / "c")
    first_loss = [[r["loss"] for r in read_metrics(tmp_path / d) if "loss" in r][0] for d in ("b", "s")]
    assert first_loss[0] < first_loss[1] - 1.0, first_loss


def test_continued_pretraining_refuses_a_mismatched_tokenizer_or_a_second_config(
    corpus, tok, pretrained, tmp_path
):
    other = Tokenizer.train([corpus / "b.txt"], vocab_size=280)
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=1, progress=False)
    with pytest.raises(ValueError, match="vocabulary of 300 tokens.*the model's own tokenizer"):
        P.pretrain([corpus / "b.txt"], other, None, cfg, init_from=pretrained)
    with pytest.raises(ValueError, match="not both"):
        P.pretrain([corpus / "b.txt"], tok, tiny_config(tok), cfg, init_from=pretrained)
    assert (
        main(
            [
                "pretrain",
                "--corpus",
                str(corpus / "b.txt"),
                "--out",
                str(tmp_path),
                "--max-steps",
                "1",
                "--init-from",
                str(pretrained),
                "--config",
                "small",
            ]
        )
        != 0
    )


def test_cli_continues_pretraining_with_the_models_own_tokenizer(corpus, pretrained, tmp_path):
    args = [
        "pretrain",
        "--corpus",
        str(corpus / "b.txt"),
        "--init-from",
        str(pretrained),
        "--out",
        str(tmp_path),
    ]
    args += ["--max-steps", "2", "--batch-size", "4", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 0
    model = RobertaForMaskedLM.from_pretrained(tmp_path / "last")
    assert model.config.hidden_size == RobertaForMaskedLM.from_pretrained(pretrained).config.hidden_size


def test_plateau_diagnosis_reads_uniform_attention_as_uniform(tok):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "plateau_diag.py"
    spec = importlib.util.spec_from_file_location("plateau_diag", path)
    diag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diag)
    model = P.build_model(tiny_config(tok), tok, seed=0)
    C = model.config.hidden_size
    with torch.no_grad():  # zero W_Q and W_K: every score 0, every attention row uniform
        model.roberta.encoder.layers[0].attn.qkv.weight[: 2 * C] = 0
        model.roberta.encoder.layers[0].attn.qkv.bias[: 2 * C] = 0
    ids = torch.randint(5, len(tok) - 1, (2, 16))
    report = diag.diagnose(model, ids)
    first = report["layers"][0]
    assert first["entropy"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert first["left"] == pytest.approx([1.0, 1.0], abs=1e-5) and first["right"] == pytest.approx(
        [1.0, 1.0]
    )
    assert all(e < 1.0 for e in report["layers"][1]["entropy"])  # random Q, K: not exactly uniform
    assert -1.0 <= report["position_cos_1"] <= 1.0


# ---- neighbour-head init ------------------------------------------------------------------------------


def neighbour_config(tok) -> RobertaConfig:
    """Heads of 64 like the small and base models (the init uses the fastest 8 sin/cos pairs)."""
    return tiny_config(tok, hidden_size=128, intermediate_size=256, max_position_embeddings=66)


def test_neighbour_heads_attend_to_the_previous_and_next_token(tok):
    model = P.build_model(neighbour_config(tok), tok, seed=0, init="neighbour-heads")
    ids = torch.randint(5, len(tok) - 1, (4, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.roberta(ids, output_attentions=True).attentions  # L x (B, nh, T, T)
    left = torch.diagonal(a[0][:, 0], offset=-1, dim1=-2, dim2=-1)  # (B, T-1): query i on key i-1
    right = torch.diagonal(a[0][:, 1], offset=1, dim1=-2, dim2=-1)
    assert left.mean() > 0.75 and right.mean() > 0.75, (left.mean(), right.mean())
    assert torch.diagonal(a[1][:, 0], offset=-1, dim1=-2, dim2=-1).mean() < 0.2  # layer 1: RoBERTa's init


def test_neighbour_heads_change_only_the_embeddings_and_layer_0_query_key(tok):
    plain = P.build_model(neighbour_config(tok), tok, seed=0).state_dict()
    local = P.build_model(neighbour_config(tok), tok, seed=0, init="neighbour-heads").state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], local[k])}
    assert changed == {
        "roberta.embeddings.word.weight",
        "roberta.embeddings.position.weight",
        "roberta.embeddings.token_type.weight",
        "roberta.encoder.layers.0.attn.qkv.weight",  # (its bias starts at 0 either way)
        "lm_head.decoder.weight",  # tied to the word embeddings
    }
    C = 128
    assert torch.equal(
        plain["roberta.encoder.layers.0.attn.qkv.weight"][2 * C :],
        local["roberta.encoder.layers.0.attn.qkv.weight"][2 * C :],
    )  # V


def test_neighbour_heads_need_learned_positions_and_are_refused_with_init_from(tok, pretrained, tmp_path):
    config = neighbour_config(tok)
    config.position_embedding_type = "sinusoidal"
    with pytest.raises(ValueError, match="learned positions"):
        P.build_model(config, tok, seed=0, init="neighbour-heads")
    with pytest.raises(ValueError, match="init must be one of"):
        P.build_model(neighbour_config(tok), tok, seed=0, init="local")
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=1, progress=False)
    with pytest.raises(ValueError, match="not both"):
        P.pretrain([], tok, None, cfg, init_from=pretrained, init="neighbour-heads")


def test_neighbour_heads_draw_nothing_from_the_global_rng(tok):
    # with dropout in the config, the calibration forward must not use (or move) the global RNG
    config = neighbour_config(tok)
    config.hidden_dropout_prob = 0.1
    P.build_model(config, tok, seed=0)
    after_plain = torch.get_rng_state()
    model = P.build_model(config, tok, seed=0, init="neighbour-heads")
    assert torch.equal(torch.get_rng_state(), after_plain) and model.training
