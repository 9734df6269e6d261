"""The architecture registry: the class names a checkpoint's config.json can give, and our classes.

    saved_as("runs/sst2/best", RobertaForSequenceClassification)   # True
    architecture_class("runs/sst2/best")                           # RobertaForSequenceClassification

Every place that asks "what does this checkpoint hold?" (the task of `roberta serve`, ONNX export,
whether fine-tuning continues a head or starts one) asks here, so a new model class is one line.
"""

from __future__ import annotations

import os

from roberta.checkpoint import PretrainedModel, architectures
from roberta.heads import (
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
)
from roberta.model import RobertaModel
from roberta.seq2seq import EncoderDecoder

# config.json's `architectures[0]` -> the class that loads it (transformers' names).
ARCHITECTURES: dict[str, type[PretrainedModel]] = {
    cls.hf_architecture or cls.__name__: cls
    for cls in (
        RobertaModel,
        RobertaForMaskedLM,
        RobertaForSequenceClassification,
        RobertaForTokenClassification,
        RobertaForQuestionAnswering,
        RobertaForMultipleChoice,
        EncoderDecoder,
    )
}


def architecture_name(cls: type[PretrainedModel]) -> str:
    """The name config.json gives `cls` (what transformers instantiates)."""
    return cls.hf_architecture or cls.__name__


def architecture_of(name_or_path: str | os.PathLike) -> str:
    """The architecture a checkpoint's config.json names first; "RobertaModel" when it names none."""
    return (architectures(name_or_path) or ["RobertaModel"])[0]


def architecture_class(name_or_path: str | os.PathLike) -> type[PretrainedModel]:
    """The class a checkpoint was saved as; ValueError naming the ones known for another name."""
    name = architecture_of(name_or_path)
    if name not in ARCHITECTURES:
        raise ValueError(f"{name_or_path} holds a {name}; known architectures: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def saved_as(name_or_path: str | os.PathLike, cls: type[PretrainedModel]) -> bool:
    """Whether a checkpoint's config.json names `cls` among its architectures (it has that head)."""
    return architecture_name(cls) in architectures(name_or_path)
