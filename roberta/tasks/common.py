"""What the tasks share: the `Task` protocol the registry holds, input files, labels, the
fine-tuning driver around `roberta.train`, and loading a fine-tuned checkpoint.

A task module (roberta/tasks/<name>.py) holds what is that task's alone: its data reader, its
features, its scoring, its predictor, its fine-tune and evaluate functions, and one `Task`
subclass that tells the command line (`roberta <task>`, `roberta finetune|evaluate <task>`), the
server (`POST /<task>`) and ONNX export how to use them. Nothing outside the task's file needs an
edit when a task is added: the registry in roberta/tasks/__init__.py lists it, and the CLI,
server and export loop over the registry.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from roberta.architectures import saved_as
from roberta.checkpoint import architectures
from roberta.collate import Batch, pad_batch
from roberta.config import RobertaConfig
from roberta.heads import IGNORE_INDEX
from roberta.hub import MODEL_FILES, resolve
from roberta.predict import Predictor, load_for_inference
from roberta.tokenizer import Tokenizer
from roberta.train import ShuffledBatches, TrainConfig, TrainResult, train

Feature = dict[str, Any]  # model inputs of one example: input_ids (list of T ints) + its labels
Texts = str | list[str]  # an HTTP body's inputs: one text or a list


# ---- the protocol the registry holds -------------------------------------------------------------


class Task:
    """One task, as the command line, the server and ONNX export see it.

    Subclasses set the class attributes and override what their task has; the defaults fit a
    task that reads texts (`roberta <name> TEXT... | --file | --jsonl`, `{"inputs": ...}`).
    """

    # the command (`roberta classify`), the route (`POST /classify`), --task; its one line of help
    # is its entry in roberta.tasks.REGISTRY
    name: ClassVar[str]
    predictor: ClassVar[type[Predictor]]  # the inference class; predictor.model_class is the model
    # checkpoint architectures (config.json) that are this task's by default (`roberta serve`)
    architectures: ClassVar[tuple[str, ...]] = ()
    # ONNX export: the graph's outputs (fields of the model's output); () = not exportable
    onnx_outputs: ClassVar[tuple[str, ...]] = ()
    onnx_axes: ClassVar[tuple[str, ...]] = ("batch", "length")  # the inputs' dimensions
    # whether the task needs a checkpoint with its own head (a random head would answer otherwise)
    head_required: ClassVar[bool] = False
    # whether its answers point into the text sent (character offsets), so that the server may not
    # cut the text's start (truncation_direction "left") without shifting them
    offsets_into_text: ClassVar[bool] = False
    # fine-tuning: help of `roberta finetune <name>`; None = the task is not fine-tuned here
    finetune_help: ClassVar[str | None] = None
    evaluate_help: ClassVar[str | None] = None

    @property
    def model_class(self) -> type[nn.Module]:
        """The checkpoint class of this task (what it fine-tunes, exports and serves)."""
        return self.predictor.model_class

    # ---- `roberta <name>` ----------------------------------------------------------------------

    def load(self, name_or_path: str | os.PathLike, **predictor_args: Any) -> Predictor:
        """The task's predictor for a checkpoint (what the command and the server run). A task
        that needs its own head refuses a checkpoint without one, rather than answer at random."""
        if self.head_required and not saved_as(name_or_path, self.model_class):
            raise ValueError(
                f"{name_or_path} is not a {self.model_class.__name__} checkpoint (its config.json names "
                f"{', '.join(architectures(name_or_path)) or 'no architecture'}), so its {self.name} answers "
                f"would come from random weights: fine-tune one with `roberta finetune {self.name}` and "
                "pass --model OUT/best"
            )
        return self.predictor.from_pretrained(name_or_path, **predictor_args)

    def input_fields(self, args: argparse.Namespace) -> set[str]:
        """The --jsonl fields the inputs come from (the others are copied into --json output)."""
        return {args.field}

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """The command's inputs and task options (the predictor options are added by the CLI)."""
        add_text_inputs(p)

    def inputs(self, args: argparse.Namespace) -> list:
        """The items to predict on, from the parsed arguments."""
        return read_texts(args)

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """The task method's keyword arguments that the command's options set."""
        return {}

    def predict(self, predictor: Predictor, items: list, options: dict[str, Any], batch_size: int) -> list:
        """One JSON-able result per item: the command and the server both answer through here."""
        raise NotImplementedError

    def show(self, items: list, results: list, options: dict) -> None:
        """Print results for a person (`--json` prints `json_line` instead)."""
        for item, result in zip(items, results):
            print(f"{short(str(item))}\n  {result}")

    def json_line(self, item: Any, result: Any) -> dict[str, Any]:
        """The `--json` object of one input."""
        return {"text": item, "result": result}

    # ---- `POST /<name>` ------------------------------------------------------------------------

    def request_fields(self) -> dict[str, tuple[Any, dict[str, Any]]]:
        """The request body's fields: name -> (type, pydantic Field arguments)."""
        return {"inputs": (Texts, dict(description="the text(s) to read"))}

    def request_items(self, body: dict[str, Any]) -> tuple[list, bool, dict[str, Any]]:
        """(items, whether one item was sent rather than a list, the task options) of a body.
        ValueError for a body the fields allow but the task cannot take (answered with 422)."""
        inputs = body.pop("inputs")
        return ([inputs], True, body) if isinstance(inputs, str) else (list(inputs), False, body)

    # ---- `roberta finetune|evaluate <name>` ----------------------------------------------------

    def add_finetune_arguments(self, p: argparse.ArgumentParser) -> None:
        """--train/--dev and the task's data options (training options are added by the CLI)."""
        add_data_files(p)

    def finetune(self, args: argparse.Namespace, cfg: TrainConfig) -> TrainResult:
        raise NotImplementedError

    def add_evaluate_arguments(self, p: argparse.ArgumentParser) -> None:
        """--data and the task's data options (--model, --batch-size, --dtype, --json: the CLI)."""
        p.add_argument("--data", required=True, metavar="FILE", help="labelled data to score")
        p.add_argument("--max-length", type=int, help="tokens per input (default: what the model holds)")

    def evaluate(self, args: argparse.Namespace, dtype: torch.dtype | None) -> dict[str, float]:
        raise NotImplementedError

    def add_finetune_tools(self, fsub) -> None:
        """More `roberta finetune` subcommands of this task's data (e.g. split-squad)."""


