"""Fine-tuning: data readers, features, bad-data errors, and each command end to end on a tiny model.

The model is a tiny random RoBERTa with the real roberta-base tokenizer; the data are a few dozen
rows of SST-2, CoNLL-2003 and SQuAD from the shared data folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from roberta import cli
from roberta.config import RobertaConfig
from roberta.heads import RobertaForMaskedLM, RobertaForSequenceClassification
from roberta.tasks.classify import evaluate_classifier, finetune_classifier, read_table
from roberta.tasks.common import collate, label_list
from roberta.tasks.ner import finetune_ner, ner_features, read_conll
from roberta.tasks.qa import answer_tokens, finetune_qa, qa_features, read_squad, split_squad
from roberta.tasks.translate import Pair, read_parallel, translation_features
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, read_metrics

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.fixture(scope="module")
def tokenizer(data_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer) -> Path:
    """A random 2-layer masked LM (64-token inputs) with the roberta-base tokenizer beside it."""
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(max_position_embeddings=66, **TINY)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """48 training and 24 dev rows of SST-2 (TSV, header `sentence\\tlabel`)."""
    folder = tmp_path_factory.mktemp("sst2")
    train = (data_dir / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (data_dir / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()
    (folder / "train.tsv").write_text("\n".join(train[:49]) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("\n".join(dev[:25]) + "\n", encoding="utf-8")
    return folder / "train.tsv", folder / "dev.tsv"


@pytest.fixture(scope="module")
def conll(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """The first ~40 training and ~20 dev sentences of CoNLL-2003."""
    folder = tmp_path_factory.mktemp("conll")
    for name, n in (("train", 40), ("valid", 20)):
        blocks = (data_dir / "conll2003" / f"{name}.txt").read_text(encoding="utf-8").split("\n\n")
        (folder / f"{name}.txt").write_text("\n\n".join(blocks[: n + 1]) + "\n", encoding="utf-8")
    return folder / "train.txt", folder / "valid.txt"


@pytest.fixture(scope="module")
def squad(tmp_path_factory, data_dir) -> tuple[Path, Path]:
    """Two SQuAD articles' first paragraphs, split by `split_squad` into one article each."""
    folder = tmp_path_factory.mktemp("squad")
    data = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
    articles = [{**a, "paragraphs": a["paragraphs"][:4]} for a in data["data"][:2]]
    (folder / "both.json").write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    assert split_squad(folder / "both.json", 0.5, folder / "train.json", folder / "dev.json") == (1, 1)
    return folder / "train.json", folder / "dev.json"


