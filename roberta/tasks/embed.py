"""Sentence embeddings: one vector per text, pooled from the encoder's last layer.

    Embedder.from_pretrained("roberta-small-books").embed(["a text", "another"], pooling="mean")  # (2, C)
    roberta embed --jsonl docs.jsonl --field body --json > vectors.jsonl
    POST /embed {"inputs": ["a text", "another"], "pooling": "mean", "normalize": true}

Any checkpoint's encoder embeds (a base, masked-LM or task checkpoint: the head is not used), so
`roberta serve --task embed` serves any of them. A sentence-transformers folder (one with
`modules.json`) embeds as `sentence_transformers.SentenceTransformer` does: its pooling, its
normalization, its longest input and its lower-casing come from the folder (`read_sentence_folder`);
options given here override them.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from tokenizers import normalizers

from roberta.config import RobertaConfig
from roberta.hub import MODEL_FILES, TOKENIZER_FILES, resolve
from roberta.model import RobertaModel
from roberta.predict import Predictor, Texts, as_text_list, load_for_inference
from roberta.tasks.common import Task, read_text, short
from roberta.tokenizer import Tokenizer

POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")


def pool(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, C) token vectors and their (B, T) mask (1 = real token) -> (B, C), as
    sentence-transformers' Pooling computes each mode: the mean over real tokens (<s> and </s>
    included), the <s> token's vector, the maximum of each dimension, or the sum / sqrt(length)."""
    if pooling == "cls":
        return h[:, 0]
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
    if pooling == "max":
        return h.masked_fill(m == 0, float("-inf")).amax(1)
    total, length = (h * m).sum(1), m.sum(1).clamp(min=1e-9)  # (B, C), (B, 1)
    return total / (length if pooling == "mean" else length.sqrt())


# ---- sentence-transformers folders ----------------------------------------------------------------

# sentence-transformers' pooling modes (1_Pooling/config.json) -> ours; the others are refused
ST_POOLINGS = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len"}
# what older releases write instead of `pooling_mode`: one flag per mode
ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# the Transformer module's settings (max_seq_length, do_lower_case), under the names
# sentence-transformers reads, in its order
ST_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_xlm-roberta_config.json",
)
ST_MODULES = ("Transformer", "Pooling", "Normalize")  # in this order; Normalize is optional
# what to fetch of a Hub id: the model's files, at the top or in the Transformer's folder, and the modules'
_ST_FILES = [*MODEL_FILES, *TOKENIZER_FILES, "modules.json", "config_sentence_transformers.json", *ST_CONFIGS]
SENTENCE_FILES = _ST_FILES + [f"*/{name}" for name in _ST_FILES]


@dataclass(frozen=True)
class SentenceFolder:
    """What a sentence-transformers folder says about its vectors.

    model: the folder of its Transformer module (config.json, weights, tokenizer): the folder
        itself (path "") or a subfolder such as 0_Transformer.
    pooling: one of POOLINGS. normalize: whether a Normalize module makes unit vectors.
    max_seq_length: the longest input in tokens; None: what the tokenizer says (model_max_length).
    do_lower_case: lower-case each text before tokenizing it.
    """

    model: Path
    pooling: str
    normalize: bool
    max_seq_length: int | None = None
    do_lower_case: bool = False


def read_sentence_folder(folder: Path) -> SentenceFolder | None:
    """The settings of a sentence-transformers folder (one with modules.json); None for any other
    folder. ValueError naming the file for modules or a pooling mode this cannot reproduce."""
    if not (folder / "modules.json").is_file():
        return None
    modules = _read_json(folder / "modules.json")
    entries = modules if isinstance(modules, list) and all(isinstance(m, dict) for m in modules) else []
    kinds = [str(m.get("type", "")).rpartition(".")[2] for m in entries]
    if kinds not in (list(ST_MODULES[:2]), list(ST_MODULES)):
        raise ValueError(
            f"{folder / 'modules.json'} lists the modules {', '.join(kinds) or repr(modules)}; "
            f"supported: {', '.join(ST_MODULES[:2])} and optionally {ST_MODULES[2]}, in that order"
        )
    model = folder / modules[0].get("path", "")
    config = next((_read_json(model / name) for name in ST_CONFIGS if (model / name).is_file()), {})
    extras = folder / "config_sentence_transformers.json"
    prompt = _read_json(extras).get("default_prompt_name") if extras.is_file() else None
    if prompt:
        warnings.warn(
            f"{extras} names a default prompt ({prompt!r}) that sentence-transformers puts before each "
            "text; it is not added here, so the vectors differ from theirs unless the texts carry it",
            stacklevel=3,
        )
    max_seq_length = config.get("max_seq_length")
    if max_seq_length is not None and (not isinstance(max_seq_length, int) or max_seq_length < 1):
        raise ValueError(
            f"{model}: max_seq_length is {max_seq_length!r}; expected a positive integer or null"
        )
    return SentenceFolder(
        model=model,
        pooling=_pooling(folder / modules[1].get("path", "") / "config.json"),
        normalize=len(kinds) == len(ST_MODULES),
        max_seq_length=max_seq_length,
        do_lower_case=bool(config.get("do_lower_case", False)),
    )


def _pooling(path: Path) -> str:
    """Our name of the one pooling mode a Pooling config.json sets (`pooling_mode`, or the
    `pooling_mode_*` flags of older releases; none set is mean, as sentence-transformers reads it)."""
    config = _read_json(path)
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for flag, mode in ST_POOLING_FLAGS.items() if config.get(flag)] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in ST_POOLINGS:
        raise ValueError(
            f"{path}: pooling {' + '.join(map(str, modes))} is not supported here; supported: one of "
            f"{', '.join(ST_POOLINGS)} (not weightedmean, lasttoken or a concatenation of modes)"
        )
    return ST_POOLINGS[modes[0]]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg})") from None