# ---- command-line inputs ---------------------------------------------------------------------------


def add_text_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", nargs="*", help="the text(s) to read; or use --file / --jsonl")
    p.add_argument("--file", help="a UTF-8 text file, one text per line")
    p.add_argument("--jsonl", help="a JSON-lines file, one object per line (see --field)")
    p.add_argument("--field", default="text", help="the --jsonl field holding the text (default: text)")


def read_texts(args: argparse.Namespace) -> list[str]:
    """The texts from exactly one source: arguments, --file (one per line) or --jsonl + --field."""
    if sum([bool(args.text), args.file is not None, args.jsonl is not None]) != 1:
        raise ValueError(
            "give the text(s) as arguments, or --file FILE, or --jsonl FILE: exactly one of them"
        )
    if args.text:
        return args.text
    if args.file is not None:
        texts = [line for line in read_text(Path(args.file)).splitlines() if line.strip()]
        if not texts:
            raise ValueError(f"{args.file} holds no text (no non-blank line)")
        return texts
    return [field_of(row, args.field, args.jsonl, n, "--field") for n, row in read_jsonl(Path(args.jsonl))]


def field_of(row: dict, name: str, path: str | os.PathLike, line: int, flag: str) -> Any:
    """row[name], or a ValueError naming the file, the line, the fields it has and the flag to use."""
    if name not in row:
        raise ValueError(
            f"{path} line {line} has no field {name!r} (it has {sorted(row)}); name it with {flag}"
        )
    return row[name]


def jsonl_extras(args: argparse.Namespace, used: set[str]) -> list[dict[str, Any]] | None:
    """For --jsonl input: each row's fields other than `used` (an id, metadata), to carry into the
    --json output; None for other inputs."""
    if getattr(args, "jsonl", None) is None:
        return None
    return [{k: v for k, v in row.items() if k not in used} for _, row in read_jsonl(Path(args.jsonl))]


