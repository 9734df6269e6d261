"""Checkpoints in the Hugging Face layout (config.json + model.safetensors), in and out.

All compatibility lives here: one declarative table maps our module names to HF's, and the
load is strict — every missing, unexpected or mis-shaped key is named in one error.

`PretrainedModel` gives every model class `from_pretrained` and `save_pretrained`. A class says
how it sits in a checkpoint with three attributes:
    base_model_prefix  "" for the bare encoder, "roberta" for task models (the attribute holding
                       the encoder; in the checkpoint it is the family's prefix, `roberta.` or `bert.`)
    tied_weights       our key -> the key whose tensor it shares (not saved; re-tied on load)
    key_aliases        our key -> other HF names accepted when loading (older checkpoints)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from roberta.atomic import atomic_file
from roberta.config import FAMILIES, Family, RobertaConfig, family_architecture
from roberta.hub import MODEL_FILES, resolve

logger = logging.getLogger(__name__)

# ours (module path)              HF transformers RobertaModel (module path); {i} = layer index.
# A tuple on the right is concatenated along dim 0 into our one tensor (fused Q, K, V).
KEY_MAP: list[tuple[str, str | tuple[str, ...]]] = [
    ("embeddings.word", "embeddings.word_embeddings"),
    ("embeddings.position", "embeddings.position_embeddings"),
    ("embeddings.token_type", "embeddings.token_type_embeddings"),
    ("embeddings.norm", "embeddings.LayerNorm"),
    (
        "encoder.layers.{i}.attn.qkv",
        (
            "encoder.layer.{i}.attention.self.query",
            "encoder.layer.{i}.attention.self.key",
            "encoder.layer.{i}.attention.self.value",
        ),
    ),
    ("encoder.layers.{i}.attn.out", "encoder.layer.{i}.attention.output.dense"),
    ("encoder.layers.{i}.norm1", "encoder.layer.{i}.attention.output.LayerNorm"),
    ("encoder.layers.{i}.ffn.fc1", "encoder.layer.{i}.intermediate.dense"),
    ("encoder.layers.{i}.ffn.fc2", "encoder.layer.{i}.output.dense"),
    ("encoder.layers.{i}.norm2", "encoder.layer.{i}.output.LayerNorm"),
    ("pooler.dense", "pooler.dense"),
    # a decoder layer's cross-attention (seq2seq.py), where HF's RobertaForCausalLM has it
    ("encoder.layers.{i}.cross.q", "encoder.layer.{i}.crossattention.self.query"),
    (
        "encoder.layers.{i}.cross.kv",
        ("encoder.layer.{i}.crossattention.self.key", "encoder.layer.{i}.crossattention.self.value"),
    ),
    ("encoder.layers.{i}.cross.out", "encoder.layer.{i}.crossattention.output.dense"),
    ("encoder.layers.{i}.norm_cross", "encoder.layer.{i}.crossattention.output.LayerNorm"),
]
# A family's task-head names where they are not ours (ours -> theirs; a module or a parameter).
# RoBERTa's, XLM-R's and CamemBERT's heads are named as ours; BERT's MLM head is under
# `cls.predictions` and its sequence classifier is one Linear on the pooler (heads.py).
HEAD_KEY_MAPS: dict[str, list[tuple[str, str]]] = {
    "bert": [
        ("lm_head.dense", "cls.predictions.transform.dense"),
        ("lm_head.layer_norm", "cls.predictions.transform.LayerNorm"),
        ("lm_head.decoder", "cls.predictions.decoder"),
        ("lm_head.bias", "cls.predictions.bias"),
        ("classifier.out_proj", "classifier"),
    ],
}
# Parameter names of older checkpoints (TF-era BERT: LayerNorm gamma/beta), renamed on load.
LEGACY_NAMES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"LayerNorm\.gamma$"), "LayerNorm.weight"),
    (re.compile(r"LayerNorm\.beta$"), "LayerNorm.bias"),
]
# HF keys that hold no weights (buffers some versions saved); dropped silently on load.
IGNORED_HF_KEYS = re.compile(r"(^|\.)(position_ids|token_type_ids)$")
BODY_PREFIXES = ("embeddings.", "encoder.", "pooler.")


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)") + r"\.(?P<param>\w+)$")


_COMPILED = [(_compile(ours), hf if isinstance(hf, tuple) else (hf,)) for ours, hf in KEY_MAP]


def hf_names(body_key: str) -> tuple[str, ...]:
    """Our encoder key (no prefix) -> the HF key(s) holding its tensor, e.g.
    'encoder.layers.3.attn.qkv.weight' -> (...'self.query.weight', ...'self.key.weight', ...'self.value.weight')."""
    for regex, hf in _COMPILED:
        m = regex.match(body_key)
        if m:
            i = m.groupdict().get("i")
            return tuple(h.replace("{i}", i or "") + "." + m["param"] for h in hf)
    raise KeyError(f"no HF name for {body_key!r}: add it to KEY_MAP")


def head_name(key: str, model_type: str) -> str:
    """Our task-head key -> the family's name for it (HEAD_KEY_MAPS; RoBERTa's are ours)."""
    for ours, theirs in HEAD_KEY_MAPS.get(model_type, ()):
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours) :]
    return key


def modern_name(key: str) -> str:
    """A checkpoint key under today's parameter names (LEGACY_NAMES: `LayerNorm.gamma` -> `.weight`)."""
    for pattern, name in LEGACY_NAMES:
        key = pattern.sub(name, key)
    return key


