"""The tasks: one module each, and the registry that the CLI, the server and ONNX export loop over.

A task module holds its data reader, features, scoring, predictor, fine-tune and evaluate
functions and a `Task` (roberta/tasks/common.py) saying how commands, routes and export use them.
A new task is one new module and one line in REGISTRY below.

REGISTRY is plain data, so listing the tasks (`roberta --help`) imports none of them, nor torch;
`TASKS[name]` imports that task's module when first asked for.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roberta.tasks.common import Task


@dataclass(frozen=True)
class Entry:
    module: str  # roberta.tasks.<module> holds the task: its TASK and its predictor
    predictor: str  # the predictor's class name
    help: str  # one line: the command's help and the route's summary


# The registry, in the order commands and routes are listed.
REGISTRY: dict[str, Entry] = {
    "fill-mask": Entry("fill_mask", "FillMask", "predict the word at each <mask> of a text"),
    "classify": Entry("classify", "Classifier", "label texts with a sequence-classification model"),
    "ner": Entry("ner", "Tagger", "find named entities (a token-classification model)"),
    "qa": Entry("qa", "QuestionAnswerer", "answer a question from a context (extractive question answering)"),
    "multiple-choice": Entry(
        "multiple_choice", "MultipleChoice", "pick the choice that fits a context best (a multiple-choice model)"
    ),
    "embed": Entry("embed", "Embedder", "one vector per text (the pooling of a sentence-transformers folder, else mean)"),
    "translate": Entry("translate", "Translator", "translate texts (an encoder-decoder from `roberta finetune translate`)"),
}  # fmt: skip


class Tasks(Mapping):
    """name -> Task, each task's module imported when it is first looked up."""

    def __getitem__(self, name: str) -> Task:
        task = importlib.import_module(f"roberta.tasks.{REGISTRY[name].module}").TASK
        assert task.name == name, f"roberta.tasks.{REGISTRY[name].module} holds {task.name}, not {name}"
        return task

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


TASKS: Mapping[str, Task] = Tasks()


def help_of(name: str) -> str:
    """The task's one line of help."""
    return REGISTRY[name].help


def get_task(name: str) -> Task:
    """The task named `name`; ValueError listing the tasks for another name."""
    if name not in REGISTRY:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(REGISTRY)}")
    return TASKS[name]


def task_of(name_or_path: str | os.PathLike) -> str:
    """The task of a checkpoint: what its config.json's `architectures` says it was saved as
    (a base or masked-LM checkpoint fills masks; `--task embed` serves any checkpoint's encoder).
    A family's names read as RoBERTa's: `XLMRobertaForTokenClassification` is a ner checkpoint.
    A sentence-transformers folder (one with modules.json) embeds."""
    from roberta.architectures import architecture_of
    from roberta.config import roberta_architecture

    if os.path.isfile(os.path.join(name_or_path, "modules.json")):
        return "embed"
    name = architecture_of(name_or_path)
    for task in TASKS.values():
        if roberta_architecture(name) in task.architectures:
            return task.name
    raise ValueError(
        f"{name_or_path} holds a {name}, which has no task here; pass --task, one of {', '.join(TASKS)}"
    )


_PREDICTORS = {entry.predictor: entry.module for entry in REGISTRY.values()}


def __getattr__(name: str) -> Any:  # the predictors, imported when first used (PEP 562)
    if name == "Task":
        from roberta.tasks.common import Task

        return Task
    if name not in _PREDICTORS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"roberta.tasks.{_PREDICTORS[name]}"), name)


__all__ = ["REGISTRY", "TASKS", "Task", "get_task", "help_of", "task_of", *_PREDICTORS]
