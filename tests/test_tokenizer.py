"""Tokenizer tests: ids, offsets, padding, truncation and overflow identical to transformers'
RobertaTokenizerFast on the real roberta-base vocabulary; loading from every file format; round trips."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken

from roberta import hub
from roberta.cli import main
from roberta.tokenizer import SPECIAL_TOKENS, Tokenizer

transformers = pytest.importorskip("transformers")


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vocab_dir(data_dir: Path) -> Path:
    return data_dir / "roberta-base-tokenizer"


@pytest.fixture(scope="module")
def tok(vocab_dir: Path) -> Tokenizer:
    return Tokenizer.from_files(vocab=vocab_dir / "vocab.json", merges=vocab_dir / "merges.txt")


@pytest.fixture(scope="module")
def reference(vocab_dir: Path):
    """transformers' RobertaTokenizerFast from the same files, set up like roberta-base on the Hub.

    `<mask>` is given lstrip=True explicitly: transformers 4 did that itself, transformers 5 only
    when it reads roberta-base's tokenizer.json, not when built from vocab.json + merges.txt.
    """
    return transformers.RobertaTokenizerFast(
        str(vocab_dir / "vocab.json"),
        str(vocab_dir / "merges.txt"),
        mask_token=AddedToken("<mask>", lstrip=True, rstrip=False),
        model_max_length=512,
    )


@pytest.fixture(scope="module")
def saved_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tok.save_pretrained(tmp_path_factory.mktemp("roberta-base-tokenizer"))


@pytest.fixture(scope="module")
def squad(data_dir: Path) -> tuple[list[str], list[str]]:
    """(questions, contexts): the first two questions of each of the first 6 SQuAD dev paragraphs."""
    articles = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    pairs = [(qa["question"], p["context"]) for p in articles[0]["paragraphs"][:6] for qa in p["qas"][:2]]
    return [q for q, _ in pairs], [c for _, c in pairs]


@pytest.fixture(scope="module")
def conll_sentences(data_dir: Path) -> list[list[str]]:
    """The first 300 CoNLL-2003 validation sentences, as lists of words."""
    sentences, words = [], []
    for line in (data_dir / "conll2003" / "valid.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("-DOCSTART-"):
            words.append(line.split(" ")[0])
        elif words:
            sentences.append(words)
            words = []
    return sentences[:300]


def _plain(value):
    """Tensors and tuples -> nested lists, so that our output and transformers' compare with ==."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return json.loads(json.dumps(value))


def _assert_same(ours, theirs) -> None:
    assert set(ours) == set(theirs)
    for key in ours:
        assert _plain(ours[key]) == _plain(theirs[key]), key


# ---- ids identical to the reference ------------------------------------------------------------


@pytest.mark.parametrize("split", ["wiki.valid.tokens", "wiki.test.tokens"])
def test_wikitext_ids_match_reference(tok, reference, data_dir, split):
    lines = (data_dir / "wikitext-2" / split).read_text(encoding="utf-8").splitlines()
    assert len(lines) > 3000
    assert tok(lines)["input_ids"] == reference(lines)["input_ids"]


def test_golden_encodings(tok, vocab_dir):
    lines = (vocab_dir / "golden_encodings.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 135
    for line in lines:
        gold = json.loads(line)
        enc = tok(gold["text"], gold.get("text_pair"), return_offsets_mapping=True)
        assert enc["input_ids"] == gold["input_ids"], gold["text"]
        assert enc.tokens() == gold["tokens"]
        assert _plain(enc["offset_mapping"]) == gold["offsets"]
        if "decoded" in gold:
            assert tok.decode(enc["input_ids"], skip_special_tokens=True) == gold["decoded"]
        else:
            assert enc.sequence_ids() == gold["sequence_ids"]


def test_known_ids_and_properties(tok):
    assert tok("Hello world")["input_ids"] == [0, 31414, 232, 2]
    assert tok(" Hello world")["input_ids"] == [0, 20920, 232, 2]
    assert tok("The capital of France is <mask>.")["input_ids"] == [0, 133, 812, 9, 1470, 16, 50264, 4, 2]
    assert tok.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert tok.convert_tokens_to_ids(["Hello", "Ġworld", "not-a-token"]) == [31414, 232, 3]
    assert tok.convert_ids_to_tokens(5) == "Ġthe"
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.mask_token) == (0, 2, 50264, "<mask>")
    assert tok.vocab_size == len(tok) == 50265
    assert tok.model_max_length == 512 and not tok.add_prefix_space


