"""Task inference (roberta/tasks/, on roberta.predict's base) and its CLI, against transformers.

Tiny random-weight transformers checkpoints with the real roberta-base vocabulary (so both sides
tokenize alike) are saved once per module, with tokenizer files. Random weights give arbitrary but
deterministic predictions: what is compared is the decoding — QA spans on SQuAD, NER aggregation on
CoNLL-2003, fill-mask rankings — and the invariance of results to batch size and order.
"""

from __future__ import annotations

import json
import random
import shutil
import warnings

import numpy as np
import pytest
import torch

from roberta.cli import main
from roberta.predict import length_sorted_batches, token_budget_batches
from roberta.tasks import Classifier, Embedder, FillMask, QuestionAnswerer, Tagger
from roberta.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
TINY = dict(
    vocab_size=50265,  # the real vocabulary
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=514,  # 512 tokens, as roberta-base
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    initializer_range=0.2,  # larger than usual: peakier outputs, so rankings are far from ties
)
CHECKPOINTS = {
    "mlm": ("RobertaForMaskedLM", {}),
    "qa": ("RobertaForQuestionAnswering", {}),
    "ner": ("RobertaForTokenClassification", dict(id2label=dict(enumerate(CONLL_LABELS)))),
    "single": ("RobertaForSequenceClassification", dict(id2label={0: "neg", 1: "neu", 2: "pos"})),
    "multi": (
        "RobertaForSequenceClassification",
        dict(num_labels=4, problem_type="multi_label_classification"),
    ),
    "regression": ("RobertaForSequenceClassification", dict(num_labels=1)),
}
TEXTS = [
    "A short one.",
    "Angela Merkel met Emmanuel Macron in Berlin on Tuesday to discuss the European Union budget.",
    "Hi",
    "The quick brown fox jumps over the lazy dog, again and again, until it is tired.",
    "",
    "U.S. stocks rose; the Dow Jones index gained 1.2% (about 400 points).",
    "Ünïcödé wörds and emoji 🙂 too.",
]
LONG = "word " * 700  # 700+ tokens: longer than the 512 the model takes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """name -> folder of a tiny random transformers checkpoint with roberta-base's tokenizer files."""
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer", model_max_length=512)
    tokenizer.save_pretrained(root / "tokenizer")
    folders = {}
    for name, (cls, overrides) in CHECKPOINTS.items():
        torch.manual_seed(0)
        getattr(transformers, cls)(transformers.RobertaConfig(**TINY, **overrides)).save_pretrained(
            root / name
        )
        for f in (root / "tokenizer").iterdir():
            shutil.copy(f, root / name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def load(tiny):
    """load(Predictor class, checkpoint name) -> that predictor on the CPU, loaded once per module."""
    cache = {}

    def get(cls, name: str):
        if (cls, name) not in cache:
            cache[cls, name] = cls.from_pretrained(tiny[name], device="cpu")
        return cache[cls, name]

    return get


@pytest.fixture(scope="module")
def hf_tokenizer(tiny):
    return transformers.AutoTokenizer.from_pretrained(tiny["mlm"])


# ---- question answering: SQuAD v1.1 dev against transformers' pipeline -------------------------


def squad_questions(data_dir, n: int = 200) -> list[tuple[str, str]]:
    """n (question, context) pairs spread evenly over the SQuAD v1.1 dev set."""
    data = json.loads((data_dir / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return pairs[:: len(pairs) // n][:n]


def reference_answer(model, tokenizer, question, context, max_length, doc_stride, max_answer_len, top_k=1):
    """transformers' QuestionAnsweringPipeline (v4.57, the last release that has it: transformers 5
    removed the task), step by step with its own span decoder `select_starts_ends`:

    windows from the tokenizer (only_second truncation, stride, overflow), one forward pass per
    window without padding; p_mask = every non-context token except <s>; the best 2*top_k+10 spans
    per window, each widened to whole words; spans with the same text (case-insensitive) add
    their scores; answers sorted by score (a stable sort), top_k kept.
    """
    from transformers.pipelines.document_question_answering import select_starts_ends

    enc = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    answers = []
    for w in range(len(enc["input_ids"])):
        ids = torch.tensor([enc["input_ids"][w]])
        p_mask = np.array([[0 if s == 1 else 1 for s in enc.sequence_ids(w)]])
        p_mask[0, 0] = 0  # <s> stays in the softmax
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        starts, ends, scores, _ = select_starts_ends(
            out.start_logits.numpy(), out.end_logits.numpy(), p_mask, np.ones_like(p_mask),
            top_k=2 * top_k + 10, max_answer_len=max_answer_len,
        )  # fmt: skip
        e = enc.encodings[w]
        for s, t, score in zip(starts, ends, scores):
            try:
                a, b = e.word_to_chars(e.token_to_word(s), 1)[0], e.word_to_chars(e.token_to_word(t), 1)[1]
            except Exception:  # no word (special token): the pipeline keeps the token offsets
                a, b = e.offsets[s][0], e.offsets[t][1]
            same = [x for x in answers if x["answer"].lower() == context[a:b].lower()]
            if same:
                same[0]["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": a, "end": b, "answer": context[a:b]})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]


def test_answer_matches_transformers_qa_pipeline_on_squad(tiny, load, hf_tokenizer, data_dir):
    pairs = squad_questions(data_dir)
    model = transformers.RobertaForQuestionAnswering.from_pretrained(tiny["qa"]).eval()
    window = dict(max_length=128, doc_stride=32, max_answer_len=30)
    qa = load(QuestionAnswerer, "qa")
    ours = qa.answer([q for q, _ in pairs], [c for _, c in pairs], batch_size=16, **window)
    several_windows = 0
    for (question, context), got in zip(pairs, ours):
        [want] = reference_answer(model, hf_tokenizer, question, context, **window)
        assert (got["answer"], got["start"], got["end"]) == (want["answer"], want["start"], want["end"]), (
            question
        )
        assert abs(got["score"] - want["score"]) < 1e-4
        assert context[got["start"] : got["end"]] == got["answer"]
        several_windows += len(hf_tokenizer(question, context)["input_ids"]) > window["max_length"]
    assert several_windows >= 100  # most contexts needed more than one window


def test_answer_top_k_and_single_question(tiny, load, hf_tokenizer, data_dir):
    question, context = squad_questions(data_dir, 7)[3]
    model = transformers.RobertaForQuestionAnswering.from_pretrained(tiny["qa"]).eval()
    qa = load(QuestionAnswerer, "qa")
    got = qa.answer(question, context, top_k=3, max_length=96, doc_stride=24, max_answer_len=10)
    want = reference_answer(model, hf_tokenizer, question, context, 96, 24, 10, top_k=3)
    assert [(a["answer"], a["start"]) for a in got] == [(a["answer"], a["start"]) for a in want]
    assert np.allclose([a["score"] for a in got], [a["score"] for a in want], atol=1e-4)
    best = qa.answer(question, context, max_length=96, doc_stride=24, max_answer_len=10)
    assert best == got[0]


# ---- NER: CoNLL-2003 against transformers' token-classification pipeline -----------------------


def conll_sentences(data_dir, n: int = 200) -> list[str]:
    """The first n sentences of the CoNLL-2003 test set, words joined by spaces."""
    sentences, words = [], []
    for line in (data_dir / "conll2003" / "test.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                sentences.append(" ".join(words))
            words = []
        elif not line.startswith("-DOCSTART-"):
            words.append(line.split(" ")[0])
    return sentences[:n]


def test_tag_matches_transformers_ner_pipeline_first_strategy(tiny, load, data_dir):
    texts = conll_sentences(data_dir)
    pipe = transformers.pipeline(
        "token-classification",
        model=str(tiny["ner"]),
        tokenizer=str(tiny["ner"]),
        aggregation_strategy="first",
    )
    with warnings.catch_warnings():  # "Tokenizer does not support real words": it splits words at spaces
        warnings.simplefilter("ignore")
        wanted = pipe(texts)
    got = load(Tagger, "ner").tag(texts, batch_size=16)
    n_entities = 0
    for text, ours, theirs in zip(texts, got, wanted):
        assert [(e["entity"], e["start"], e["end"]) for e in ours] == [
            (e["entity_group"], e["start"], e["end"]) for e in theirs
        ], text
        for a, b in zip(ours, theirs):
            assert a["word"] == text[a["start"] : a["end"]]
            assert a["word"] == b["word"].strip()  # theirs is decoded tokens: ' Japan' keeps the Ġ space
            assert abs(a["score"] - float(b["score"])) < 1e-4
        n_entities += len(ours)
    assert n_entities > 300  # random weights spread labels: plenty of entities to compare


def test_tag_words_and_grouping_by_hand(load):
    """B- starts an entity, I- of the same type continues it, O ends it; offsets cut the word."""
    from roberta.tasks.ner import group_entities, words_of

    text = "New  York-based U.S. firm"
    tok = load(Tagger, "ner").tokenizer
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    words = words_of(text, enc["offset_mapping"], enc["special_tokens_mask"])
    spans = [(enc["offset_mapping"][w[0]][0], enc["offset_mapping"][w[-1]][1]) for w in words]
    assert [text[a:b] for a, b in spans] == ["New", "York-based", "U.S.", "firm"]  # the "  " token is no word
    labels = [("B-LOC", 0.9), ("I-LOC", 0.7), ("B-LOC", 0.5), ("O", 0.8)]
    entities = group_entities(text, [(lab, s, a, b) for (lab, s), (a, b) in zip(labels, spans)])
    assert [(e["entity"], e["word"]) for e in entities] == [("LOC", "New  York-based"), ("LOC", "U.S.")]
    assert entities[0]["score"] == pytest.approx(0.8)


# ---- fill-mask ---------------------------------------------------------------------------------


def test_fill_mask_top_k_is_the_ranking_of_transformers_logits(tiny, load, hf_tokenizer):
    model = transformers.RobertaForMaskedLM.from_pretrained(tiny["mlm"]).eval()
    fm = load(FillMask, "mlm")
    texts = ["Paris is the <mask> of France.", "<mask> and <mask> went home.", "A <mask>"]
    got = fm.fill_mask(texts, top_k=7, batch_size=2)
    for text, result in zip(texts, got):
        enc = hf_tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]  # (T, V)
        positions = (enc["input_ids"][0] == hf_tokenizer.mask_token_id).nonzero().flatten().tolist()
        per_mask = result if len(positions) > 1 else [result]
        assert len(per_mask) == len(positions)
        for pos, predictions in zip(positions, per_mask):
            probs = logits[pos].softmax(-1)
            assert [p["token"] for p in predictions] == probs.argsort(descending=True)[:7].tolist()
            assert np.allclose(
                [p["score"] for p in predictions], probs.sort(descending=True).values[:7], atol=1e-5
            )
    first = got[0][0]
    assert first["token_str"] == hf_tokenizer.decode([first["token"]])
    assert first["sequence"] == "Paris is the" + first["token_str"] + " of France."
    alone = fm.fill_mask(texts[0], top_k=7)  # a str in, its result out
    assert [p["token"] for p in alone] == [p["token"] for p in got[0]]
    assert np.allclose([p["score"] for p in alone], [p["score"] for p in got[0]], atol=1e-6)


# ---- classify / embed: against transformers, and the same results whatever the batching --------


def shuffled(texts: list[str], seed: int = 0) -> tuple[list[str], list[int]]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    return [texts[i] for i in order], order


@pytest.mark.parametrize("name", ["single", "multi", "regression"])
def test_classify_matches_transformers_and_not_batching(tiny, load, hf_tokenizer, name):
    model = transformers.RobertaForSequenceClassification.from_pretrained(tiny[name]).eval()
    clf = load(Classifier, name)
    got = clf.classify(TEXTS, batch_size=3)
    for text, r in zip(TEXTS, got):
        with torch.no_grad():
            logits = model(**hf_tokenizer(text, return_tensors="pt")).logits[0]
        if name == "single":
            probs = logits.softmax(-1)
            assert r["label"] == ["neg", "neu", "pos"][int(probs.argmax())]
            assert np.allclose(list(r["scores"].values()), probs, atol=1e-5)
        elif name == "multi":
            probs = logits.sigmoid()
            assert np.allclose(list(r["scores"].values()), probs, atol=1e-5)
            assert set(r["labels"]) == {f"LABEL_{i}" for i in range(4) if probs[i] > 0.5}
        else:
            assert abs(r["score"] - logits.item()) < 1e-5
    scores = lambda rs: np.array([r["score"] if "score" in r else list(r["scores"].values()) for r in rs])  # noqa: E731
    for batch_size in (1, 2, 64):
        assert np.allclose(scores(clf.classify(TEXTS, batch_size=batch_size)), scores(got), atol=1e-5)
    bf16 = Classifier.from_pretrained(tiny[name], device="cpu", dtype=torch.bfloat16)  # opt-in bf16
    assert np.allclose(scores(bf16.classify(TEXTS)), scores(got), atol=0.05)
    int8 = Classifier.from_pretrained(tiny[name], device="cpu", dtype=torch.int8)  # opt-in int8
    assert np.allclose(scores(int8.classify(TEXTS)), scores(got), atol=0.05)
    budget = Classifier(clf.model, clf.tokenizer, max_tokens=24)  # a token budget: same results
    assert np.allclose(scores(budget.classify(TEXTS, batch_size=64)), scores(got), atol=1e-5)
    texts, order = shuffled(TEXTS)
    assert np.allclose(scores(clf.classify(texts)), scores(got)[order], atol=1e-5)
    assert clf.classify(TEXTS[1]) == clf.classify(TEXTS[1:2])[0]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_matches_transformers_and_not_batching(tiny, load, hf_tokenizer, pooling):
    model = transformers.RobertaModel.from_pretrained(tiny["mlm"]).eval()  # the MLM's encoder
    emb = load(Embedder, "mlm")
    got = emb.embed(TEXTS, pooling=pooling, normalize=False, batch_size=4)  # (N, C)
    assert got.shape == (len(TEXTS), TINY["hidden_size"])
    for text, v in zip(TEXTS, got):
        with torch.no_grad():
            h = model(**hf_tokenizer(text, return_tensors="pt")).last_hidden_state[0]  # (T, C)
        assert torch.allclose(v, h.mean(0) if pooling == "mean" else h[0], atol=1e-5)
    unit = emb.embed(TEXTS, pooling=pooling)
    assert torch.allclose(unit.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)
    for batch_size in (1, 3, 64):
        assert torch.allclose(emb.embed(TEXTS, pooling=pooling, batch_size=batch_size), unit, atol=1e-5)
    texts, order = shuffled(TEXTS)
    assert torch.allclose(emb.embed(texts, pooling=pooling), unit[order], atol=1e-5)
    assert torch.allclose(emb.embed(TEXTS[1], pooling=pooling), unit[1], atol=1e-6)


def test_tag_and_answer_do_not_depend_on_batching(load):
    tagger = load(Tagger, "ner")
    ref = tagger.tag(TEXTS, batch_size=1)
    texts, order = shuffled(TEXTS)
    mixed = tagger.tag(texts, batch_size=2)  # mixed[j] is the result for TEXTS[order[j]]
    back = [mixed[order.index(i)] for i in range(len(TEXTS))]
    for got in (tagger.tag(TEXTS, batch_size=64), back):
        assert [[(e["entity"], e["start"], e["end"]) for e in r] for r in got] == [
            [(e["entity"], e["start"], e["end"]) for e in r] for r in ref
        ]
        assert np.allclose(
            [e["score"] for r in got for e in r], [e["score"] for r in ref for e in r], atol=1e-5
        )
    qa = load(QuestionAnswerer, "qa")
    questions, contexts = ["Who met?", "Where?", "What rose?"], [TEXTS[1], TEXTS[1] * 9, TEXTS[5]]
    one = qa.answer(questions, contexts, max_length=64, doc_stride=16, batch_size=1)
    many = qa.answer(questions, contexts, max_length=64, doc_stride=16, batch_size=64)
    assert [a["answer"] for a in one] == [a["answer"] for a in many]
    assert np.allclose([a["score"] for a in one], [a["score"] for a in many], atol=1e-5)


def test_a_model_in_training_mode_predicts_without_dropout_and_stays_in_training(tiny, load):
    from roberta import RobertaForSequenceClassification

    model = RobertaForSequenceClassification.from_pretrained(tiny["single"]).train()
    clf = load(Classifier, "single")
    again = Classifier(model, clf.tokenizer).classify(TEXTS)
    assert model.training  # e.g. evaluation in the middle of fine-tuning
    assert np.allclose([r["score"] for r in again], [r["score"] for r in clf.classify(TEXTS)], atol=1e-5)


def test_length_sorted_batches_cover_every_index_once():
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = list(length_sorted_batches(lengths, 3))
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [[lengths[i] for i in b] for b in batches] == [[9, 9, 7], [5, 3, 2], [1]]
    budget = list(length_sorted_batches(lengths, 3, max_tokens=18))  # at most 18 padded tokens each
    assert [[lengths[i] for i in b] for b in budget] == [[9, 9], [7, 5], [3, 2, 1]]
    with pytest.raises(ValueError, match="max_tokens"):
        Classifier(None, None, max_tokens=0)


# ---- long input: truncated with a warning, never an error --------------------------------------


def test_token_budget_batches():
    lengths = [5, 30, 8, 30, 12, 2, 40, 7]
    plan = token_budget_batches(lengths, max_tokens=64, max_batch_size=3)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for b in plan:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64
    assert [lengths[b[0]] for b in plan] == sorted((lengths[b[0]] for b in plan), reverse=True)
    assert token_budget_batches([100, 3], max_tokens=10) == [[0], [1]]  # too long: alone
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches([3], max_tokens=0)


def test_long_input_is_truncated_with_a_warning(tiny, load, hf_tokenizer):
    clf = load(Classifier, "single")
    with pytest.warns(UserWarning, match="longer than the model's 512 tokens were truncated"):
        got = clf.classify(["short", LONG])[1]
    model = transformers.RobertaForSequenceClassification.from_pretrained(tiny["single"]).eval()
    with torch.no_grad():
        logits = model(**hf_tokenizer(LONG, truncation=True, max_length=512, return_tensors="pt")).logits[0]
    assert np.allclose(list(got["scores"].values()), logits.softmax(-1), atol=1e-5)  # the first 512 tokens
    with pytest.warns(UserWarning, match="truncated"):
        entities = load(Tagger, "ner").tag(LONG)
    assert entities and max(e["end"] for e in entities) <= len("word ") * 510
    with pytest.warns(UserWarning, match="truncated"):
        assert load(Embedder, "mlm").embed(LONG).shape == (TINY["hidden_size"],)
    qa = load(QuestionAnswerer, "qa")
    answer = qa.answer("Which word?", LONG + "the end.")  # windows, no warning needed
    assert LONG[answer["start"] : answer["end"]] == answer["answer"]


# ---- bad input: clear errors -------------------------------------------------------------------


def test_bad_input_is_a_clear_error(load):
    clf = load(Classifier, "single")
    with pytest.raises(ValueError, match="empty list"):
        clf.classify([])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str, got int"):
        clf.classify(["fine", 3])
    with pytest.raises(TypeError, match="must be a str or a list of str, got NoneType"):
        clf.classify(None)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        clf.classify("fine", batch_size=0)
    fm = load(FillMask, "mlm")
    with pytest.raises(ValueError, match=r"text #1 has no <mask>: put <mask> where"):
        fm.fill_mask(["a <mask>", "no mask here"])
    with (
        pytest.raises(ValueError, match="1 of its 1 <mask> lie beyond the first 512 tokens"),
        pytest.warns(UserWarning),
    ):
        fm.fill_mask(LONG + "<mask>")
    with pytest.raises(ValueError, match="1 of its 2 <mask> lie beyond"), pytest.warns(UserWarning):
        fm.fill_mask("The <mask> " + LONG + "<mask>")  # not one mask's result in place of two
    qa = load(QuestionAnswerer, "qa")
    with pytest.raises(ValueError, match="has no context"):
        qa.answer("Who?", "  ")
    with pytest.raises(TypeError, match="context must be a str or a list of str, got NoneType"):
        qa.answer("Who?", None)
    with pytest.raises(ValueError, match="one context per question"):
        qa.answer(["Who?", "What?"], ["only one context"])
    with pytest.raises(ValueError, match="doc_stride=60 must be in"):
        qa.answer("Who " * 40, "a context", max_length=100, doc_stride=60)
    with pytest.raises(ValueError, match="max_length must be in 8..512"):
        qa.answer("Who?", "a context", max_length=1000)
    with pytest.raises(
        ValueError, match="pooling must be one of mean, cls, max, mean_sqrt_len; got 'median'"
    ):
        load(Embedder, "mlm").embed("x", pooling="median")


# ---- the CLI: parses, calls the API, prints a table or JSON lines ------------------------------


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_fill_mask_and_classify(tiny, load, capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "fill-mask", "Paris is the <mask> of France.", "--model", tiny["mlm"], "--top-k", 3
    )
    assert code == 0 and "Paris is the <mask> of France." in out and "score" in out
    code, out, _ = run_cli(capsys, "fill-mask", "A <mask> and <mask>.", "--model", tiny["mlm"], "--json")
    [record] = [json.loads(line) for line in out.splitlines()]
    assert record["text"] == "A <mask> and <mask>." and [len(m) for m in record["masks"]] == [5, 5]

    (tmp_path / "texts.txt").write_text("good film\n\nbad film\n", encoding="utf-8")
    code, out, _ = run_cli(
        capsys, "classify", "--file", tmp_path / "texts.txt", "--model", tiny["single"], "--json"
    )
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == ["good film", "bad film"]
    expected = load(Classifier, "single").classify(["good film", "bad film"])
    assert [r["label"] for r in records] == [r["label"] for r in expected]
    code, out, _ = run_cli(
        capsys,
        "classify",
        "--file",
        tmp_path / "texts.txt",
        "--model",
        tiny["single"],
        "--dtype",
        "int8",
        "--json",
    )
    int8 = [json.loads(line) for line in out.splitlines()]
    for got, want in zip(int8, expected):
        assert np.allclose(list(got["scores"].values()), list(want["scores"].values()), atol=0.05)
    code, out, _ = run_cli(capsys, "classify", "good film", "--model", tiny["multi"])
    assert code == 0 and out.splitlines()[0].split()[:2] == ["label", "score"] and "good film" in out


def test_cli_ner_qa_embed(tiny, load, capsys, tmp_path):
    rows = [{"sentence": "Angela Merkel visited Paris."}, {"sentence": "EU rejects German call."}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    code, out, _ = run_cli(
        capsys,
        "ner",
        "--jsonl",
        tmp_path / "in.jsonl",
        "--field",
        "sentence",
        "--model",
        tiny["ner"],
        "--json",
    )
    got = [json.loads(line)["entities"] for line in out.splitlines()]
    assert got == json.loads(json.dumps(load(Tagger, "ner").tag([r["sentence"] for r in rows])))
    code, out, _ = run_cli(capsys, "ner", "Angela Merkel visited Paris.", "--model", tiny["ner"])
    assert code == 0 and out.startswith("Angela Merkel visited Paris.\n  ")

    context = "Angela Merkel met Emmanuel Macron in Berlin."
    code, out, _ = run_cli(
        capsys, "qa", "--question", "Who met?", "--context", context, "--model", tiny["qa"], "--json"
    )
    [answer] = json.loads(out)["answers"]
    assert context[answer["start"] : answer["end"]] == answer["answer"]
    (tmp_path / "context.txt").write_text(context, encoding="utf-8")
    code, out, _ = run_cli(capsys, "qa", "--question", "Who met?", "--context-file", tmp_path / "context.txt", "--model", tiny["qa"])  # fmt: skip
    assert code == 0 and out.startswith("Q: Who met?") and answer["answer"] in out
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"question": "Who met?", "context": context}), encoding="utf-8"
    )
    code, out, _ = run_cli(capsys, "qa", "--jsonl", tmp_path / "qa.jsonl", "--model", tiny["qa"], "--json")
    assert json.loads(out)["answers"] == [answer]

    code, out, _ = run_cli(
        capsys, "embed", "a text", "another", "--model", tiny["mlm"], "--json", "--pooling", "cls"
    )
    vectors = torch.tensor([json.loads(line)["embedding"] for line in out.splitlines()])
    expected = load(Embedder, "mlm").embed(["a text", "another"], pooling="cls")
    assert torch.allclose(vectors, expected, atol=1e-6)
    code, out, _ = run_cli(capsys, "embed", "a text", "--model", tiny["mlm"])
    assert code == 0 and out.startswith(f"1 x {TINY['hidden_size']} embeddings")


def test_cli_bad_input_is_one_clear_line(tiny, capsys, tmp_path):
    code, _, err = run_cli(capsys, "fill-mask", "no mask", "--model", tiny["mlm"])
    assert code == 2 and err.startswith("roberta fill-mask: error: text #0 has no <mask>")
    code, _, err = run_cli(capsys, "classify", "--model", tiny["single"])
    assert code == 2 and "exactly one of them" in err
    code, _, err = run_cli(capsys, "classify", "--file", tmp_path / "missing.txt", "--model", tiny["single"])
    assert code == 2 and "missing.txt" in err
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n', encoding="utf-8")
    code, _, err = run_cli(capsys, "embed", "--jsonl", tmp_path / "bad.jsonl", "--model", tiny["mlm"])
    assert code == 2 and "bad.jsonl line 2 has no field 'text'" in err and "--field" in err
    code, _, err = run_cli(capsys, "qa", "--question", "Who?", "--model", tiny["qa"])
    assert code == 2 and "--context" in err
    code, _, err = run_cli(
        capsys, "embed", "a text", "--model", tiny["mlm"], "--dtype", "int8", "--device", "cuda"
    )
    assert code == 2 and "int8 runs on the CPU only" in err
