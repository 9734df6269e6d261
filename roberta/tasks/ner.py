"""Named-entity recognition (token classification): entity spans with their types.

    finetune_ner("train.conll", "dev.conll", "roberta-small-books", TrainConfig(out_dir="runs/conll"))
    evaluate_ner("runs/conll/best", "test.conll")            # {"precision", "recall", "f1"}
    Tagger.from_pretrained("runs/conll/best").tag("Angela Merkel visited Paris.")

    roberta finetune ner --train train.conll --dev dev.conll --out runs/conll
    roberta ner "Angela Merkel visited Paris." --model runs/conll/best
    POST /ner {"inputs": "Angela Merkel visited Paris."}

Data: CoNLL files (a token and its IOB2 tag per line, the tag last; a blank line between
sentences). A word's label goes on its first sub-token; entity F1 follows seqeval. Decoding groups
sub-tokens into words as transformers' token-classification pipeline does with
aggregation_strategy="first" (tests/test_predict.py checks it on CoNLL-2003).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from roberta.heads import IGNORE_INDEX, RobertaForTokenClassification
from roberta.metrics import entity_scores
from roberta.predict import Predictor, Texts, as_text_list
from roberta.tasks.common import (
    Feature,
    Task,
    check_labels,
    fit_labels,
    label_list,
    label_names,
    load_finetuned,
    max_length_for,
    model_labels,
    outputs,
    read_text,
    run_finetuning,
    short,
    with_token_types,
)
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, TrainResult, seed_everything

# ---- data ------------------------------------------------------------------------------------------


@dataclass
class TaggedSentence:
    """A sentence of a CoNLL file: its words and their IOB2 tags; `line` = its first line."""

    words: list[str]
    tags: list[str]
    line: int


def read_conll(path: str | os.PathLike) -> list[TaggedSentence]:
    """Read a CoNLL file: one token per line, the token first and its tag last (CoNLL-2003 has
    POS and chunk columns between them); a blank line ends a sentence; `-DOCSTART-` is skipped."""
    path = Path(path)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    for n, line in enumerate([*read_text(path).splitlines(), ""], start=1):
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if not fields:
            if words:
                sentences.append(TaggedSentence(words, tags, n - len(words)))
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise ValueError(f"{path} line {n}: expected a token and its tag, got {line!r}")
        words.append(fields[0])
        tags.append(fields[-1])
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return sentences


def check_iob2(sentences: Sequence[TaggedSentence], path: str | os.PathLike) -> None:
    for s in sentences:
        for k, tag in enumerate(s.tags):
            if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
                raise ValueError(
                    f"{path} line {s.line + k}: tag {tag!r} is not IOB2 ('O', 'B-<type>' or 'I-<type>')"
                )


def ner_features(
    tokenizer: Tokenizer, sentences: Sequence[TaggedSentence], label2id: dict[str, int], max_length: int
) -> tuple[list[Feature], list[list[int]]]:
    """Tokenize the words (each as if after a space) and put each word's label on its first
    sub-token, -100 on the other sub-tokens and on <s>, </s>.

    Returns the features {"input_ids": [T], "labels": [T]} and, per sentence, the token position of
    each word's first sub-token (words cut off by truncation have none: evaluation predicts "O").
    """
    enc = tokenizer(
        [s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length
    )
    features, firsts = [], []
    for i, sentence in enumerate(sentences):
        labels, first, previous = [], [], None
        for t, word in enumerate(enc.word_ids(i)):
            if word is None or word == previous:
                labels.append(IGNORE_INDEX)
            else:
                labels.append(label2id[sentence.tags[word]])
                first.append(t)
            previous = word
        features.append({"input_ids": enc["input_ids"][i], "labels": labels})
        firsts.append(first)
    return with_token_types(features, enc), firsts


def ner_scores(
    model: nn.Module,
    features: Sequence[Feature],
    firsts: Sequence[Sequence[int]],
    sentences: Sequence[TaggedSentence],
    batch_size: int = 32,
    pad_id: int = 1,
) -> dict[str, float]:
    """Entity precision/recall/F1: each word's tag is the model's argmax at its first sub-token;
    words cut off by truncation are tagged "O"; the gold tags are the file's, for every word."""
    id2label = model.config.id2label
    predicted: list[list[str]] = []
    for out in outputs(model, features, batch_size, pad_id):
        for row in out.logits.argmax(-1).tolist():  # (T,) label ids
            k = len(predicted)
            tags = [id2label[row[t]] for t in firsts[k]]
            predicted.append(tags + ["O"] * (len(sentences[k].words) - len(tags)))
    return entity_scores([s.tags for s in sentences], predicted)


# ---- fine-tuning and evaluation --------------------------------------------------------------------