def test_add_prefix_space_matches_reference(vocab_dir, reference, squad):
    ours = Tokenizer.from_files(vocab_dir / "vocab.json", vocab_dir / "merges.txt", add_prefix_space=True)
    theirs = transformers.RobertaTokenizerFast(
        str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), add_prefix_space=True
    )
    assert ours("Hello world")["input_ids"] == [0, 20920, 232, 2]
    texts = squad[0] + ["Hello", "", "  two spaces"]
    _assert_same(ours(texts, return_offsets_mapping=True), theirs(texts, return_offsets_mapping=True))


# ---- other file formats and round trips --------------------------------------------------------


def test_fairseq_files_give_the_same_ids(tok, vocab_dir, data_dir, tmp_path):
    files = [vocab_dir / name for name in ("encoder.json", "vocab.bpe", "dict.txt")]
    fairseq = Tokenizer.from_fairseq(*files)
    assert fairseq.get_vocab() == json.loads((vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    texts = (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    texts += (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()[:1000]
    texts += ["The capital of France is <mask>.", "madeupword0000 <|endoftext|>", ""]
    assert fairseq(texts)["input_ids"] == tok(texts)["input_ids"]
    for f in files:  # a folder with only fairseq's files loads through from_pretrained too
        shutil.copy(f, tmp_path / f.name)
    assert Tokenizer.from_pretrained(tmp_path)(texts[:50])["input_ids"] == tok(texts[:50])["input_ids"]


def test_save_pretrained_round_trip(tok, saved_dir, data_dir, tmp_path):
    files = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert files <= {p.name for p in saved_dir.iterdir()}
    assert not [p for p in saved_dir.iterdir() if p.name.endswith(".tmp")]
    config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "RobertaTokenizer" and config["model_max_length"] == 512
    texts = (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[:300]
    texts += ["The capital of France is <mask>.", "<s>already special</s>", ""]
    expected = tok(texts, return_offsets_mapping=True)
    from_json = Tokenizer.from_file(saved_dir / "tokenizer.json")
    _assert_same(from_json(texts, return_offsets_mapping=True), expected)
    _assert_same(Tokenizer.from_pretrained(saved_dir)(texts, return_offsets_mapping=True), expected)
    hf = transformers.AutoTokenizer.from_pretrained(saved_dir)
    assert hf.model_max_length == 512
    _assert_same(hf(texts, return_offsets_mapping=True), expected)
    for name in ("vocab.json", "merges.txt"):  # without tokenizer.json: vocab.json + merges.txt
        shutil.copy(saved_dir / name, tmp_path / name)
    assert Tokenizer.from_pretrained(tmp_path)(texts)["input_ids"] == expected["input_ids"]


def test_tokenizer_config_settings_round_trip(vocab_dir, tmp_path):
    tok = Tokenizer.from_files(
        vocab_dir / "vocab.json", vocab_dir / "merges.txt", add_prefix_space=True, model_max_length=128
    )
    tok.save_pretrained(tmp_path)
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.add_prefix_space and loaded.model_max_length == 128
    assert loaded("Hello world")["input_ids"] == [0, 20920, 232, 2]
    assert len(loaded("word " * 300, truncation=True)["input_ids"]) == 128
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf("Hello world")["input_ids"] == [0, 20920, 232, 2] and hf.model_max_length == 128
    overridden = Tokenizer.from_pretrained(tmp_path, add_prefix_space=False, model_max_length=64)
    assert not overridden.add_prefix_space and overridden.model_max_length == 64
    assert overridden("Hello world")["input_ids"] == [0, 31414, 232, 2]


def test_unlimited_model_max_length_from_hf_means_512(vocab_dir, tmp_path):
    Tokenizer.from_files(vocab_dir / "vocab.json", vocab_dir / "merges.txt").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["model_max_length"] = int(1e30)  # what transformers writes when no limit is known
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert len(loaded("word " * 600, truncation=True)["input_ids"]) == 512


def test_the_built_in_tokenizer_knows_its_models_limit():
    tok = Tokenizer.from_pretrained("roberta-small-books")
    config = json.loads((hub.BUILTIN_DIR / "roberta-small-books" / "config.json").read_text())
    positions = config["max_position_embeddings"] - config["pad_token_id"] - 1  # positions start at pad+1
    assert tok.model_max_length == positions == 128
    assert len(tok("word " * 300, truncation=True)["input_ids"]) == 128
    # the shipped file says so itself, for transformers' AutoTokenizer too
    shipped = json.loads((hub.BUILTIN_DIR / "roberta-small-books" / "tokenizer_config.json").read_text())
    assert shipped["model_max_length"] == positions


def test_a_model_with_fewer_positions_than_the_tokenizer_says_sets_the_limit(vocab_dir, tmp_path, caplog):
    Tokenizer.from_files(vocab_dir / "vocab.json", vocab_dir / "merges.txt").save_pretrained(tmp_path)
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 512  # no config.json: the tokenizer's
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 66, "pad_token_id": 1}))
    with caplog.at_level(logging.DEBUG, logger="roberta.tokenizer"):
        tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 64 and "positions for 64 tokens; using 64" in caplog.text
    assert len(tok("word " * 300, truncation=True)["input_ids"]) == 64
    assert Tokenizer.from_pretrained(tmp_path, model_max_length=32).model_max_length == 32  # asked for
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 1026, "pad_token_id": 1}))
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 512  # more positions: the tokenizer's
    encoder_decoder = {
        "encoder": {"max_position_embeddings": 130},
        "decoder": {"max_position_embeddings": 34},
    }
    (tmp_path / "config.json").write_text(json.dumps(encoder_decoder))
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 32  # the smaller stack
    (tmp_path / "config.json").write_text("{not json")
    assert Tokenizer.from_pretrained(tmp_path).model_max_length == 512  # the model's loader reports it


