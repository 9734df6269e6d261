"""roberta: a from-scratch, fast, readable RoBERTa in PyTorch."""

from roberta.config import RobertaConfig
from roberta.heads import (
    QuestionAnsweringOutput,
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    TaskOutput,
)
from roberta.model import EncoderOutput, RobertaModel

__all__ = [
    "RobertaConfig",
    "RobertaModel",
    "EncoderOutput",
    "RobertaForMaskedLM",
    "RobertaForSequenceClassification",
    "RobertaForTokenClassification",
    "RobertaForQuestionAnswering",
    "RobertaForMultipleChoice",
    "TaskOutput",
    "QuestionAnsweringOutput",
]
__version__ = "0.1.0"