class PretrainedModel(nn.Module):
    """Base class: HF-layout checkpoints and weight initialisation for every model here."""

    config_class: ClassVar[type] = RobertaConfig  # what config.json is read as
    hf_architecture: ClassVar[str | None] = None  # the class name config.json names; None: ours
    base_model_prefix: ClassVar[str] = ""
    tied_weights: ClassVar[dict[str, str]] = {}
    key_aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    config: RobertaConfig

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.weight.requires_grad:  # sinusoidal tables are fixed
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- names --------------------------------------------------------------------------------

    @property
    def family(self) -> Family:
        """The family of the config (an encoder-decoder's config has none: RoBERTa's)."""
        return FAMILIES.get(getattr(self.config, "model_type", "roberta"), FAMILIES["roberta"])

    def hf_prefix(self) -> str:
        """Where the encoder sits in this class's checkpoint: "" (bare), "roberta.", "bert."."""
        return self.family.base_model_prefix + "." if self.base_model_prefix else ""

    def to_hf_names(self, key: str) -> tuple[str, ...]:
        """Our state_dict key -> HF key(s), prefix included."""
        prefix = self.base_model_prefix + "." if self.base_model_prefix else ""
        if prefix and not key.startswith(prefix):
            return (head_name(key, self.family.model_type),)  # a task head
        return tuple(self.hf_prefix() + k for k in hf_names(key[len(prefix) :]))

    # ---- save ---------------------------------------------------------------------------------

    def hf_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Our weights under HF's names (fused tensors split, tied copies left out)."""
        if any(not t.dtype.is_floating_point for t in self.state_dict().values()):
            raise ValueError(
                "an int8-quantized model has no checkpoint of its own: save the fp32 model, and load it "
                "with dtype=torch.int8 (--dtype int8) where you run it"
            )
        out = {}
        for key, t in self.state_dict().items():
            if key in self.tied_weights:
                continue
            names = self.to_hf_names(key)
            for name, part in zip(names, t.chunk(len(names), dim=0)):
                out[name] = part.detach().to(dtype or part.dtype, copy=True).contiguous().cpu()
        return out

    def save_pretrained(self, save_directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config.json + model.safetensors (HF layout), each file atomically."""
        from safetensors.torch import save_file

        weights = self.hf_state_dict(dtype)
        folder = self.save_config(save_directory)
        with atomic_file(folder / "model.safetensors") as tmp:
            save_file(weights, tmp, metadata={"format": "pt"})
        return folder

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write config.json, naming this class in `architectures` (what transformers instantiates)
        under the config's family: `RobertaForMaskedLM` of an XLM-R config is `XLMRobertaForMaskedLM`."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        # an encoder-decoder's config has no family of its own (its name is not a Roberta* one)
        model_type = getattr(self.config, "model_type", "roberta")
        name = family_architecture(self.hf_architecture or type(self).__name__, model_type)
        architectures = {"architectures": [name]}
        dataclasses.replace(self.config, extra={**self.config.extra, **architectures}).save_json(
            folder / "config.json"
        )
        return folder

    # ---- load ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **config_overrides: Any,
    ):
        """Load a HF-layout checkpoint: a folder, a built-in model name, or a Hub id (online).

        `config_overrides` replace config fields, e.g. `num_labels=3` for a fresh classifier head.
        dtype: a floating-point dtype, e.g. torch.bfloat16. int8 is not a storage dtype but a way of
        running: `roberta.quantize.quantize_int8(model)` after loading, or a predictor's
        `from_pretrained(..., dtype=torch.int8)` (roberta/predict.py) for inference.
        Returns the model in eval mode.
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(
                f"from_pretrained loads weights in a floating-point dtype, not {dtype}; for int8 inference "
                "quantize after loading (roberta.quantize.quantize_int8(model)) or load a predictor with "
                "dtype=torch.int8 (roberta.predict)"
            )
        folder = resolve(name_or_path, MODEL_FILES)
        config = cls.config_class.from_json_file(folder / "config.json")
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        weights = read_weights(folder)
        # The checkpoint is checked against a model built on the meta device (shapes, no memory, no
        # initialisation), so a checkpoint that does not fit fails before a full-size model exists.
        with torch.device("meta"):
            skeleton = cls(config)
        plan = skeleton.check_hf_state_dict(weights, source=str(name_or_path))
        model = cls(config)
        model._copy_in(plan)
        if device is not None:
            model.to(device)
        return (model.to(dtype) if dtype is not None else model).eval()

    def load_hf_state_dict(self, hf: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy HF-named tensors into this model; strict: one error names every problem (see
        `check_hf_state_dict`), and nothing is copied unless everything fits."""
        self._copy_in(self.check_hf_state_dict(hf, source))

    def check_hf_state_dict(
        self, hf: dict[str, torch.Tensor], source: str = "checkpoint"
    ) -> dict[str, list[torch.Tensor]]:
        """Match HF-named tensors to this model's keys, copying nothing (the model may live on the
        meta device): our key -> the checkpoint tensor(s) that fill it, in order (Q, K, V).

        One ValueError names every key that is missing, unexpected in the encoder, mis-shaped (each
        part of a fused tensor by its own name), not floating point, or holding inf or NaN.
        """
        hf = {modern_name(k): v for k, v in hf.items() if not IGNORED_HF_KEYS.search(k)}
        hf = self._match_prefix(hf)
        plan: dict[str, list[torch.Tensor]] = {}
        used, missing, shapes, values, fresh = set(), [], [], [], []
        heads_in_ckpt = {k.split(".")[0] for k in hf}
        for key, param in self.state_dict().items():
            if key in self.tied_weights:
                continue
            names = self._find(key, hf)
            if names is None:
                body = not self.base_model_prefix or key.startswith(self.base_model_prefix + ".")
                pooler = ".pooler." in f".{key}"
                head = self.to_hf_names(key)[0].split(".")[0]  # `lm_head`, BERT's `cls`, ...
                # A head (or pooler) the checkpoint has no trace of is new: initialised, not an error.
                if (not body and head not in heads_in_ckpt) or pooler:
                    fresh.append(key)
                else:
                    missing.append(key)
                continue
            used.update(names)
            parts = [hf[n] for n in names]
            wrong = _shape_problems(key, names, parts, tuple(param.shape))
            shapes.extend(wrong)
            values.extend(_value_problems(names, parts))
            if not wrong:
                plan[key] = parts
        unexpected = sorted(set(hf) - used)
        body_unexpected = [k for k in unexpected if k.startswith(self._hf_body_prefixes())]
        self._report(source, missing, shapes, body_unexpected, values, fresh, unexpected)
        return plan

    def _copy_in(self, plan: dict[str, list[torch.Tensor]]) -> None:
        """Copy a checked plan (check_hf_state_dict) into this model's tensors; fused parts are
        concatenated along dim 0, and tied weights stay tied (one tensor, copied once)."""
        own = self.state_dict()
        with torch.no_grad():
            for key, parts in plan.items():
                tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
                own[key].copy_(tensor.to(own[key].dtype))

    def _find(self, key: str, hf: dict[str, torch.Tensor]) -> tuple[str, ...] | None:
        for names in (self.to_hf_names(key), *((a,) for a in self.key_aliases.get(key, ()))):
            if all(n in hf for n in names):
                return names
        return None

    def _hf_body_prefixes(self) -> tuple[str, ...]:
        return tuple(self.hf_prefix() + p for p in BODY_PREFIXES if p != "pooler.")

    def _match_prefix(self, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A task checkpoint into the bare encoder drops the family's prefix (`roberta.`, `bert.`);
        a bare one into a task model adds it."""
        prefix = self.family.base_model_prefix + "."
        has_prefix = any(k.startswith(prefix) for k in hf)
        if self.base_model_prefix and not has_prefix:
            return {(prefix + k if k.startswith(BODY_PREFIXES) else k): v for k, v in hf.items()}
        if not self.base_model_prefix and has_prefix:
            return {k.removeprefix(prefix): v for k, v in hf.items()}
        return hf

    def _report(self, source, missing, shapes, body_unexpected, values, fresh, unexpected) -> None:
        problems = []
        if missing:
            problems.append(f"missing from the checkpoint: {_short(missing)}")
        if shapes:
            problems.append(f"shapes that differ: {_short(shapes)}")
        if body_unexpected:
            problems.append(f"in the checkpoint but not in the model: {_short(body_unexpected)}")
        if values:
            problems.append(f"values that cannot be loaded: {_short(values)}")
        if problems:
            hints = []
            if missing or shapes or body_unexpected:
                hints.append("Does config.json belong to these weights?")
            if values:
                hints.append(
                    "Weights must be finite floating-point numbers: inf or NaN usually means training "
                    "diverged (load an earlier checkpoint); integers mean a quantized or corrupt file "
                    "(save the float model instead)."
                )
            raise ValueError(
                f"{source} does not fit {type(self).__name__} with this config "
                f"(hidden {self.config.hidden_size}, {self.config.num_hidden_layers} layers, "
                f"vocab {self.config.vocab_size}):\n  " + "\n  ".join(problems) + "\n" + " ".join(hints)
            )
        # A fresh pooler is routine (MLM checkpoints have none and only multiple choice uses it).
        heads = [k for k in fresh if ".pooler." not in f".{k}"]
        log = logger.warning if heads else logger.info
        if fresh:
            log("%s: newly initialised (train before use): %s", source, _short(fresh))
        ignored = sorted(set(unexpected) - set(body_unexpected))
        if ignored:
            logger.info("%s: weights not used by %s: %s", source, type(self).__name__, _short(ignored))


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def _shape_problems(
    key: str, names: tuple[str, ...], parts: list[torch.Tensor], shape: tuple[int, ...]
) -> list[str]:
    """'key: checkpoint (a, b) vs model (c, d)'; for a fused tensor (Q, K, V), each part that does not
    have its share of our shape, by its checkpoint name (checked before any concatenation)."""
    if len(parts) == 1:
        found = tuple(parts[0].shape)
        return [] if found == shape else [f"{key}: checkpoint {found} vs model {shape}"]
    part_shape = (shape[0] // len(parts), *shape[1:])
    return [
        f"{name} (part of {key}): checkpoint {tuple(t.shape)} vs model {part_shape}"
        for name, t in zip(names, parts)
        if tuple(t.shape) != part_shape
    ]


def _value_problems(names: tuple[str, ...], parts: list[torch.Tensor]) -> list[str]:
    """Each tensor that is not floating point, or holds inf or NaN, by its checkpoint name."""
    out = []
    for name, t in zip(names, parts):
        if not t.dtype.is_floating_point:
            out.append(f"{name} is {t.dtype}, not floating point")
        elif t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            out.append(f"{name} has {bad} of {t.numel()} values inf or NaN")
    return out


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, else pytorch_model.bin (torch.load with weights_only=True)."""
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.exists():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(st)
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{st} could not be read ({e}); the file is corrupt or truncated") from None
    if pt.exists():
        try:
            weights = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{pt} could not be read ({type(e).__name__}: {e}); is it corrupt?") from None
        if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
        ):
            raise ValueError(
                f"{pt} holds a {type(weights).__name__}, not a state dict (names -> tensors); "
                "is it a model checkpoint?"
            )
        return weights
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {folder}")


def architectures(model: str | os.PathLike) -> list[str]:
    """The model classes a checkpoint's config.json says it holds (its heads), e.g.
    ["RobertaForSequenceClassification"]; [] when it does not say."""
    path = resolve(model, MODEL_FILES) / "config.json"
    try:
        found = json.loads(path.read_text(encoding="utf-8")).get("architectures")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path} could not be read ({e})") from None
    return list(found or [])