def test_from_pretrained_without_files_says_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*vocab\.json \+ merges\.txt.*dict\.txt"):
        Tokenizer.from_pretrained(tmp_path)


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_random_text_matches_reference_and_round_trips(tok, reference, text):
    ids = tok(text)["input_ids"]
    assert ids == reference(text)["input_ids"]
    assume(not any(special in text for special in SPECIAL_TOKENS))  # those encode as specials
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == f"<s>{text}</s>"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_decode_and_batch_decode_accept_tensors(tok, reference):
    batch = tok(["Hello world", "Hi"], padding=True, return_tensors="pt")
    assert tok.batch_decode(batch["input_ids"]) == reference.batch_decode(batch["input_ids"])
    assert tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["Hello world", "Hi"]
    assert tok.decode(batch["input_ids"][1]) == "<s>Hi</s><pad>"
    assert tok.decode([0, 31414, 232, 2]) == reference.decode([0, 31414, 232, 2]) == "<s>Hello world</s>"


# ---- calling: padding, truncation, tensors, overflow, pre-split words --------------------------

CALLS = [  # (keyword arguments, which inputs)
    ({"padding": True}, "single"),
    ({"padding": "longest"}, "question+context"),
    ({"padding": "max_length", "max_length": 200}, "single"),
    ({"truncation": True}, "long"),  # max_length defaults to model_max_length = 512
    ({"truncation": True, "padding": "max_length"}, "question+context"),
    ({"truncation": True, "max_length": 40, "padding": True}, "single"),
    ({"truncation": "longest_first", "max_length": 48, "padding": True}, "question+context"),
    ({"truncation": "only_second", "max_length": 64, "padding": "max_length"}, "question+context"),
    ({"truncation": "only_first", "max_length": 64}, "context+question"),
    (
        {"add_special_tokens": False, "padding": True, "truncation": True, "max_length": 30},
        "question+context",
    ),
]


@pytest.mark.parametrize(("kwargs", "inputs"), CALLS)
def test_padding_and_truncation_match_reference(tok, reference, squad, kwargs, inputs):
    questions, contexts = squad
    args = {
        "single": (contexts,),
        "long": ([" ".join(contexts), contexts[0]],),
        "question+context": (questions, contexts),
        "context+question": (contexts, questions),
    }[inputs]
    kwargs = {**kwargs, "return_offsets_mapping": True, "return_special_tokens_mask": True}
    ours, theirs = tok(*args, **kwargs), reference(*args, **kwargs)
    _assert_same(ours, theirs)
    for row in range(len(ours["input_ids"])):
        assert ours.word_ids(row) == theirs.word_ids(row)
    if kwargs.get("padding"):
        pads = [[m == 0 for m in row] for row in ours["attention_mask"]]
        ids, offsets = ours["input_ids"], ours["offset_mapping"]
        padded = [(b, t) for b, row in enumerate(pads) for t, pad in enumerate(row) if pad]
        assert all(ids[b][t] == 1 and offsets[b][t] == (0, 0) for b, t in padded)


