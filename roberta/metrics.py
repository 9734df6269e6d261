"""Evaluation metrics for the fine-tuning tasks, written out so that each convention is visible.

- Classification: `accuracy`, `macro_f1` (the unweighted mean of per-class F1 over every class
  seen in the gold or predicted labels, as scikit-learn's `f1_score(average="macro")`).
- NER: `entities` and `entity_scores`, seqeval's default (CoNLL) convention for IOB2 tags: an
  entity starts at a `B-X`, or at an `I-X` that follows `O` or a tag of another type, and runs
  over the `I-X` after it; precision/recall/F1 are micro-averaged over exact (type, start, end)
  matches.
- Extractive QA: `squad_scores`, the official SQuAD v1.1 evaluation: answers are normalised
  (lowercase, punctuation and the articles a/an/the removed, whitespace collapsed); exact match and
  token F1 take the best over the gold answers; both are reported in percent.
- Translation: `bleu`, corpus BLEU and chrF from sacrebleu (the field's reference implementation,
  with its default 13a tokenisation), in percent.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

# ---- classification --------------------------------------------------------------------------------


def accuracy(predictions: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to the label (predictions, labels: N items each)."""
    _same_length(predictions, labels)
    return sum(p == g for p, g in zip(predictions, labels)) / len(labels)


def macro_f1(predictions: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Unweighted mean over classes of F1 = 2 TP / (2 TP + FP + FN); a class with no TP scores 0.

    The classes are every value in `labels` or `predictions` (scikit-learn's default).
    """
    _same_length(predictions, labels)
    scores = []
    for c in set(labels) | set(predictions):
        tp = sum(p == c and g == c for p, g in zip(predictions, labels))
        fp = sum(p == c and g != c for p, g in zip(predictions, labels))
        fn = sum(p != c and g == c for p, g in zip(predictions, labels))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def _same_length(predictions: Sequence, labels: Sequence) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("no examples to score")


# ---- named entities ------------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag == "O":
        return "O", ""
    if len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not IOB2: use 'O', 'B-<type>' or 'I-<type>'")


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one tag sequence as (type, first, last) token indices, inclusive.

    >>> entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"])
    [('PER', 0, 1), ('LOC', 3, 3), ('LOC', 4, 4), ('ORG', 5, 5)]
    """
    found: list[tuple[str, int, int]] = []
    start, kind = None, ""
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = _split_tag(tag)
        continues = prefix == "I" and type_ == kind and start is not None
        if start is not None and not continues:
            found.append((kind, start, i - 1))
            start = None
        if prefix != "O" and not continues:
            start, kind = i, type_
    return found


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over sentences (lists of IOB2 tags).

    An entity counts as found only if its type, first and last token all match. Returns
    {"precision", "recall", "f1"} in [0, 1] (0 where undefined, as seqeval's zero_division=0).
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted sentences for {len(gold)} gold sentences")
    true_set, pred_set = set(), set()
    for n, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {n}: {len(p)} predicted tags for {len(g)} gold tags")
        true_set.update((n, *e) for e in entities(g))
        pred_set.update((n, *e) for e in entities(p))
    tp = len(true_set & pred_set)
    precision = tp / len(pred_set) if pred_set else 0.0
    recall = tp / len(true_set) if true_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---- extractive question answering ---------------------------------------------------------------

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation, drop a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def token_f1(prediction: str, answer: str) -> float:
    """F1 over the bags of normalised words of the prediction and the answer."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1, in percent, over the questions in `answers`.

    Args:
        predictions: question id -> predicted answer text.
        answers: question id -> the gold answer texts (the best-matching one counts).
    A question without a prediction scores 0, as in the official script.
    """
    if not answers:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for qid, golds in answers.items():
        if not golds:
            raise ValueError(f"question {qid!r} has no gold answer")
        pred = predictions.get(qid)
        if pred is None:
            continue
        em += max(exact_match(pred, g) for g in golds)
        f1 += max(token_f1(pred, g) for g in golds)
    return {"exact_match": 100 * em / len(answers), "f1": 100 * f1 / len(answers)}


# ---- translation -----------------------------------------------------------------------------------


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (percent) of detokenised hypotheses against one reference each."""
    _same_length(hypotheses, references)
    try:
        import sacrebleu
    except ImportError:
        raise ImportError('BLEU needs sacrebleu: pip install -e ".[translate]"') from None
    return {
        "bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
        "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score,
    }
