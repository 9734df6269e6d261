"""Multiple choice: which of several candidate answers (or continuations) fits a context best.

    finetune_multiple_choice("train.jsonl", "dev.jsonl", "roberta-small-books",
                             TrainConfig(out_dir="runs/choice"))
    evaluate_multiple_choice("runs/choice/best", "test.jsonl")          # {"accuracy"}
    MultipleChoice.from_pretrained("runs/choice/best").choose("The sky is", ["blue.", "made of cheese."])

    roberta finetune multiple-choice --train train.jsonl --dev dev.jsonl --out runs/choice
    roberta multiple-choice --context "The sky is" --choice "blue." --choice "made of cheese." --model runs/choice/best
    POST /multiple-choice {"context": "The sky is", "choices": ["blue.", "made of cheese."]}

Data: JSON lines, one question a line: {"context": "...", "choices": ["...", "..."], "label": 1}
(field names set by --context-field, --choices-field, --label-field; the label is the index of
the right choice). Each (context, choice) pair is encoded as `<s> context </s></s> choice </s>`
and scored by RobertaForMultipleChoice (the pooled `<s>` -> Linear(C, 1)); a softmax over a
question's choices gives their probabilities, as in transformers' run_swag example.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from roberta.collate import Batch, pad_batch
from roberta.heads import RobertaForMultipleChoice
from roberta.metrics import accuracy
from roberta.predict import Predictor, as_text_list
from roberta.tasks.common import (
    Feature,
    Task,
    Texts,
    field_of,
    load_finetuned,
    max_length_for,
    pad_values,
    read_jsonl,
    run_finetuning,
    short,
)
from roberta.tokenizer import Tokenizer
from roberta.train import TrainConfig, TrainResult, seed_everything

# ---- data ------------------------------------------------------------------------------------------


@dataclass
class ChoiceExample:
    """One question: its context, the candidate choices, the index of the right one, its line."""

    context: str
    choices: list[str]
    label: int
    line: int


def read_choices(
    path: str | os.PathLike,
    context_field: str = "context",
    choices_field: str = "choices",
    label_field: str = "label",
    same_count: bool = True,
) -> list[ChoiceExample]:
    """Read a JSON-lines file of questions. Each needs a context (str), two or more choices (a list
    of non-empty str) and the index of the right one; with `same_count`, every question must have
    as many choices as the first (training batches stack them). ValueError naming the line."""
    path = Path(path)
    examples = []
    for n, row in read_jsonl(path):
        context = field_of(row, context_field, path, n, "--context-field")
        choices = field_of(row, choices_field, path, n, "--choices-field")
        label = field_of(row, label_field, path, n, "--label-field")
        if not isinstance(context, str):
            raise ValueError(f"{path} line {n}: {context_field!r} must be a string")
        if not (
            isinstance(choices, list)
            and len(choices) >= 2
            and all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise ValueError(
                f"{path} line {n}: {choices_field!r} must be a list of two or more non-empty strings"
            )
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise ValueError(
                f"{path} line {n}: {label_field!r} must be the index of the right choice, 0..{len(choices) - 1}; "
                f"got {label!r}"
            )
        if same_count and examples and len(choices) != len(examples[0].choices):
            raise ValueError(
                f"{path} line {n} has {len(choices)} choices but line {examples[0].line} has "
                f"{len(examples[0].choices)}; give every question the same number of choices"
            )
        examples.append(ChoiceExample(context, choices, label, n))
    if not examples:
        raise ValueError(f"{path} holds no questions")
    return examples


def choice_features(
    tokenizer: Tokenizer, examples: Sequence[ChoiceExample], max_length: int
) -> list[Feature]:
    """Per question: input_ids, one row `<s> context </s></s> choice </s>` per choice (the longer
    of the two trimmed first to max_length tokens), and labels, the right choice's index."""
    contexts = [e.context for e in examples for _ in e.choices]
    choices = [c for e in examples for c in e.choices]
    enc = tokenizer(contexts, choices, truncation=True, max_length=max_length)
    rows, types = enc["input_ids"], enc.get("token_type_ids")  # types: BERT's, 1 on the choice
    features, start = [], 0
    for e in examples:
        features.append({"input_ids": rows[start : start + len(e.choices)], "labels": e.label})
        if types is not None:
            features[-1]["token_type_ids"] = types[start : start + len(e.choices)]
        start += len(e.choices)
    return features