def finetune_ner(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    max_length: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `model` to tag words, on CoNLL files (IOB2 tags, read from the training file);
    the dev file is scored by entity precision/recall/F1 (seqeval's convention)."""
    train_s, dev_s = read_conll(train_file), read_conll(dev_file)
    check_iob2(train_s, train_file)
    check_iob2(dev_s, dev_file)
    id2label = fit_labels(
        model, RobertaForTokenClassification, label_list(t for s in train_s for t in s.tags)
    )
    label2id = {v: k for k, v in id2label.items()}
    check_labels(((t, s.line + k) for s in dev_s for k, t in enumerate(s.tags)), label2id, dev_file)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)
    net = RobertaForTokenClassification.from_pretrained(model, id2label=id2label)
    length = max_length_for(tokenizer, net.config, max_length)
    train_f, _ = ner_features(tokenizer, train_s, label2id, length)
    dev_f, dev_firsts = ner_features(tokenizer, dev_s, label2id, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return ner_scores(m, dev_f, dev_firsts, dev_s, cfg.batch_size, tokenizer.pad_token_id)

    return run_finetuning(net, tokenizer, train_f, cfg, eval_fn, "f1", resume)


def evaluate_ner(
    model: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Entity precision, recall and F1 of a fine-tuned tagger on a CoNLL file."""
    tokenizer, net = load_finetuned(model, RobertaForTokenClassification, device, dtype)
    sentences = read_conll(data_file)
    check_iob2(sentences, data_file)
    label2id = model_labels(net)
    check_labels(((t, s.line + k) for s in sentences for k, t in enumerate(s.tags)), label2id, data_file)
    length = max_length_for(tokenizer, net.config, max_length)
    features, firsts = ner_features(tokenizer, sentences, label2id, length)
    return ner_scores(net, features, firsts, sentences, batch_size, tokenizer.pad_token_id)


# ---- inference -------------------------------------------------------------------------------------


def split_tag(label: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'), 'I-PER' -> ('I', 'PER'); any other label continues: 'O' -> ('I', 'O')."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def words_of(text: str, offsets: Sequence[Sequence[int]], special: Sequence[int]) -> list[list[int]]:
    """Token indices grouped into whitespace-delimited words: a token starts a word when it is the
    first or follows whitespace. Special tokens, padding and whitespace-only tokens belong to none."""
    words: list[list[int]] = []
    for t, (start, end) in enumerate(offsets):
        if special[t] or not text[start:end].strip():
            continue
        if not words or start == 0 or text[start - 1].isspace():
            words.append([t])
        else:
            words[-1].append(t)
    return words


def group_entities(text: str, words: list[tuple[str, float, int, int]]) -> list[dict]:
    """(label, score, start, end) per word -> entities: a B- tag (or a new type) starts one, an I- tag
    of the same type extends it; 'O' words are not entities. Score: the mean over its words."""
    groups: list[tuple[str, list]] = []
    for word in words:
        bi, tag = split_tag(word[0])
        if groups and groups[-1][0] == tag and bi != "B":
            groups[-1][1].append(word)
        else:
            groups.append((tag, [word]))
    return [
        {
            "entity": tag,
            "score": sum(w[1] for w in members) / len(members),
            "word": text[members[0][2] : members[-1][3]],
            "start": members[0][2],
            "end": members[-1][3],
        }
        for tag, members in groups
        if tag != "O"
    ]


class Tagger(Predictor):
    """Named entities (or any B-/I- tags) with character spans."""

    model_class = RobertaForTokenClassification

    def tag(self, texts: Texts, batch_size: int = 32) -> list:
        """Entities in each text: a list of {"entity" (type, e.g. "PER"), "score", "word", "start", "end"}
        per text, where text[start:end] == word.

        A word (whitespace-delimited) takes the label of its first sub-token, with that token's
        probability as its score; then B-/I- tags group words into entities (transformers'
        token-classification pipeline with aggregation_strategy="first").
        """
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def probs(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
            return list(
                self.model(ids, mask, **types).logits.float().softmax(-1).cpu()
            )  # B x (T, num_labels)

        per_row = self.run(batch["input_ids"], batch_size, probs, batch.get("token_type_ids"))
        names = label_names(self.model.config)
        results = []
        for i, (text, p) in enumerate(zip(texts, per_row)):
            offsets = batch["offset_mapping"][i]
            words = []
            for tokens in words_of(text, offsets, batch["special_tokens_mask"][i]):
                score, label = p[tokens[0]].max(-1)  # the first sub-token decides
                words.append((names[int(label)], score.item(), offsets[tokens[0]][0], offsets[tokens[-1]][1]))
            results.append(group_entities(text, words))
        return results[0] if single else results


# ---- the task --------------------------------------------------------------------------------------


class NerTask(Task):
    name = "ner"
    offsets_into_text = True  # entity spans are character offsets into the text
    predictor = Tagger
    architectures = ("RobertaForTokenClassification",)
    onnx_outputs = ("logits",)
    head_required = True
    finetune_help = "tag words: CoNLL files (token first, IOB2 tag last, blank line between sentences)"
    evaluate_help = "entity precision, recall and F1 (seqeval's convention) on a CoNLL file"

    def predict(self, predictor: Tagger, items: list, options: dict, batch_size: int) -> list:
        return predictor.tag(items, batch_size=batch_size)

    def json_line(self, item: str, result: list) -> dict:
        return {"text": item, "entities": result}

    def show(self, items: list, results: list, options: dict) -> None:
        for text, entities in zip(items, results):
            print(short(text))
            for e in entities:
                print(f"  {e['entity']:8} {e['score']:.4f}  {e['start']:>5}-{e['end']:<5}  {e['word']}")
            if not entities:
                print("  (no entities)")

    def finetune(self, args, cfg: TrainConfig) -> TrainResult:
        return finetune_ner(
            args.train, args.dev, args.model, cfg, max_length=args.max_length, resume=args.resume
        )

    def evaluate(self, args, dtype) -> dict[str, float]:
        return evaluate_ner(
            args.model, args.data, max_length=args.max_length, batch_size=args.batch_size, dtype=dtype
        )


TASK = NerTask()
