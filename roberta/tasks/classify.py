"""Sequence classification: a label per text (or text pair) — single-label, multi-label or regression.

    finetune_classifier("train.tsv", "dev.tsv", "roberta-small-books",
                        TrainConfig(out_dir="runs/sst2", max_epochs=3, lr=1e-4),
                        text_column="sentence", label_column="label")
    evaluate_classifier("runs/sst2/best", "dev.tsv", text_column="sentence")  # {"accuracy", "macro_f1"}
    Classifier.from_pretrained("runs/sst2/best").classify(["a gripping film", "dull and slow"])

    roberta finetune classify --train train.tsv --dev dev.tsv --text-column sentence --out runs/sst2
    roberta classify "a gripping film" --model runs/sst2/best
    POST /classify {"inputs": ["a gripping film", "dull and slow"]}

Data: a TSV, CSV or JSONL table with a text column and a label column (and optionally a second
text). Labels are read from the training data and stored in the model's config as `id2label`, so
a checkpoint knows its own labels. Everything that can be wrong with the data (a missing column,
a label the training data never showed, an empty file, a broken JSON line, more labels than the
model's head has) is found and reported before training starts.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roberta.heads import RobertaForSequenceClassification
from roberta.metrics import accuracy, macro_f1
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
    read_jsonl,
    read_text,
    run_finetuning,
    short,
    table_columns,
    with_token_types,
)
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, TrainResult, seed_everything

# ---- data ------------------------------------------------------------------------------------------


@dataclass
class TextExample:
    """One row: a text (or a text pair) and its label, with the line it came from."""

    text: str
    text_pair: str | None
    label: str
    line: int


def read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for each row of a .tsv, .csv or .jsonl file; the first line of a
    .tsv/.csv names the columns. TSV fields are taken literally (no quoting), as in GLUE."""
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, text)
    if suffix not in (".tsv", ".csv"):
        raise ValueError(f"{path}: unknown table format {suffix!r}; use .tsv, .csv or .jsonl")
    if suffix == ".tsv":
        reader = csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.DictReader(text.splitlines())
    rows = [(reader.line_num, row) for row in reader]
    if not rows:
        raise ValueError(f"{path} has a header line but no rows")
    return rows


def read_table(
    path: str | os.PathLike, text_column: str, label_column: str, text_pair_column: str | None = None
) -> list[TextExample]:
    """Read a classification table (.tsv, .csv or .jsonl); labels are kept as strings.

    Raises ValueError naming the columns that exist when a named column is missing, and the line
    of any row whose text or label is empty.
    """
    path = Path(path)
    rows = read_rows(path)
    wanted = [c for c in (text_column, text_pair_column, label_column) if c is not None]
    for line, row in rows:
        missing = [c for c in wanted if c not in row]
        if missing:
            raise ValueError(
                f"{path} line {line} has no column {missing[0]!r} (columns: {', '.join(map(str, row))}); "
                "name the right ones with --text-column / --label-column / --text-pair-column"
            )
    examples = []
    for line, row in rows:
        for c in wanted:
            if row[c] is None or str(row[c]).strip() == "":
                raise ValueError(f"{path} line {line}: column {c!r} is empty")
        pair = str(row[text_pair_column]) if text_pair_column else None
        examples.append(TextExample(str(row[text_column]), pair, str(row[label_column]).strip(), line))
    return examples