def require(module: str, extra: str, what: str) -> None:
    """ImportError saying how to install `module` (the `extra` of this package) unless it imports:
    checked before any work starts, so a run does not fail after its first hour."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f'{what} needs the {module} package: pip install -e ".[{extra}]" (or pip install {module})'
        )


def short(text: str, width: int = 60) -> str:
    """One line of at most `width` characters, for tables printed to a person."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- reading files ---------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A UTF-8 file's text; clear errors for a missing, empty or non-UTF-8 file."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line} is not UTF-8 ({e.reason}); save the file as UTF-8") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def read_jsonl(path: Path, text: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file."""
    rows = []
    for n, line in enumerate((read_text(path) if text is None else text).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{path} line {n} is not valid JSON ({e.msg}); each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n} holds a {type(row).__name__}, not a JSON object")
        rows.append((n, row))
    return rows


def add_data_files(p: argparse.ArgumentParser, nargs: int | None = None, metavar: Any = "FILE") -> None:
    """--train and --dev: one file each, or `nargs` files (translation: source and target)."""
    p.add_argument("--train", required=True, nargs=nargs, metavar=metavar, help="training data")
    p.add_argument(
        "--dev", required=True, nargs=nargs, metavar=metavar, help="data scored at each evaluation"
    )


# ---- labels ----------------------------------------------------------------------------------------


