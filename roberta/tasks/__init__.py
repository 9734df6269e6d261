"""The tasks: one module each, and the registry that the CLI, the server and ONNX export loop over.

    fill_mask        the token at each <mask>                      FillMask
    classify         a label per text: single, multi-label, value  Classifier
    ner              entity spans                                   Tagger
    qa               the answer span in a context                   QuestionAnswerer
    multiple_choice  the best of several choices                    MultipleChoice
    embed            a vector per text                              Embedder
    translate        text to text (an encoder-decoder)              Translator

A task module holds its data reader, features, scoring, predictor, fine-tune and evaluate
functions and a `Task` (roberta/tasks/common.py) saying how commands, routes and export use them.
A new task is one new module and one line in TASKS below.
"""

from __future__ import annotations

import os

from roberta.architectures import architecture_of
from roberta.config import roberta_architecture
from roberta.tasks import classify, embed, fill_mask, multiple_choice, ner, qa, translate
from roberta.tasks.classify import Classifier
from roberta.tasks.common import Task
from roberta.tasks.embed import Embedder
from roberta.tasks.fill_mask import FillMask
from roberta.tasks.multiple_choice import MultipleChoice
from roberta.tasks.ner import Tagger
from roberta.tasks.qa import QuestionAnswerer
from roberta.tasks.translate import Translator

# The registry, in the order commands and routes are listed.
TASKS: dict[str, Task] = {
    t.TASK.name: t.TASK for t in (fill_mask, classify, ner, qa, multiple_choice, embed, translate)
}


def get_task(name: str) -> Task:
    """The task named `name`; ValueError listing the tasks for another name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def task_of(name_or_path: str | os.PathLike) -> str:
    """The task of a checkpoint: what its config.json's `architectures` says it was saved as
    (a base or masked-LM checkpoint fills masks; `--task embed` serves any checkpoint's encoder).
    A family's names read as RoBERTa's: `XLMRobertaForTokenClassification` is a ner checkpoint."""
    name = architecture_of(name_or_path)
    for task in TASKS.values():
        if roberta_architecture(name) in task.architectures:
            return task.name
    raise ValueError(
        f"{name_or_path} holds a {name}, which has no task here; pass --task, one of {', '.join(TASKS)}"
    )


__all__ = [
    "TASKS",
    "Task",
    "get_task",
    "task_of",
    "Classifier",
    "Embedder",
    "FillMask",
    "MultipleChoice",
    "QuestionAnswerer",
    "Tagger",
    "Translator",
]
