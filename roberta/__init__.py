"""roberta: a from-scratch, fast, readable RoBERTa in PyTorch.

    from roberta import RobertaModel, RobertaConfig, Classifier

The names below are imported when first used (PEP 562), so `import roberta.config` or the
`roberta` command's start does not pull in every module.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "RobertaConfig": "roberta.config",
    "RobertaModel": "roberta.model",
    "EncoderOutput": "roberta.model",
    "RobertaForMaskedLM": "roberta.heads",
    "RobertaForSequenceClassification": "roberta.heads",
    "RobertaForTokenClassification": "roberta.heads",
    "RobertaForQuestionAnswering": "roberta.heads",
    "RobertaForMultipleChoice": "roberta.heads",
    "TaskOutput": "roberta.heads",
    "QuestionAnsweringOutput": "roberta.heads",
    "EncoderDecoder": "roberta.seq2seq",
    "Tokenizer": "roberta.tokenizer",
    "FillMask": "roberta.tasks.fill_mask",
    "Classifier": "roberta.tasks.classify",
    "Tagger": "roberta.tasks.ner",
    "QuestionAnswerer": "roberta.tasks.qa",
    "MultipleChoice": "roberta.tasks.multiple_choice",
    "Embedder": "roberta.tasks.embed",
    "Translator": "roberta.tasks.translate",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'roberta' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
