"""Metrics: hand-worked cases, and seqeval / scikit-learn / the official SQuAD v1.1 logic as references."""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from roberta.metrics import (
    accuracy,
    entities,
    entity_scores,
    exact_match,
    macro_f1,
    normalize_answer,
    squad_scores,
    token_f1,
)

# ---- classification ------------------------------------------------------------------------------


def test_accuracy_and_macro_f1_by_hand():
    gold = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    # class 0: tp 2 fp 0 fn 1 -> 4/5; class 1: tp 1 fp 1 fn 1 -> 2/4; class 2: tp 1 fp 1 fn 0 -> 2/3
    assert macro_f1(pred, gold) == pytest.approx((4 / 5 + 1 / 2 + 2 / 3) / 3)
    # a class only ever predicted still counts (F1 0), as in scikit-learn
    assert macro_f1(["a", "b"], ["a", "a"]) == pytest.approx((2 / 3 + 0) / 2)


def test_classification_metrics_match_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference")
    rng = random.Random(0)
    for _ in range(50):
        n, k = rng.randint(1, 30), rng.randint(1, 4)
        gold = [rng.randrange(k) for _ in range(n)]
        pred = [rng.randrange(k) for _ in range(n)]
        assert accuracy(pred, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, pred))
        ref = sklearn_metrics.f1_score(gold, pred, average="macro", zero_division=0)
        assert macro_f1(pred, gold) == pytest.approx(ref)


def test_classification_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no examples"):
        macro_f1([], [])


# ---- named entities ------------------------------------------------------------------------------


def test_entities_by_hand():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # an I- after O, or after another type, starts an entity (seqeval's default mode)
    assert entities(["O", "I-ORG", "I-ORG", "I-PER"]) == [("ORG", 1, 2), ("PER", 3, 3)]
    # B- always starts a new entity, even of the same type
    assert entities(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 0), ("PER", 1, 2)]
    assert entities(["B-MISC", "I-LOC"]) == [("MISC", 0, 0), ("LOC", 1, 1)]
    assert entities([]) == []
    with pytest.raises(ValueError, match="not IOB2"):
        entities(["PER"])


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-MISC"]]
    # gold: PER, LOC, ORG; predicted: PER, ORG, MISC; correct: PER, ORG
    s = entity_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    # a boundary error is a miss: PER(0,0) is not PER(0,1)
    s = entity_scores([["B-PER", "I-PER"]], [["B-PER", "O"]])
    assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # entities do not join across sentences
    s = entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
    assert s["f1"] == 1.0


def test_entity_scores_match_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics", reason="seqeval is the reference")
    rng = random.Random(0)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(200):
        lengths = [rng.randint(1, 8) for _ in range(rng.randint(1, 4))]
        gold = [[rng.choice(tags) for _ in range(n)] for n in lengths]
        pred = [[rng.choice(tags) for _ in range(n)] for n in lengths]
        ours = entity_scores(gold, pred)
        assert ours["precision"] == pytest.approx(seqeval.precision_score(gold, pred, zero_division=0))
        assert ours["recall"] == pytest.approx(seqeval.recall_score(gold, pred, zero_division=0))
        assert ours["f1"] == pytest.approx(seqeval.f1_score(gold, pred, zero_division=0))


def test_entity_scores_reject_misaligned_input():
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags for 2 gold"):
        entity_scores([["O", "O"]], [["O"]])


# ---- SQuAD ---------------------------------------------------------------------------------------


def official_normalize(s):
    """SQuAD v1.1's evaluate-v1.1.py normalize_answer, verbatim in structure."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def test_squad_normalisation_by_hand():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # articles are whole words only
    assert normalize_answer("the-end") == "theend"  # punctuation goes first, so no article is left
    assert exact_match("the Broncos", "Broncos.") == 1.0
    assert exact_match("Denver Broncos", "Broncos") == 0.0


def test_squad_scores_by_hand():
    # q1: exact after normalisation; q2: F1 of "denver broncos team" vs "denver broncos" = 2*(2/3*1)/(5/3) = 0.8;
    # q3: best over two golds ("1990" matches the second); q4: no prediction scores 0
    preds = {"q1": "The Broncos", "q2": "Denver Broncos team", "q3": "1990"}
    golds = {"q1": ["Broncos"], "q2": ["Denver Broncos"], "q3": ["in 1989", "1990"], "q4": ["x"]}
    s = squad_scores(preds, golds)
    assert s["exact_match"] == pytest.approx(100 * 2 / 4)
    assert s["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 0) / 4)
    assert token_f1("", "x") == 0.0


def test_squad_matches_official_logic():
    rng = random.Random(0)
    words = ["The", "a", "An", "cat", "cat.", "Sat", "on", "mat", "(1990)", "theatre", "-", "Cat's"]
    for _ in range(300):
        pred = " ".join(rng.choice(words) for _ in range(rng.randint(0, 5)))
        gold = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        assert normalize_answer(pred) == official_normalize(pred)
        assert token_f1(pred, gold) == pytest.approx(official_f1(pred, gold))
        assert exact_match(pred, gold) == float(official_normalize(pred) == official_normalize(gold))


def test_squad_scores_reject_bad_input():
    with pytest.raises(ValueError, match="no questions"):
        squad_scores({}, {})
    with pytest.raises(ValueError, match="has no gold answer"):
        squad_scores({"q": "x"}, {"q": []})
