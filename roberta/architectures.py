"""The architecture registry: the class names a checkpoint's config.json can give, and our classes.

    saved_as("runs/sst2/best", RobertaForSequenceClassification)   # True
    architecture_class("runs/sst2/best")                           # RobertaForSequenceClassification

Every place that asks "what does this checkpoint hold?" (the task of `roberta serve`, ONNX export,
whether fine-tuning continues a head or starts one) asks here, so a new model class is one line.
The families on RoBERTa's encoder (XLM-R, CamemBERT, BERT: `FAMILIES` in roberta/config.py) name the
same classes with their own prefix; `roberta_architecture` reads their names as RoBERTa's.
"""

from __future__ import annotations

import os

from roberta.checkpoint import PretrainedModel, architectures
from roberta.config import FAMILIES, roberta_architecture
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
    """The architecture a checkpoint's config.json names first, as its family wrote it
    ("XLMRobertaForMaskedLM"); "RobertaModel" when it names none."""
    return (architectures(name_or_path) or ["RobertaModel"])[0]


def architecture_class(name_or_path: str | os.PathLike) -> type[PretrainedModel]:
    """The class a checkpoint was saved as (a family's name read as RoBERTa's); ValueError naming
    the ones known for another name."""
    name = architecture_of(name_or_path)
    if roberta_architecture(name) not in ARCHITECTURES:
        raise ValueError(
            f"{name_or_path} holds a {name}; known architectures: {', '.join(ARCHITECTURES)} "
            f"(or another family's of the same head: {', '.join(f.prefix + '...' for f in FAMILIES.values() if f.prefix != 'Roberta')})"
        )
    return ARCHITECTURES[roberta_architecture(name)]


def saved_as(name_or_path: str | os.PathLike, cls: type[PretrainedModel]) -> bool:
    """Whether a checkpoint's config.json names `cls` among its architectures (it has that head),
    under any family's name."""
    return architecture_name(cls) in {roberta_architecture(a) for a in architectures(name_or_path)}