def choice_batch(features: Sequence[Feature], pad_id: int) -> Batch:
    """input_ids and attention_mask (and token_type_ids where the features have them) (B,
    num_choices, T), padded to the longest row; labels (B,)."""
    counts = {len(f["input_ids"]) for f in features}
    if len(counts) != 1:
        raise ValueError(f"questions in one batch need the same number of choices, got {sorted(counts)}")
    N = counts.pop()
    keys = [k for k in ("input_ids", "token_type_ids") if k in features[0]]
    rows = [{k: f[k][j] for k in keys} for f in features for j in range(N)]
    batch = pad_batch(rows, pad_values(pad_id))
    B, T = len(features), batch["input_ids"].shape[1]
    out = {k: batch[k].view(B, N, T) for k in ("attention_mask", *keys)}  # (B, N, T)
    if "labels" in features[0]:
        out["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)  # (B,)
    return out


@torch.no_grad()
def choice_scores(
    model: nn.Module, features: Sequence[Feature], batch_size: int = 32, pad_id: int = 1
) -> dict[str, float]:
    """Accuracy: how often the highest-scoring choice is the right one."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predicted = []
    try:
        for i in range(0, len(features), batch_size):
            batch = choice_batch(features[i : i + batch_size], pad_id)
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits  # (B, N)
            predicted += logits.argmax(-1).tolist()
    finally:
        model.train(was_training)
    return {"accuracy": accuracy(predicted, [f["labels"] for f in features])}


# ---- fine-tuning and evaluation --------------------------------------------------------------------


def finetune_multiple_choice(
    train_file: str | os.PathLike,
    dev_file: str | os.PathLike,
    model: str | os.PathLike,
    cfg: TrainConfig,
    *,
    context_field: str = "context",
    choices_field: str = "choices",
    label_field: str = "label",
    max_length: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `model` to pick the right choice, on JSON-lines questions; the dev file is scored
    by accuracy every cfg.eval_every steps or each epoch."""
    fields = (context_field, choices_field, label_field)
    train_ex, dev_ex = read_choices(train_file, *fields), read_choices(dev_file, *fields)
    tokenizer = Tokenizer.from_pretrained(model)
    seed_everything(cfg.seed)  # the new head's initial weights
    net = RobertaForMultipleChoice.from_pretrained(model)
    length = max_length_for(tokenizer, net.config, max_length)
    train_f = choice_features(tokenizer, train_ex, length)
    dev_f = choice_features(tokenizer, dev_ex, length)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return choice_scores(m, dev_f, cfg.batch_size, tokenizer.pad_token_id)

    return run_finetuning(net, tokenizer, train_f, cfg, eval_fn, "accuracy", resume, collate_fn=choice_batch)


def evaluate_multiple_choice(
    model: str | os.PathLike,
    data_file: str | os.PathLike,
    *,
    context_field: str = "context",
    choices_field: str = "choices",
    label_field: str = "label",
    max_length: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy of a fine-tuned multiple-choice model on JSON-lines questions."""
    tokenizer, net = load_finetuned(model, RobertaForMultipleChoice, device, dtype)
    examples = read_choices(data_file, context_field, choices_field, label_field)
    features = choice_features(tokenizer, examples, max_length_for(tokenizer, net.config, max_length))
    return choice_scores(net, features, batch_size, tokenizer.pad_token_id)


# ---- inference -------------------------------------------------------------------------------------


class MultipleChoice(Predictor):
    """The best of several choices for a context, with each choice's probability."""

    model_class = RobertaForMultipleChoice

    def choose(
        self,
        context: str | Sequence[str],
        choices: Sequence[str] | Sequence[Sequence[str]],
        batch_size: int = 32,
    ) -> dict | list[dict]:
        """Score each choice against its context.

        context, choices: a str and a list of choices, or a list of contexts and one list of
        choices per context (the counts may differ between contexts).
        Returns, per context, {"label": the best choice's index, "choice": its text, "score": its
        probability, "scores": every choice's probability, in order}.
        """
        contexts, single = as_text_list(context, "context")
        per_context = [choices] if single else list(choices)
        if len(per_context) != len(contexts):
            raise ValueError(
                f"pass one list of choices per context: {len(contexts)} contexts, {len(per_context)} lists"
            )
        for i, options in enumerate(per_context):
            as_text_list(options, f"choices[{i}]" if not single else "choices")
        pairs = [(c, o) for c, options in zip(contexts, per_context) for o in options]
        enc = self.tokenizer(
            [p[0] for p in pairs], [p[1] for p in pairs], truncation=True, max_length=self.max_length
        )

        def pair_logits(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
            types = {k: v[:, None] for k, v in types.items()}  # BERT's token types, 1 on the choice
            return (
                self.model(ids[:, None], mask[:, None], **types).logits[:, 0].float().cpu().tolist()
            )  # (B,): one choice each

        logits = self.run(enc["input_ids"], batch_size, pair_logits, enc.get("token_type_ids"))
        results, start = [], 0
        for options in per_context:
            probs = torch.tensor(logits[start : start + len(options)]).softmax(-1)
            start += len(options)
            best = int(probs.argmax())
            results.append(
                {
                    "label": best,
                    "choice": options[best],
                    "score": probs[best].item(),
                    "scores": probs.tolist(),
                }
            )
        return results[0] if single else results


# ---- the task --------------------------------------------------------------------------------------


class MultipleChoiceTask(Task):
    name = "multiple-choice"
    predictor = MultipleChoice
    architectures = ("RobertaForMultipleChoice",)
    onnx_outputs = ("logits",)
    onnx_axes = ("batch", "choice", "length")
    head_required = True
    finetune_help = "pick the right choice: JSON lines with a context, the choices and the right one's index"
    evaluate_help = "accuracy on JSON lines with a context, the choices and the right one's index"

    def add_arguments(self, p) -> None:
        p.add_argument("--context", help="the context (a question, or the start of a sentence)")
        p.add_argument("--choice", action="append", metavar="TEXT", help="a choice; give two or more")
        p.add_argument("--jsonl", help="a JSON-lines file of objects with 'context' and 'choices' fields")

    def inputs(self, args) -> list[tuple[str, list[str]]]:
        if args.jsonl is not None:
            if args.context is not None or args.choice:
                raise ValueError("give either --jsonl FILE or --context with --choice, not both")
            rows = read_jsonl(Path(args.jsonl))
            return [
                (
                    field_of(r, "context", args.jsonl, n, "--jsonl"),
                    field_of(r, "choices", args.jsonl, n, "--jsonl"),
                )
                for n, r in rows
            ]
        if args.context is None or not args.choice or len(args.choice) < 2:
            raise ValueError("give --context TEXT and two or more --choice TEXT (or --jsonl FILE)")
        return [(args.context, args.choice)]

    def input_fields(self, args) -> set[str]:
        return {"context", "choices"}

    def predict(self, predictor: MultipleChoice, items: list, options: dict, batch_size: int) -> list:
        return predictor.choose([c for c, _ in items], [o for _, o in items], batch_size=batch_size)

    def json_line(self, item: tuple[str, list[str]], result: dict) -> dict:
        return {"context": item[0], "choices": item[1], **result}

    def show(self, items: list, results: list, options: dict) -> None:
        for (context, choices), r in zip(items, results):
            print(short(context))
            for i, (choice, p) in enumerate(zip(choices, r["scores"])):
                print(f"  {'*' if i == r['label'] else ' '} {p:.4f}  {short(choice)}")

    def request_fields(self) -> dict:
        return {
            "context": (Texts, dict(description="a context, or a list of them")),
            "choices": (
                list[str] | list[list[str]],
                dict(description="the choices: a list, or one list per context"),
            ),
        }

    def request_items(self, body: dict) -> tuple[list, bool, dict]:
        context, choices = body.pop("context"), body.pop("choices")
        single = isinstance(context, str)
        nested = bool(choices) and all(isinstance(c, list) for c in choices)
        if single == nested:
            raise ValueError(
                "send a context with a list of choices, or a list of contexts with a list of choices each"
            )
        contexts, per_context = ([context], [choices]) if single else (list(context), list(choices))
        if len(contexts) != len(per_context):
            raise ValueError("send one list of choices per context")
        return list(zip(contexts, per_context)), single, body

    def add_finetune_arguments(self, p) -> None:
        super().add_finetune_arguments(p)
        _fields(p)

    def finetune(self, args, cfg: TrainConfig) -> TrainResult:
        return finetune_multiple_choice(
            args.train, args.dev, args.model, cfg, context_field=args.context_field,
            choices_field=args.choices_field, label_field=args.label_field, max_length=args.max_length,
            resume=args.resume,
        )  # fmt: skip

    def add_evaluate_arguments(self, p) -> None:
        super().add_evaluate_arguments(p)
        _fields(p)

    def evaluate(self, args, dtype) -> dict[str, float]:
        return evaluate_multiple_choice(
            args.model, args.data, context_field=args.context_field, choices_field=args.choices_field,
            label_field=args.label_field, max_length=args.max_length, batch_size=args.batch_size, dtype=dtype,
        )  # fmt: skip


def _fields(p) -> None:
    p.add_argument("--context-field", default="context", help="field holding the context (default: context)")
    p.add_argument(
        "--choices-field", default="choices", help="field holding the list of choices (default: choices)"
    )
    p.add_argument(
        "--label-field", default="label", help="field holding the right choice's index (default: label)"
    )


TASK = MultipleChoiceTask()