def lower_case(tokenizer: Tokenizer) -> None:
    """Lower-case text before the tokenizer's own normalizer, as sentence-transformers does for
    `do_lower_case` (unless that normalizer already has a Lowercase step)."""
    current = tokenizer.backend.normalizer
    steps = list(current) if isinstance(current, normalizers.Sequence) else [current] if current else []
    if not any(isinstance(step, normalizers.Lowercase) for step in steps):
        tokenizer.backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *steps])


# ---- the predictor ---------------------------------------------------------------------------------


class EncoderOnly(RobertaModel):
    """The encoder of any checkpoint (base or task) without the <s> pooler, which pooling here does
    not use."""

    def __init__(self, config: RobertaConfig):
        super().__init__(config, add_pooler=False)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {pooling!r}")
    return pooling


class Embedder(Predictor):
    """One vector per text, from the encoder's last layer.

    pooling, normalize: what `embed` does unless told otherwise (a sentence-transformers folder's
    settings; else mean pooling and unit vectors).
    """

    model_class = EncoderOnly

    def __init__(
        self,
        model: EncoderOnly,
        tokenizer: Tokenizer,
        max_tokens: int | None = None,
        pooling: str = "mean",
        normalize: bool = True,
    ):
        super().__init__(model, tokenizer, max_tokens=max_tokens)
        self.pooling, self.normalize = check_pooling(pooling), normalize

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> Embedder:
        """Load a checkpoint (see `Predictor.from_pretrained`). A sentence-transformers folder gives
        its pooling, its normalization, its max_seq_length (longer texts are truncated) and its
        do_lower_case; the model and tokenizer are its Transformer module's."""
        folder = resolve(name_or_path, SENTENCE_FILES)
        st = read_sentence_folder(folder)
        if st is None:
            return super().from_pretrained(folder, device=device, max_tokens=max_tokens, dtype=dtype)
        tokenizer = Tokenizer.from_pretrained(st.model, model_max_length=st.max_seq_length)
        if st.do_lower_case:
            lower_case(tokenizer)
        model = load_for_inference(cls.model_class, st.model, device, dtype)
        return cls(model, tokenizer, max_tokens, pooling=st.pooling, normalize=st.normalize)

    def embed(
        self,
        texts: Texts,
        pooling: str | None = None,
        normalize: bool | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """Embeddings: (C,) for one text, (N, C) for a list, on the CPU in fp32.

        pooling: "mean" (the average over the text's tokens, <s> and </s> included), "cls" (the <s>
            token's vector), "max" (each dimension's maximum over the tokens) or "mean_sqrt_len" (the
            sum over sqrt(number of tokens)); None: the embedder's (see the class).
        normalize: scale each to unit length (cosine similarity = dot product); None: the embedder's.
        """
        pooling = self.pooling if pooling is None else check_pooling(pooling)
        normalize = self.normalize if normalize is None else normalize
        texts, single = as_text_list(texts)
        batch = self.encode(texts)

        def vectors_of(ids: torch.Tensor, mask: torch.Tensor, **types) -> list:
            # only the real tokens' states are read (and the first position's, cls's): the encoder
            # then packs no padding slots, and computes no padding position in any layer (packing.py)
            read = mask.bool().clone()
            read[:, 0] = True  # (B, T)
            states = self.model(ids, mask, subset_mask=read, **types).last_hidden_state.float()  # (M, C)
            h = states.new_zeros(*read.shape, states.shape[-1])
            h[read] = states  # (B, T, C), zeros at the padding no pooling reads
            v = pool(h, mask, pooling)  # (B, C)
            return list((F.normalize(v, dim=-1) if normalize else v).cpu())

        rows = self.run(batch["input_ids"], batch_size, vectors_of, batch.get("token_type_ids"))
        vectors = torch.stack(rows)  # (N, C)
        return vectors[0] if single else vectors


class EmbedTask(Task):
    name = "embed"
    predictor = Embedder
    model_class = RobertaModel  # what a base checkpoint exports as
    onnx_outputs = ("last_hidden_state",)

    def add_arguments(self, p) -> None:
        super().add_arguments(p)
        p.add_argument(
            "--pooling",
            choices=POOLINGS,
            help="default: the model's (a sentence-transformers folder's pooling, else mean)",
        )
        p.add_argument(
            "--normalize",
            action=argparse.BooleanOptionalAction,
            help="unit vectors, or (--no-normalize) the raw length; default: the model's (a "
            "sentence-transformers folder's Normalize module, else unit vectors)",
        )

    def options(self, args) -> dict[str, Any]:
        return {"pooling": args.pooling, "normalize": args.normalize}

    def predict(self, predictor: Embedder, items: list, options: dict, batch_size: int) -> list:
        return predictor.embed(items, batch_size=batch_size, **options).tolist()

    def json_line(self, item: str, result: list[float]) -> dict:
        return {"text": item, "embedding": result}

    def show(self, items: list, results: list, options: dict) -> None:
        pooling = options.get("pooling") or "the model's"
        print(f"{len(items)} x {len(results[0])} embeddings ({pooling} pooling)")
        for text, v in zip(items, results):
            print(f"  [{' '.join(f'{x:+.3f}' for x in v[:4])} …]  {short(text)}")

    def request_fields(self) -> dict:
        return {
            **super().request_fields(),
            "pooling": (
                Literal[POOLINGS] | None,
                dict(default=None, description="mean, cls (<s>), max or mean_sqrt_len; default: the model's"),
            ),
            "normalize": (
                bool | None,
                dict(default=None, description="unit-length vectors; default: the model's"),
            ),
        }


TASK = EmbedTask()
