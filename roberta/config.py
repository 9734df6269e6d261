"""RobertaConfig: the model's hyper-parameters, with the real roberta-base checkpoint's defaults.

Field names are the Hugging Face `config.json` keys, so a checkpoint's config reads and writes
without a translation table. Keys this class does not know are kept in `extra` and written back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roberta.atomic import write_text_atomic

logger = logging.getLogger(__name__)

POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal")
# HF calls learned positions "absolute"; we accept it on the way in and write it on the way out.
_HF_POSITION_NAMES = {"absolute": "learned", "learned": "learned", "sinusoidal": "sinusoidal"}
# Keys HF writes that describe the file rather than the model; we regenerate them on save.
_REGENERATED_KEYS = {"model_type", "architectures", "transformers_version", "_name_or_path"}


@dataclass
class RobertaConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514  # 512 tokens + pad_token_id + 1: positions start at pad+1
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    position_embedding_type: str = "learned"  # "learned" (real checkpoints) or "sinusoidal"
    # Task heads (see heads.py). id2label keys are ints here; JSON stores them as strings.
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    # "single_label_classification" | "multi_label_classification" | "regression"; None: inferred
    problem_type: str | None = None
    classifier_dropout: float | None = None
    # Keys from a config.json that this class does not model; kept so that save -> load loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.position_embedding_type = _HF_POSITION_NAMES.get(
            self.position_embedding_type, self.position_embedding_type
        )
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; RoBERTa uses 'gelu'")
        if self.id2label is not None:
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            self.num_labels = len(self.id2label)

    # ---- presets -------------------------------------------------------------------------------

    @classmethod
    def base(cls, **overrides: Any) -> RobertaConfig:
        """roberta-base: 12 layers, hidden 768, 12 heads (125M parameters)."""
        return cls(**overrides)

    @classmethod
    def large(cls, **overrides: Any) -> RobertaConfig:
        """roberta-large: 24 layers, hidden 1024, 16 heads (355M parameters)."""
        kw = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
        return cls(**{**kw, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> RobertaConfig:
        """The small model this project pretrains on a CPU: 6 layers, hidden 256, 4 heads, 8k vocab,
        128-token inputs (about 7M parameters)."""
        kw = dict(
            vocab_size=8192,
            hidden_size=256,
            num_hidden_layers=6,
            num_attention_heads=4,
            intermediate_size=1024,
            max_position_embeddings=130,
        )
        return cls(**{**kw, **overrides})

    # ---- derived -------------------------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        """The longest input, in tokens, that the position table can hold."""
        return self.max_position_embeddings - self.pad_token_id - 1

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.id2label is None else {v: k for k, v in self.id2label.items()}

    # ---- config.json -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobertaConfig:
        """Build from a HF-style dict. Unknown keys go to `extra` (logged at debug level)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _REGENERATED_KEYS | {"label2id"}}
        extra.update(d.get("extra", {}) or {})
        if extra:
            logger.debug("config keys kept but not used by the model: %s", sorted(extra))
        if d.get("model_type", "roberta") not in ("roberta", "xlm-roberta", "camembert"):
            logger.warning("config.json has model_type=%r; reading it as a RoBERTa config", d["model_type"])
        return cls(**known, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """A HF-compatible dict: `transformers.RobertaConfig` reads it back."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["position_embedding_type"] = (
            "absolute" if self.position_embedding_type == "learned" else "sinusoidal"
        )
        if self.id2label is None:
            d.pop("id2label")
        else:
            d["id2label"] = {str(k): v for k, v in self.id2label.items()}
            d["label2id"] = self.label2id
        for k in ("problem_type", "classifier_dropout"):
            if d[k] is None:
                d.pop(k)
        d["model_type"] = "roberta"
        return {**self.extra, **d}

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RobertaConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); is the file corrupt?") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)

    def save_json(self, path: str | os.PathLike) -> None:
        """Write config.json atomically (a temp file in the same folder, then rename)."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