def quick(out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        out_dir=str(out), **{"max_epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False, **kw}
    )


# ---- readers -------------------------------------------------------------------------------------


def test_read_table_reads_tsv_csv_and_jsonl_alike(tmp_path):
    rows = [("a good film", "x", "pos"), ('said "no", twice', "y", "neg")]
    (tmp_path / "d.tsv").write_text("t\tp\tl\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows))
    (tmp_path / "d.csv").write_text('t,p,l\na good film,x,pos\n"said ""no"", twice",y,neg\n')
    (tmp_path / "d.jsonl").write_text(
        "".join(json.dumps({"t": a, "p": b, "l": c}) + "\n" for a, b, c in rows)
    )
    for name in ("d.tsv", "d.csv", "d.jsonl"):
        got = read_table(tmp_path / name, "t", "l", text_pair_column="p")
        assert [(e.text, e.text_pair, e.label) for e in got] == rows, name
        assert [e.line for e in got] == ([2, 3] if name != "d.jsonl" else [1, 2])


def test_label_list_sorts_numbers_as_numbers():
    assert label_list(["10", "2", "2", "1"]) == ["1", "2", "10"]
    assert label_list(["pos", "neg"]) == ["neg", "pos"]


def test_read_conll_takes_the_last_column_and_skips_docstart(conll):
    sentences = read_conll(conll[0])
    assert sentences[0].words == ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    assert sentences[0].tags == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]
    assert sentences[0].line == 3  # line 1 is -DOCSTART-, line 2 blank
    assert all("-DOCSTART-" not in s.words for s in sentences)


def test_split_squad_keeps_articles_whole(squad):
    train, dev = (json.loads(p.read_text())["data"] for p in squad)
    assert [a["title"] for a in train] == ["Super_Bowl_50"] and len(dev) == 1
    assert {e.context for e in read_squad(squad[0])}.isdisjoint({e.context for e in read_squad(squad[1])})


# ---- features ------------------------------------------------------------------------------------


def test_ner_label_goes_on_the_first_sub_token_only(tokenizer):
    from roberta.tasks.ner import TaggedSentence

    sentence = TaggedSentence(["Kaczmarek", "visited", "Wrocław", "."], ["B-PER", "O", "B-LOC", "O"], 1)
    label2id = {"B-LOC": 0, "B-PER": 1, "O": 2}
    (feature,), (firsts,) = ner_features(tokenizer, [sentence], label2id, 64)
    ids = feature["input_ids"]
    pieces = [tokenizer.convert_ids_to_tokens(i) for i in ids]
    # each word alone, after a space (is_split_into_words): its first piece starts with "Ġ"
    starts = [t for t, p in enumerate(pieces) if p.startswith("Ġ")]
    assert firsts == starts and len(starts) == 4
    assert len(ids) > 6  # the names split into several sub-tokens
    expected = [-100] * len(ids)
    for t, tag in zip(starts, sentence.tags):
        expected[t] = label2id[tag]
    assert feature["labels"] == expected


def test_ner_truncation_keeps_words_that_fit(tokenizer, conll):
    sentences = read_conll(conll[0])
    label2id = {t: i for i, t in enumerate(label_list(t for s in sentences for t in s.tags))}
    features, firsts = ner_features(tokenizer, sentences, label2id, 8)
    assert all(len(f["input_ids"]) <= 8 for f in features)
    for f, first, s in zip(features, firsts, sentences):
        assert [f["labels"][t] for t in first] == [label2id[t] for t in s.tags[: len(first)]]


def test_qa_labelled_tokens_cut_the_answer_from_the_context(tokenizer, squad):
    examples = read_squad(squad[0])
    features, windows = qa_features(tokenizer, examples, max_length=64, stride=8)
    assert len(features) > 2 * len(examples)  # contexts are cut into several windows
    answered = set()
    for f, w in zip(features, windows):
        e = examples[w.example]
        s, t = f["start_positions"], f["end_positions"]
        if s == 0:
            assert t == 0
            inside = [o for o in w.offsets if o is not None]
            assert not (
                inside[0][0] <= e.answer_starts[0] and e.answer_starts[0] + len(e.answers[0]) <= inside[-1][1]
            )
            continue
        assert w.offsets[s] is not None and w.offsets[t] is not None and s <= t
        span = e.context[w.offsets[s][0] : w.offsets[t][1]]
        assert e.answers[0] in span and len(span) - len(e.answers[0]) <= 3, (span, e.answers[0])
        answered.add(w.example)
    assert answered == set(range(len(examples)))  # every answer fits in some window


def test_answer_tokens_by_hand():
    # context "Denver Broncos won": tokens Denver(0,6) Broncos(7,14) won(15,18) after 3 question tokens
    offsets = [None, None, None, (0, 6), (7, 14), (15, 18), None]
    assert answer_tokens(offsets, 0, "Denver Broncos") == (3, 4)
    assert answer_tokens(offsets, 7, "Broncos") == (4, 4)
    assert answer_tokens(offsets[:4] + [None] * 3, 0, "Denver Broncos") == (0, 0)  # cut off: <s>


def test_collate_pads_inputs_and_labels():
    b = collate(
        [{"input_ids": [0, 5, 2], "labels": [-100, 3, -100]}, {"input_ids": [0, 2], "labels": [-100, -100]}],
        1,
    )
    assert b["input_ids"].tolist() == [[0, 5, 2], [0, 2, 1]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["labels"].tolist() == [[-100, 3, -100], [-100, -100, -100]]
    b = collate([{"input_ids": [0, 2], "labels": 1}], 1)
    assert b["labels"].tolist() == [1]
    b = collate(
        [{"input_ids": [0, 2], "token_type_ids": [0, 0]}, {"input_ids": [0], "token_type_ids": [0]}], 1
    )
    assert b["token_type_ids"].tolist() == [[0, 0], [0, 0]]  # token types pad with 0
    with pytest.raises(KeyError, match="no padding value for 'spans'"):
        collate([{"input_ids": [0, 2], "spans": [1, 2]}], 1)


def test_read_parallel_pairs_lines_and_names_misalignment(tmp_path):
    src = _write(tmp_path / "a.en", "A dog.\n\nTwo cats.\n")
    tgt = _write(tmp_path / "a.de", "Ein Hund.\n\nZwei Katzen.\n")
    assert read_parallel(src, tgt) == [Pair("A dog.", "Ein Hund.", 1), Pair("Two cats.", "Zwei Katzen.", 3)]
    with pytest.raises(
        ValueError, match=r"a\.en has 3 lines but .*b\.de has 2; the files must be line-aligned"
    ):
        read_parallel(src, _write(tmp_path / "b.de", "Ein Hund.\nZwei Katzen.\n"))
    with pytest.raises(ValueError, match=r"line 2 is blank in .*a\.en but not in the other file"):
        read_parallel(src, _write(tmp_path / "c.de", "Ein Hund.\nEine Zeile.\nZwei Katzen.\n"))


def test_translation_features_shift_the_target_by_one(tokenizer):
    (f,) = translation_features(tokenizer, [Pair("A dog runs.", "Ein Hund läuft.", 1)], 64)
    target = tokenizer("Ein Hund läuft.")["input_ids"]  # <s> ... </s>
    assert f["input_ids"] == tokenizer("A dog runs.")["input_ids"]
    assert f["decoder_input_ids"] == target[:-1] and f["labels"] == target[1:]  # read <s> y, predict y </s>
    (long,) = translation_features(tokenizer, [Pair("word " * 50, "Wort " * 50, 1)], 16)
    assert len(long["input_ids"]) == 16 and len(long["decoder_input_ids"]) == 16  # the decoder's positions
    assert long["decoder_input_ids"][0] == 0 and long["labels"][-1] == 2
    batch = collate([f, long], pad_id=1)
    assert batch["input_ids"].shape == (2, 16) and batch["decoder_input_ids"].shape == (2, 16)
    n = len(f["labels"])
    assert batch["decoder_input_ids"][0, n:].eq(1).all() and batch["labels"][0, n:].eq(-100).all()
    assert batch["attention_mask"][0].sum() == len(f["input_ids"])


# ---- bad data: a clear error before training starts ----------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "train_text, dev_text, suffix, message",
    [
        (
            "sentence\tlabel\na\t0\n",
            "text\tlabel\nb\t0\n",
            ".tsv",
            r"no column 'sentence' \(columns: text, label\)",
        ),
        (
            "sentence\tlabel\na\t0\nb\t1\n",
            "sentence\tlabel\nc\t0\nd\t2\n",
            ".tsv",
            r"line 3: label '2' is not among .*\(0, 1\)",
        ),
        ("", "sentence\tlabel\nb\t0\n", ".tsv", r"train\.tsv is empty"),
        ("sentence\tlabel\n", "sentence\tlabel\nb\t0\n", ".tsv", "has a header line but no rows"),
        (
            '{"sentence": "a", "label": 0}\n{"sentence": "b", label: 1}\n',
            '{"sentence": "c", "label": 0}\n',
            ".jsonl",
            "line 2 is not valid JSON",
        ),
        ("sentence\tlabel\na\t\n", "sentence\tlabel\nb\t0\n", ".tsv", "line 2: column 'label' is empty"),
    ],
    ids=["missing-column", "unknown-dev-label", "empty-file", "no-rows", "bad-json-line", "empty-label"],
)
def test_bad_classification_data_fails_before_training(
    tmp_path, tiny_model, train_text, dev_text, suffix, message
):
    train = _write(tmp_path / f"train{suffix}", train_text)
    dev = _write(tmp_path / f"dev{suffix}", dev_text)
    with pytest.raises(ValueError, match=message):
        finetune_classifier(train, dev, tiny_model, quick(tmp_path / "out"), text_column="sentence")
    assert not (tmp_path / "out").exists()


def test_labels_that_do_not_fit_the_models_head(tmp_path, tiny_model, tokenizer):
    head = tmp_path / "two-label-model"
    config = RobertaConfig(max_position_embeddings=66, id2label={0: "neg", 1: "pos"}, **TINY)
    RobertaForSequenceClassification(config).save_pretrained(head)
    tokenizer.save_pretrained(head)
    train = _write(tmp_path / "train.tsv", "text\tlabel\na\tneg\nb\tpos\nc\tmixed\n")
    with pytest.raises(ValueError, match=r"num_labels 2 \(neg, pos\) but the training data has 3 labels"):
        finetune_classifier(train, train, head, quick(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_conll_and_squad_data(tmp_path, tiny_model, conll):
    with pytest.raises(ValueError, match="holds no sentences"):
        finetune_ner(
            _write(tmp_path / "t.txt", "-DOCSTART- O\n\n"), conll[1], tiny_model, quick(tmp_path / "o")
        )
    dev = _write(tmp_path / "d.txt", "EU B-ORG\nsaid O\n\nHe B-WHO\n")
    with pytest.raises(ValueError, match=r"d\.txt line 4: label 'B-WHO' is not among"):
        finetune_ner(conll[0], dev, tiny_model, quick(tmp_path / "o"))
    with pytest.raises(ValueError, match="line 1: tag 'ORG' is not IOB2"):
        finetune_ner(_write(tmp_path / "x.txt", "EU ORG\n"), conll[1], tiny_model, quick(tmp_path / "o"))
    with pytest.raises(ValueError, match="not valid JSON"):
        finetune_qa(_write(tmp_path / "q.json", "{"), conll[1], tiny_model, quick(tmp_path / "o"))
    with pytest.raises(ValueError, match="holds no questions"):
        finetune_qa(_write(tmp_path / "q.json", '{"data": []}'), conll[1], tiny_model, quick(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# ---- each command, end to end --------------------------------------------------------------------


def run_cli(args: list[str], capsys) -> str:
    assert cli.main(args) == 0
    return capsys.readouterr().out


def _check_run(out: Path, metric: str) -> dict:
    for name in ("best", "last"):
        assert (out / name / "model.safetensors").is_file() and (out / name / "tokenizer.json").is_file()
    assert (out / "metrics.png").is_file()
    evals = [r for r in read_metrics(out) if f"eval_{metric}" in r]
    assert evals, "no evaluation was logged"
    return evals[-1]


def test_finetune_and_evaluate_classify(tmp_path, tiny_model, sst2, capsys):
    out = tmp_path / "run"
    common = ["--model", str(tiny_model), "--out", str(out), "--text-column", "sentence"]
    run_cli(["finetune", "classify", "--train", str(sst2[0]), "--dev", str(sst2[1]), *common,
             "--epochs", "2", "--batch-size", "8", "--no-progress"], capsys)  # fmt: skip
    last = _check_run(out, "accuracy")
    assert json.loads((out / "last" / "config.json").read_text())["id2label"] == {"0": "0", "1": "1"}
    shown = json.loads(run_cli(["evaluate", "classify", "--model", str(out / "last"), "--data", str(sst2[1]),
                                "--text-column", "sentence", "--json"], capsys))  # fmt: skip
    assert shown == pytest.approx({"accuracy": last["eval_accuracy"], "macro_f1": last["eval_macro_f1"]})
    int8 = json.loads(run_cli(["evaluate", "classify", "--model", str(out / "last"), "--data", str(sst2[1]),
                               "--text-column", "sentence", "--dtype", "int8", "--json"], capsys))  # fmt: skip
    assert int8["accuracy"] == pytest.approx(
        shown["accuracy"], abs=0.02
    )  # what int8 costs: a little, if anything


def test_finetune_and_evaluate_ner(tmp_path, tiny_model, conll, capsys):
    out = tmp_path / "run"
    run_cli(["finetune", "ner", "--train", str(conll[0]), "--dev", str(conll[1]), "--model", str(tiny_model),
             "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress"], capsys)  # fmt: skip
    last = _check_run(out, "f1")
    shown = json.loads(
        run_cli(["evaluate", "ner", "--model", str(out / "last"), "--data", str(conll[1]), "--json"], capsys)
    )
    assert shown == pytest.approx({k: last[f"eval_{k}"] for k in ("precision", "recall", "f1")})


def test_finetune_and_evaluate_qa(tmp_path, tiny_model, squad, capsys):
    out = tmp_path / "run"
    run_cli(["finetune", "qa", "--train", str(squad[0]), "--dev", str(squad[1]), "--model", str(tiny_model),
             "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress"], capsys)  # fmt: skip
    last = _check_run(out, "f1")
    shown = json.loads(
        run_cli(["evaluate", "qa", "--model", str(out / "last"), "--data", str(squad[1]), "--json"], capsys)
    )
    assert shown == pytest.approx({"exact_match": last["eval_exact_match"], "f1": last["eval_f1"]})


@pytest.fixture(scope="module")
def multi30k(tmp_path_factory, data_dir) -> tuple[list[str], list[str]]:
    """24 training and 8 dev pairs of Multi30k (English -> German): (train files, dev files)."""
    folder = tmp_path_factory.mktemp("multi30k")
    files = {}
    for split, n in (("train", 24), ("val", 8)):
        for lang in ("en", "de"):
            lines = (data_dir / "multi30k" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()[:n]
            files[split, lang] = str(_write(folder / f"{split}.{lang}", "\n".join(lines) + "\n"))
    return [files["train", "en"], files["train", "de"]], [files["val", "en"], files["val", "de"]]


def test_finetune_evaluate_and_use_translate(tmp_path, tiny_model, multi30k, capsys):
    out, (train, dev) = tmp_path / "run", multi30k
    run_cli(["finetune", "translate", "--train", *train, "--dev", *dev, "--model", str(tiny_model),
             "--out", str(out), "--epochs", "1", "--batch-size", "8", "--no-progress"], capsys)  # fmt: skip
    last = _check_run(out, "bleu")
    assert json.loads((out / "last" / "config.json").read_text())["architectures"] == ["EncoderDecoderModel"]
    hypotheses = tmp_path / "hyp.de"
    shown = json.loads(run_cli(["evaluate", "translate", "--model", str(out / "last"), "--data", *dev,
                                "--num-beams", "1", "--output", str(hypotheses), "--json"], capsys))  # fmt: skip
    assert shown == pytest.approx(
        {"bleu": last["eval_bleu"], "chrf": last["eval_chrf"]}
    )  # the same greedy search
    assert len(hypotheses.read_text(encoding="utf-8").splitlines()) == 8
    line = json.loads(run_cli(["translate", "A dog runs.", "--model", str(out / "last"), "--json"], capsys))
    assert line["text"] == "A dog runs." and isinstance(line["translation"], str)
    # an encoder-decoder checkpoint continues training as it is
    run_cli(["finetune", "translate", "--train", *train, "--dev", *dev, "--model", str(out / "last"),
             "--out", str(tmp_path / "more"), "--max-steps", "1", "--batch-size", "8", "--no-progress"], capsys)  # fmt: skip
    _check_run(tmp_path / "more", "bleu")


def test_translate_with_a_model_that_is_not_a_translator(tiny_model, capsys):
    assert cli.main(["translate", "A dog.", "--model", str(tiny_model)]) == 2
    assert "is not a EncoderDecoder checkpoint" in capsys.readouterr().err


def test_split_squad_command(tmp_path, squad, capsys):
    both = squad[0].parent / "both.json"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    run_cli(
        [
            "finetune",
            "split-squad",
            str(both),
            "--fraction",
            "0.5",
            "--train-out",
            str(a),
            "--dev-out",
            str(b),
        ],
        capsys,
    )
    assert a.read_text() == squad[0].read_text() and b.read_text() == squad[1].read_text()


def test_classifier_learns_a_separable_task(tmp_path, tiny_model):
    """A tiny model must learn "great ..." vs "awful ..." from scratch: guards label/feature wiring."""
    words = ["film", "plot", "cast", "music", "story", "ending", "scene", "script"]
    rows = [f"{w} is {m}\t{y}" for w in words for m, y in (("great", "pos"), ("awful", "neg"))] * 3
    data = _write(tmp_path / "d.tsv", "text\tlabel\n" + "\n".join(rows) + "\n")
    # a random model sits on a plateau for a while; 84 steps at a high rate get past it for any seed tried
    cfg = quick(tmp_path / "out", max_epochs=14, lr=1e-2, warmup_ratio=0.0, eval_every=1000)
    result = finetune_classifier(data, data, tiny_model, cfg)
    assert result.last_eval["accuracy"] == 1.0
    assert evaluate_classifier(tmp_path / "out" / "best", data) == pytest.approx(result.last_eval)