def test_return_tensors(tok, reference):
    single = tok("Hello world", return_tensors="pt", return_offsets_mapping=True)
    assert single["input_ids"].shape == (1, 4) and single["input_ids"].dtype == torch.long
    assert single["offset_mapping"].shape == (1, 4, 2)
    texts = ["Hello world", "Hi", "A longer sentence than the others."]
    batch = tok(texts, padding=True, return_tensors="pt")
    _assert_same(batch, reference(texts, padding=True, return_tensors="pt"))
    assert batch.input_ids is batch["input_ids"] and batch.attention_mask.shape == batch.input_ids.shape
    with pytest.raises(ValueError, match="padding=True"):
        tok(texts, return_tensors="pt")
    with pytest.raises(ValueError, match="return_tensors must be None"):
        tok(texts, return_tensors="tf")
    with pytest.raises(AttributeError):
        _ = batch.no_such_key


@pytest.mark.parametrize(
    "args, kwargs",
    [
        (("Hello world",), {"return_offsets_mapping": True, "return_special_tokens_mask": True}),
        ((["Hello world", "Hi", "A longer sentence than the others."],), {"padding": True}),
        (("Who?", "word " * 40), {"truncation": "only_second", "max_length": 16, "stride": 4, "padding": True,
                                 "return_overflowing_tokens": True, "return_offsets_mapping": True}),
        (([["Split", "words"], ["more", "split", "words"]],), {"is_split_into_words": True, "padding": True}),
    ],
)  # fmt: skip
def test_numpy_arrays_are_the_torch_tensors(tok, args, kwargs):
    pt, arrays = tok(*args, **kwargs, return_tensors="pt"), tok(*args, **kwargs, return_tensors="np")
    assert arrays.keys() == pt.keys()
    for key, tensor in pt.items():
        assert isinstance(arrays[key], np.ndarray) and arrays[key].dtype == np.int64
        assert arrays[key].shape == tuple(tensor.shape) and (arrays[key] == tensor.numpy()).all(), key
    assert tok.batch_decode(arrays["input_ids"]) == tok.batch_decode(pt["input_ids"])
    assert tok.decode(arrays["input_ids"][0]) == tok.decode(pt["input_ids"][0])
    with pytest.raises(ValueError, match="padding=True"):
        tok(["Hello world", "Hi"], return_tensors="np")


def test_single_input_gives_flat_lists(tok):
    enc = tok("Hello world", "Hi", return_special_tokens_mask=True)
    assert enc["input_ids"] == [0, 31414, 232, 2, 2, 30086, 2]
    assert enc["special_tokens_mask"] == [1, 0, 0, 1, 1, 0, 1]
    assert enc.sequence_ids() == [None, 0, 0, None, None, 1, None]
    assert tok(["Hello world"])["input_ids"] == [[0, 31414, 232, 2]]


@pytest.mark.parametrize("return_tensors", [None, "pt"])
def test_stride_overflow_matches_reference_on_squad(tok, reference, squad, return_tensors):
    questions, contexts = squad
    kwargs = {
        "truncation": "only_second",
        "max_length": 96,
        "stride": 32,
        "return_overflowing_tokens": True,
        "return_offsets_mapping": True,
        "padding": "max_length",
        "return_tensors": return_tensors,
    }
    ours, theirs = tok(questions, contexts, **kwargs), reference(questions, contexts, **kwargs)
    _assert_same(ours, theirs)
    assert len(ours["input_ids"]) > len(questions) + 4  # the contexts really overflow
    for row in range(len(ours["input_ids"])):
        assert ours.sequence_ids(row) == theirs.sequence_ids(row)
        assert ours.word_ids(row) == theirs.word_ids(row)
    one = tok(questions[0], contexts[0], **{**kwargs, "return_tensors": None})  # a single pair stays batched
    assert one["overflow_to_sample_mapping"] == [0] * len(one["input_ids"]) and len(one["input_ids"]) > 1