def classification_features(
    tokenizer: Tokenizer, examples: Sequence[TextExample], label2id: dict[str, int], max_length: int
) -> list[Feature]:
    """Tokenize each text (pair), truncated to max_length tokens: {"input_ids": [T ints], "labels": id}
    (and "token_type_ids", 1 on the second text, for a family that has them: BERT)."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    features = [{"input_ids": ids, "labels": label2id[e.label]} for ids, e in zip(enc["input_ids"], examples)]
    return with_token_types(features, enc)


def classification_scores(
    model: nn.Module, features: Sequence[Feature], batch_size: int = 32, pad_id: int = 1
) -> dict[str, float]:
    """Accuracy and macro-F1 of the model's argmax label against each feature's "labels"."""
    predicted = [
        p for out in outputs(model, features, batch_size, pad_id) for p in out.logits.argmax(-1).tolist()
    ]
    gold = [f["labels"] for f in features]
    return {"accuracy": accuracy(predicted, gold), "macro_f1": macro_f1(predicted, gold)}


# ---- fine-tuning and evaluation --------------------------------------------------------------------


def finetune_classifier(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    max_length: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `model` (a folder, built-in name or Hub id) to classify the rows of a table.

    Labels come from the training file (sorted; stored as id2label); the dev file is scored
    (accuracy, macro-F1) every cfg.eval_every steps or each epoch. max_length: tokens per input,
    default the model's limit. resume: continue from cfg.out_dir/last.
    """
    columns = (text_column, label_column, text_pair_column)
    train_rows, dev_rows = read_table(train_file, *columns), read_table(dev_file, *columns)
    id2label = fit_labels(model, RobertaForSequenceClassification, label_list(e.label for e in train_rows))
    label2id = {v: k for k, v in id2label.items()}
    check_labels(((e.label, e.line) for e in dev_rows), label2id, dev_file)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)  # the new head's initial weights
    net = RobertaForSequenceClassification.from_pretrained(model, id2label=id2label)
    length = max_length_for(tokenizer, net.config, max_length)
    train_f = classification_features(tokenizer, train_rows, label2id, length)
    dev_f = classification_features(tokenizer, dev_rows, label2id, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return classification_scores(m, dev_f, cfg.batch_size, tokenizer.pad_token_id)

    return run_finetuning(net, tokenizer, train_f, cfg, eval_fn, "accuracy", resume)


def evaluate_classifier(
    model: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    max_length: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy and macro-F1 of a fine-tuned classifier on a labelled table."""
    tokenizer, net = load_finetuned(model, RobertaForSequenceClassification, device, dtype)
    rows = read_table(data_file, text_column, label_column, text_pair_column)
    label2id = model_labels(net)
    check_labels(((e.label, e.line) for e in rows), label2id, data_file)
    features = classification_features(
        tokenizer, rows, label2id, max_length_for(tokenizer, net.config, max_length)
    )
    return classification_scores(net, features, batch_size, tokenizer.pad_token_id)


# ---- inference -------------------------------------------------------------------------------------


class Classifier(Predictor):
    """A label (or labels, or a value) per text, as the checkpoint's config says:
    single-label (softmax), multi-label (sigmoid) or regression (the raw output)."""

    model_class = RobertaForSequenceClassification

    @property
    def problem_type(self) -> str:
        """config.problem_type, else regression for one output and single-label otherwise."""
        config = self.model.config
        if config.problem_type:
            return config.problem_type
        return "regression" if config.num_labels == 1 else "single_label_classification"

    def classify(self, texts: Texts, batch_size: int = 32) -> dict | list[dict]:
        """Classify each text. Returns, per text, a dict:

        single-label: {"label": best label, "score": its probability, "scores": {label: probability}}
        multi-label:  {"labels": labels with probability > 0.5, best first, "scores": {label: probability}}
        regression:   {"label": the output's name, "score": the predicted value}
        """
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def logits(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
            return list(self.model(ids, mask, **types).logits.float().cpu())  # B x (num_labels,)

        rows = self.run(batch["input_ids"], batch_size, logits, batch.get("token_type_ids"))
        results = [self._result(x) for x in rows]
        return results[0] if single else results

    def _result(self, logits: torch.Tensor) -> dict:
        names, kind = label_names(self.model.config), self.problem_type
        if kind == "regression":
            if len(names) == 1:
                return {"label": names[0], "score": logits.item()}
            return {"scores": dict(zip(names, logits.tolist()))}
        probs = logits.sigmoid() if kind == "multi_label_classification" else logits.softmax(-1)
        scores = dict(zip(names, probs.tolist()))
        if kind == "multi_label_classification":
            chosen = sorted((n for n in names if scores[n] > 0.5), key=scores.get, reverse=True)
            return {"labels": chosen, "scores": scores}
        best = int(probs.argmax())
        return {"label": names[best], "score": probs[best].item(), "scores": scores}


# ---- the task --------------------------------------------------------------------------------------


class ClassifyTask(Task):
    name = "classify"
    predictor = Classifier
    architectures = ("RobertaForSequenceClassification",)
    onnx_outputs = ("logits",)
    head_required = True
    finetune_help = "label texts: TSV/CSV/JSONL with a text and a label column"
    evaluate_help = "accuracy and macro-F1 on a labelled TSV/CSV/JSONL table"

    def predict(self, predictor: Classifier, items: list, options: dict, batch_size: int) -> list:
        return predictor.classify(items, batch_size=batch_size)

    def json_line(self, item: str, result: dict) -> dict:
        return {"text": item, **result}

    def show(self, items: list, results: list, options: dict) -> None:
        print(f"{'label':20}  {'score':>8}  text")
        for text, r in zip(items, results):
            if "labels" in r:  # multi-label: every label over 0.5
                print(
                    f"{','.join(r['labels']) or '(none)':20}  {max(r['scores'].values()):8.4f}  {short(text)}"
                )
            elif "label" in r:
                print(f"{r['label']:20}  {r['score']:8.4f}  {short(text)}")
            else:  # several regression outputs
                values = " ".join(f"{k}={v:.4f}" for k, v in r["scores"].items())
                print(f"{values:30}  {short(text)}")

    def add_finetune_arguments(self, p) -> None:
        super().add_finetune_arguments(p)
        table_columns(p)

    def finetune(self, args, cfg: TrainConfig) -> TrainResult:
        return finetune_classifier(
            args.train, args.dev, args.model, cfg, text_column=args.text_column, label_column=args.label_column,
            text_pair_column=args.text_pair_column, max_length=args.max_length, resume=args.resume,
        )  # fmt: skip

    def add_evaluate_arguments(self, p) -> None:
        super().add_evaluate_arguments(p)
        table_columns(p)

    def evaluate(self, args, dtype) -> dict[str, float]:
        return evaluate_classifier(
            args.model, args.data, text_column=args.text_column, label_column=args.label_column,
            text_pair_column=args.text_pair_column, max_length=args.max_length, batch_size=args.batch_size,
            dtype=dtype,
        )  # fmt: skip


TASK = ClassifyTask()
