"""RobertaConfig: the model's hyper-parameters, with the real roberta-base checkpoint's defaults.

Field names are the Hugging Face `config.json` keys, so a checkpoint's config reads and writes
without a translation table. Keys this class does not know are kept in `extra` and written back.

`FAMILIES` is the one table of the model families that share RoBERTa's encoder (RoBERTa itself
and DistilRoBERTa, XLM-R, CamemBERT, and BERT with MiniLM): each family's `model_type`, the prefix
of its checkpoints' class names, its tokenizer, and the few rules where BERT differs (positions
from 0, token types, the pooler under its classifier). Everything that reads or writes a family's
name or rule reads it here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roberta.atomic import write_text_atomic

logger = logging.getLogger(__name__)

POSITION_EMBEDDING_TYPES = ("learned", "sinusoidal")
# HF calls learned positions "absolute"; we accept it on the way in and write it on the way out.
_HF_POSITION_NAMES = {"absolute": "learned", "learned": "learned", "sinusoidal": "sinusoidal"}
# Keys HF writes that describe the file rather than the model; we regenerate them on save.
_REGENERATED_KEYS = {"architectures", "transformers_version", "_name_or_path"}
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
# Integer fields and their smallest allowed value.
_INT_MINIMUMS = {
    "vocab_size": 1,
    "hidden_size": 1,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "intermediate_size": 1,
    "max_position_embeddings": 1,
    "type_vocab_size": 0,  # 0: no token-type embedding
    "pad_token_id": 0,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "num_labels": 1,
}
_BYTES_PER_WEIGHT = 4  # fp32: what a model is built in before any dtype conversion
_repr = reprlib.Repr()  # a short repr that stops at depth 2: safe for deeply nested JSON
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 40, 40, 4, 4


ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


@dataclass(frozen=True)
class Family:
    """A model family on RoBERTa's encoder: same layers and key names, its own names, rules and tokenizer.

    model_type: config.json's `model_type`.
    prefix: what its checkpoints' class names start with where RoBERTa's say "Roberta"
        (`XLMRobertaForMaskedLM` for our `RobertaForMaskedLM`).
    tokenizer_class: tokenizer_config.json's `tokenizer_class` (what transformers' AutoTokenizer builds).
    sentencepiece: for a family whose vocabulary is a SentencePiece model (`sentencepiece.bpe.model`),
        fairseq's layout of it: the tokens that come first, and the first SentencePiece id kept after
        them (each later piece keeps its order); `<mask>` is the last id. None: not SentencePiece.
    special_tokens: the strings of its first-token, padding, separator, unknown and mask tokens
        (RoBERTa's `<s> <pad> </s> <unk> <mask>`, BERT's `[CLS] [PAD] [SEP] [UNK] [MASK]`).
    base_model_prefix: where the encoder sits in its task checkpoints (`roberta.`, `bert.`).
    positions_after_pad: RoBERTa's rule (fairseq's): real tokens are at positions pad_token_id + 1,
        + 2, ... and padding at pad_token_id. False: BERT's, 0, 1, 2, ... at every position.
    token_types: its tokenizer returns `token_type_ids` (0 for the first text, 1 for the second)
        and its models are given them; RoBERTa's tokenizers return none (one type, 0).
    pooled_classifier: its sequence classifier reads the pooler's output (tanh(W h_first)) through
        dropout and one Linear (BERT's), not RoBERTa's two-layer head on the first token's state.
    config_defaults: config.json values of this family where a key is absent (its HF config class's
        defaults where they differ from roberta-base's); a None may stay None.
    """

    name: str
    model_type: str
    prefix: str
    tokenizer_class: str
    sentencepiece: tuple[tuple[str, ...], int] | None = None
    special_tokens: tuple[str, str, str, str, str] = ROBERTA_SPECIAL_TOKENS
    base_model_prefix: str = "roberta"
    positions_after_pad: bool = True
    token_types: bool = False
    pooled_classifier: bool = False
    config_defaults: tuple[tuple[str, Any], ...] = ()


# model_type -> family. DistilRoBERTa is a 6-layer RoBERTa (model_type "roberta"); MiniLM
# checkpoints are BERT's (model_type "bert").
FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("RoBERTa", "roberta", "Roberta", "RobertaTokenizer"),
        # fairseq's dictionary: <s> <pad> </s> <unk>, then the pieces after SentencePiece's own
        # <unk> <s> </s> (ids 0..2), so SentencePiece id i is ours i + 1.
        Family(
            "XLM-R",
            "xlm-roberta",
            "XLMRoberta",
            "XLMRobertaTokenizer",
            (("<s>", "<pad>", "</s>", "<unk>"), 3),
        ),
        # CamemBERT's fairseq dictionary keeps four unused copies first, so SentencePiece id i
        # (after its <unk>, id 0) is ours i + 4: its <s> and </s> are 5 and 6.
        Family(
            "CamemBERT",
            "camembert",
            "Camembert",
            "CamembertTokenizer",
            (("<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED"), 1),
        ),
        # BERT (Devlin et al.) and MiniLM: WordPiece, [CLS] A [SEP] B [SEP] with token types 0/1,
        # learned positions from 0 (512 rows), LayerNorm eps 1e-12, no bos/eos in config.json.
        Family(
            "BERT",
            "bert",
            "Bert",
            "BertTokenizer",
            special_tokens=("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"),
            base_model_prefix="bert",
            positions_after_pad=False,
            token_types=True,
            pooled_classifier=True,
            config_defaults=(
                ("max_position_embeddings", 512),
                ("type_vocab_size", 2),
                ("layer_norm_eps", 1e-12),
                ("pad_token_id", 0),
                ("bos_token_id", None),
                ("eos_token_id", None),
            ),
        ),
    )
}
NOT_YET_SUPPORTED = "sentence-transformers folders are not supported yet"


def family(model_type: Any) -> Family:
    """The family of a config.json `model_type`; ValueError naming it and the supported ones."""
    if not isinstance(model_type, str) or model_type not in FAMILIES:
        raise ValueError(
            f"config key 'model_type' is {_show(model_type)}; supported model types: "
            f"{', '.join(FAMILIES)} ({', '.join(f.name for f in FAMILIES.values())}). {NOT_YET_SUPPORTED}"
        )
    return FAMILIES[model_type]


# Class names that are read as another class of ours: BERT's pretraining checkpoint holds the
# masked-LM head (and a next-sentence head, which nothing here uses).
READ_AS = {"BertForPreTraining": "RobertaForMaskedLM"}


def roberta_architecture(name: str) -> str:
    """A family's class name -> RoBERTa's (`XLMRobertaForMaskedLM` -> `RobertaForMaskedLM`,
    `BertForPreTraining` -> `RobertaForMaskedLM`); any other name (`EncoderDecoderModel`, an
    unknown class) is returned as it is."""
    if name in READ_AS:
        return READ_AS[name]
    for f in sorted(FAMILIES.values(), key=lambda f: -len(f.prefix)):
        if name.startswith(f.prefix) and name[len(f.prefix) :].startswith(("For", "Model")):
            return "Roberta" + name[len(f.prefix) :]
    return name


def family_architecture(name: str, model_type: str) -> str:
    """RoBERTa's class name -> the family's (`RobertaForMaskedLM`, xlm-roberta -> `XLMRobertaForMaskedLM`)."""
    if not name.startswith("Roberta"):
        return name
    return FAMILIES[model_type].prefix + name.removeprefix("Roberta")


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
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2  # None only where the family has none in config.json (BERT)
    position_embedding_type: str = "learned"  # "learned" (real checkpoints) or "sinusoidal"
    # Task heads (see heads.py). id2label keys are ints here; JSON stores them as strings.
    num_labels: int = 2
    id2label: dict[int, str] | None = None
    # "single_label_classification" | "multi_label_classification" | "regression"; None: inferred
    problem_type: str | None = None
    classifier_dropout: float | None = None
    # The family (see FAMILIES): "roberta", "xlm-roberta", "camembert" or "bert"; kept on load and save.
    model_type: str = "roberta"
    # Keys from a config.json that this class does not model; kept so that save -> load loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        """Check every field's type and range, how the fields fit together, and that the weights fit
        in memory: a bad config.json fails here, in one line naming the key, before a model exists."""
        self._check_types()
        self._check_relations()
        self._check_memory()

    def _check_types(self) -> None:
        family(self.model_type)
        optional = {k for k, v in self.family_defaults().items() if v is None}  # may stay None
        for key, minimum in _INT_MINIMUMS.items():
            if key in optional and getattr(self, key) is None:
                continue
            setattr(self, key, _integer(key, getattr(self, key), minimum))
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            setattr(self, key, _real(key, getattr(self, key), "a probability in [0, 1]", 0.0, 1.0))
        if self.classifier_dropout is not None:
            self.classifier_dropout = _real(
                "classifier_dropout", self.classifier_dropout, "null or a probability in [0, 1]", 0.0, 1.0
            )
        self.initializer_range = _real("initializer_range", self.initializer_range, "a number >= 0", 0.0)
        self.layer_norm_eps = _real("layer_norm_eps", self.layer_norm_eps, "a number > 0", 0.0, open_low=True)
        position = self.position_embedding_type
        if not isinstance(position, str) or _HF_POSITION_NAMES.get(position) not in POSITION_EMBEDDING_TYPES:
            raise _bad(
                "position_embedding_type", position, f"one of {POSITION_EMBEDDING_TYPES} (or 'absolute')"
            )
        self.position_embedding_type = _HF_POSITION_NAMES[position]
        if self.hidden_act != "gelu":
            raise _bad("hidden_act", self.hidden_act, "'gelu': RoBERTa uses 'gelu'")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise _bad("problem_type", self.problem_type, f"null or one of {PROBLEM_TYPES}")
        if self.id2label is not None:
            self.id2label = _labels(self.id2label)
            self.num_labels = len(self.id2label)
        if not isinstance(self.extra, dict):
            raise _bad("extra", self.extra, "an object (the config.json keys this class does not model)")

    def _check_relations(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise _bad(
                "hidden_size",
                self.hidden_size,
                f"a number divisible by num_attention_heads ({self.num_attention_heads}): "
                "each head gets hidden_size / num_attention_heads dimensions",
            )
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(self, key) is not None and getattr(self, key) >= self.vocab_size:
                raise _bad(
                    key,
                    getattr(self, key),
                    f"a token id in the vocabulary, 0..{self.vocab_size - 1} (vocab_size {self.vocab_size})",
                )
        if self.max_position_embeddings < self.position_offset + 1:
            raise _bad(
                "max_position_embeddings",
                self.max_position_embeddings,
                f"at least pad_token_id + 2 = {self.pad_token_id + 2}: positions start at pad_token_id + 1",
            )

    def _check_memory(self) -> None:
        """Refuse sizes whose fp32 weights alone exceed the memory available now (the check is
        skipped where the system does not say how much that is)."""
        available = available_memory()
        # the encoder with its pooler, and a classifier's output layer (num_labels wide)
        weights = self.num_parameters() + self.num_labels * (self.hidden_size + 1)
        needed = weights * _BYTES_PER_WEIGHT
        if available is not None and needed > available:
            raise ValueError(
                f"config sizes (hidden_size {self.hidden_size}, num_hidden_layers {self.num_hidden_layers}, "
                f"intermediate_size {self.intermediate_size}, vocab_size {self.vocab_size}, "
                f"max_position_embeddings {self.max_position_embeddings}, num_labels {self.num_labels}) "
                f"make {_count(weights)} weights, {_count(needed, 2**30)} GiB in fp32, more than the "
                f"{available / 2**30:.3g} GiB of memory available; is a size in config.json wrong?"
            )

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

    def num_parameters(self) -> int:
        """How many weights `RobertaModel(config)` holds (pooler included), from the sizes alone:
        embeddings (V + P + T)·C + 2C, then per layer 4C² + 2·C·I + 9C + I (Q, K, V and output
        projections, two LayerNorms, the feed-forward pair), then the pooler C² + C."""
        C, intermediate = self.hidden_size, self.intermediate_size
        embeddings = (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) * C + 2 * C
        layer = 4 * C * C + 2 * C * intermediate + 9 * C + intermediate
        return embeddings + self.num_hidden_layers * layer + C * C + C

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def family(self) -> Family:
        """The family of `model_type` (see FAMILIES): its names and rules."""
        return family(self.model_type)

    def family_defaults(self) -> dict[str, Any]:
        return dict(self.family.config_defaults)

    @property
    def position_offset(self) -> int:
        """The position of the first token: pad_token_id + 1 by RoBERTa's rule, 0 by BERT's."""
        return self.pad_token_id + 1 if self.family.positions_after_pad else 0

    @property
    def max_length(self) -> int:
        """The longest input, in tokens, that the position table can hold."""
        return self.max_position_embeddings - self.position_offset

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.id2label is None else {v: k for k, v in self.id2label.items()}

    # ---- config.json -------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RobertaConfig:
        """Build from a HF-style dict. Unknown keys go to `extra` (logged at debug level).
        A value of the wrong type or range raises a one-line ValueError naming the key."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a JSON object (a dict), got {_show(d)}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names and k not in _REGENERATED_KEYS | {"label2id"}}
        if isinstance(d.get("extra"), dict):  # a dict made from this class (dataclasses.asdict)
            extra.update(extra.pop("extra"))
        model_type = d.get("model_type", "roberta")
        if isinstance(model_type, str) and model_type in FAMILIES:  # else the check names it
            known = {**dict(FAMILIES[model_type].config_defaults), **known}
        if extra:
            logger.debug("config keys kept but not used by the model: %s", sorted(extra))
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
        return {**self.extra, **d}

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> RobertaConfig:
        """Read and check config.json; every problem is a one-line ValueError naming the file."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e}); is it a config.json?") from None
        except RecursionError:
            raise ValueError(f"{path} nests JSON too deeply to read; is it a config.json?") from None
        except ValueError as e:  # JSONDecodeError, or an integer past Python's digit limit
            raise ValueError(f"{path} is not valid JSON ({e}); is the file corrupt?") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def save_json(self, path: str | os.PathLike) -> None:
        """Write config.json atomically (a temp file in the same folder, then rename)."""
        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


# ---- validation helpers --------------------------------------------------------------------------


def available_memory() -> int | None:
    """Bytes of memory available now: /proc/meminfo's MemAvailable (Linux), else os.sysconf's
    available pages; None where the system says neither."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _show(value: Any) -> str:
    """A short repr and the JSON-ish type: "'256' (str)"; safe for deep nesting and huge ints."""
    try:
        text = _repr.repr(value)
    except ValueError:  # an int past Python's str() digit limit
        text = f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return f"{text} ({type(value).__name__})"


def _bad(key: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"config key {key!r} is {_show(value)}; expected {expected}")


def _integer(key: str, value: Any, minimum: int) -> int:
    """An int (not a bool, not a float such as 256.0) >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _bad(key, value, f"an integer >= {minimum}")
    if value < minimum:
        raise _bad(key, value, f"an integer >= {minimum}")
    return int(value)


def _real(
    key: str, value: Any, expected: str, low: float, high: float | None = None, open_low: bool = False
) -> float:
    """A finite number (int or float, not a bool) in [low, high], or (low, high] with open_low."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad(key, value, expected)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise _bad(key, value, expected) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _bad(key, value, expected)
    if number < low or (open_low and number == low) or (high is not None and number > high):
        raise _bad(key, value, expected)
    return number


def _labels(id2label: Any) -> dict[int, str]:
    """id2label with int keys: an object mapping each label id 0..n-1 (JSON: "0", "1", ...) to a name."""
    expected = 'an object mapping the label ids 0..n-1 (in JSON "0", "1", ...) to label names'
    if not isinstance(id2label, dict) or not id2label:
        raise _bad("id2label", id2label, expected)
    n = len(id2label)
    ids = {str(i): i for i in range(n)}
    out: dict[int, str] = {}
    for k, v in id2label.items():
        i = ids.get(k) if isinstance(k, str) else None if isinstance(k, bool) or not isinstance(k, int) else k
        if i is None or not 0 <= i < n:
            raise ValueError(f"config key 'id2label' has the key {_show(k)}; expected {expected}")
        if i in out:
            raise ValueError(f"config key 'id2label' has the label id {i} twice; expected {expected}")
        if not isinstance(v, str):
            raise ValueError(f"config key 'id2label' maps {i} to {_show(v)}; expected {expected}")
        out[i] = v
    return out


def _count(n: int, unit: int = 1) -> str:
    """n / unit for a message: 2,861 or 7.68e+11; a power of 2 for numbers too large for a float."""
    if n.bit_length() > 1000:
        return f"about 2^{(n // unit).bit_length() - 1}"
    value = n / unit
    return f"{value:,.0f}" if 10 <= value < 1e6 else f"{value:.3g}"