def test_split_into_words_matches_reference(tok, saved_dir, conll_sentences):
    reference = transformers.RobertaTokenizerFast.from_pretrained(saved_dir, add_prefix_space=True)
    kwargs = {"is_split_into_words": True, "padding": True, "return_offsets_mapping": True}
    ours, theirs = tok(conll_sentences, **kwargs), reference(conll_sentences, **kwargs)
    _assert_same(ours, theirs)
    for row in range(len(conll_sentences)):
        assert ours.word_ids(row) == theirs.word_ids(row)
    words = conll_sentences[1]
    single = tok(words, is_split_into_words=True)
    assert single["input_ids"] == reference(words, is_split_into_words=True)["input_ids"]
    assert max(w for w in single.word_ids() if w is not None) == len(words) - 1
    assert tok(["Hello", "world"], is_split_into_words=True)["input_ids"] == [0, 20920, 232, 2]


def test_concurrent_calls_keep_their_own_settings(tok):
    text = " ".join(["word"] * 100)

    def lengths(max_length: int) -> set[int]:
        return {len(tok(text, truncation=True, max_length=max_length)["input_ids"]) for _ in range(50)}

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lengths, [8, 16, 32, 64])) == [{8}, {16}, {32}, {64}]
    assert len(tok(text)["input_ids"]) == 102  # and no setting is left behind


def test_empty_string_encodes_like_reference(tok, reference):
    assert tok("")["input_ids"] == reference("")["input_ids"] == [0, 2]
    assert tok(["", "a"], padding=True)["input_ids"] == reference(["", "a"], padding=True)["input_ids"]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((5,), {}, TypeError, "text must be a str, got int"),
        ((None,), {}, TypeError, "got NoneType"),
        ((["a", None],), {}, TypeError, r"text\[1\] must be a str, got NoneType"),
        ((["a", "b"], ["c", 3]), {}, TypeError, r"text_pair\[1\] must be a str, got int"),
        (([],), {}, ValueError, "empty batch"),
        ((["a", "b"], ["c"]), {}, ValueError, "2 items but text_pair has 1"),
        ((["a"], "b"), {}, ValueError, "text_pair must be a batch"),
        ((["a", 1],), {"is_split_into_words": True}, TypeError, r"text\[1\] must be a str \(a word"),
        (("a",), {"padding": "max"}, ValueError, "padding must be one of"),
        (("a",), {"truncation": "only_third"}, ValueError, "truncation must be one of"),
    ],
)
def test_bad_input_errors(tok, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        tok(*args, **kwargs)


# ---- training ----------------------------------------------------------------------------------


def test_train_small_tokenizer(data_dir, tmp_path):
    text = (data_dir / "pretrain-corpus" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    lines = text.splitlines()[:2000]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = Tokenizer.train([corpus], vocab_size=500)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 499]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == 499 and len(tok) == tok.vocab_size == 500
    texts = lines[:200] + ["To be, or not to be: that is the question.", "Zebras & émigrés 🙂", ""]
    for text in texts:
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    pieces = [tok(t, add_special_tokens=False)["input_ids"] for t in ("Speak", ".")]
    assert tok("Speak <mask>.")["input_ids"] == [0, *pieces[0], 499, *pieces[1], 2]  # <mask> took the space
    assert pickle.loads(pickle.dumps(tok))(texts)["input_ids"] == tok(texts)["input_ids"]
    tok.save_pretrained(tmp_path / "trained")
    loaded = Tokenizer.from_pretrained(tmp_path / "trained")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "trained")
    texts.append("Speak <mask>.")
    assert loaded(texts)["input_ids"] == hf(texts)["input_ids"] == tok(texts)["input_ids"]


def test_training_on_a_file_that_is_not_utf8_names_the_file_and_line(tmp_path, capsys):
    good, bad = tmp_path / "good.txt", tmp_path / "latin1.txt"
    good.write_text("To be, or not to be.\n" * 50, encoding="utf-8")
    bad.write_bytes("Speak the speech.\nI pray you,\nà la café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text: line 3, byte 1 \(b'\\xe0'\)"):
        Tokenizer.train([good, bad], vocab_size=300)
    # the command says it in one line, no traceback
    assert main(["tokenizer", "train", "--corpus", str(good), str(bad), "--vocab-size", "300",
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (
        "latin1.txt is not UTF-8 text: line 3" in err
        and "Traceback" not in err
        and len(err.splitlines()) == 1
    )