def label_list(labels: Iterable[str]) -> list[str]:
    """The distinct labels, sorted (numerically when they are all integers: "2" before "10")."""
    distinct = set(labels)
    if all(s.lstrip("-").isdigit() for s in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def label_names(config: RobertaConfig) -> list[str]:
    """Label i's name: config.id2label, else transformers' default LABEL_i."""
    names = config.id2label or {}
    return [names.get(i, f"LABEL_{i}") for i in range(config.num_labels)]


def check_labels(found: Iterable[tuple[str, int]], label2id: dict[str, int], path: str | os.PathLike) -> None:
    """Raise if a (label, line) is not among the known labels, naming it, its line and the known ones."""
    for label, line in found:
        if label not in label2id:
            raise ValueError(
                f"{path} line {line}: label {label!r} is not among the labels the model knows "
                f"({', '.join(label2id)}); they come from the training data"
            )


def fit_labels(model: str | os.PathLike, cls: type[nn.Module], labels: list[str]) -> dict[int, str]:
    """The id2label to train with: `labels` in order, or, if `model` already has a `cls` head, that
    head's own order — which must hold exactly these labels, else ValueError (they do not fit)."""
    if not saved_as(model, cls):
        return dict(enumerate(labels))  # no head of this kind yet: a fresh one is made for these labels
    config = RobertaConfig.from_json_file(resolve(model, MODEL_FILES) / "config.json")
    have = label_names(config)
    if sorted(have) != sorted(labels):
        raise ValueError(
            f"the model {model} has a {cls.__name__} head with num_labels {len(have)} ({', '.join(have)}) "
            f"but the training data has {len(labels)} labels ({', '.join(labels)}); start from a model "
            "without this head (e.g. the pretrained encoder) or use data with the head's labels"
        )
    return dict(enumerate(have))


def model_labels(model: nn.Module) -> dict[str, int]:
    """label -> id of a fine-tuned model; ValueError if its config has none."""
    if model.config.id2label is None:
        raise ValueError("the model's config has no id2label: was it fine-tuned with `roberta finetune`?")
    return model.config.label2id


# ---- features and batches --------------------------------------------------------------------------


def max_length_for(tokenizer: Tokenizer, config: RobertaConfig, max_length: int | None) -> int:
    """The caller's max_length, else what the model's position table holds; never more."""
    limit = min(config.max_length, tokenizer.model_max_length)
    if max_length is None:
        return limit
    if not 8 <= max_length <= limit:
        raise ValueError(f"max_length must be between 8 and {limit} (the model's limit), got {max_length}")
    return max_length


def pad_values(pad_id: int) -> dict[str, int]:
    """How each key of a fine-tuning feature is padded: ids with the pad token, labels with -100
    (ignored by the loss), token types with 0."""
    return {
        "input_ids": pad_id,
        "decoder_input_ids": pad_id,
        "labels": IGNORE_INDEX,
        "token_type_ids": 0,
    }


def with_token_types(features: list[Feature], encoding: Any) -> list[Feature]:
    """Each feature with its row's token_type_ids from `encoding` (a tokenizer's output) when the
    tokenizer's family has them (BERT); the features as they are otherwise."""
    if "token_type_ids" in encoding:
        for feature, types in zip(features, encoding["token_type_ids"]):
            feature["token_type_ids"] = types
    return features


def collate(features: Sequence[Feature], pad_id: int) -> Batch:
    """Features -> a padded batch (roberta/collate.py) with the fine-tuning pad values."""
    return pad_batch(features, pad_values(pad_id))


@torch.no_grad()
def outputs(model: nn.Module, features: Sequence[Feature], batch_size: int, pad_id: int):
    """Run the model over features in order, batch by batch (inputs only: input_ids, and
    token_type_ids where the features have them); yields each output."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    inputs = ("input_ids", "token_type_ids")
    try:
        for i in range(0, len(features), batch_size):
            rows = [{k: f[k] for k in inputs if k in f} for f in features[i : i + batch_size]]
            yield model(**pad_batch(rows, pad_values(pad_id), device))
    finally:
        model.train(was_training)


# ---- the fine-tuning driver ------------------------------------------------------------------------


def run_finetuning(
    model: nn.Module,
    tokenizer: Tokenizer,
    features: list[Feature],
    cfg: TrainConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]],
    metric: str,
    resume: bool,
    collate_fn: Callable[[Sequence[Feature], int], Batch] = collate,
) -> TrainResult:
    """Train on shuffled, padded batches of features (`collate_fn(features, pad_id)`); checkpoints
    carry the tokenizer, and out_dir/best is the checkpoint with the best `metric` on the dev set
    (unless cfg names another)."""
    pad = tokenizer.pad_token_id

    def make_batch(items: list[int], epoch: int) -> Batch:
        return collate_fn([features[i] for i in items], pad)

    source = ShuffledBatches(len(features), cfg.batch_size, make_batch, seed=cfg.seed)
    if cfg.early_stopping_metric is None:
        cfg = dataclasses.replace(cfg, early_stopping_metric=metric)
    return train(model, source, cfg, eval_fn=eval_fn, save_extra=TokenizerFiles(tokenizer), resume=resume)


class TokenizerFiles:
    """Writes the tokenizer into each checkpoint folder (`save_extra`): serialised on the first
    call, then its files' bytes are copied, since serialising a 50k vocabulary takes seconds."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.files: dict[str, bytes] | None = None

    def __call__(self, folder: Path) -> None:
        if self.files is None:
            before = set(os.listdir(folder))
            self.tokenizer.save_pretrained(folder)
            self.files = {name: (folder / name).read_bytes() for name in set(os.listdir(folder)) - before}
            return
        for name, data in self.files.items():
            (folder / name).write_bytes(data)


# ---- evaluating a fine-tuned checkpoint ------------------------------------------------------------


def load_finetuned(
    model: str | os.PathLike,
    cls: type[nn.Module],
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tokenizer, nn.Module]:
    """The tokenizer and `cls` model of a fine-tuned checkpoint, for scoring: fp32, or int8 (to
    measure what the opt-in int8 inference costs). ValueError if the checkpoint has no such head."""
    if not saved_as(model, cls):
        raise ValueError(
            f"{model} is not a {cls.__name__} checkpoint; evaluate the folder `roberta finetune` wrote "
            "(OUT/best or OUT/last)"
        )
    if dtype not in (None, torch.float32, torch.int8):
        raise ValueError(f"evaluation runs in fp32 or int8, not {dtype}")
    return Tokenizer.from_pretrained(model), load_for_inference(cls, model, device, dtype)


def table_columns(p: argparse.ArgumentParser) -> None:
    """The columns of a classification table (--text-column, --label-column, --text-pair-column)."""
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    p.add_argument("--text-pair-column", help="column holding a second text, for pair tasks")
