"""Checkpoints in the Hugging Face layout (config.json + model.safetensors), in and out.

All compatibility lives here: one declarative table maps our module names to HF's, and the
load is strict — every missing, unexpected or mis-shaped key is named in one error.

`PretrainedModel` gives every model class `from_pretrained` and `save_pretrained`. A class says
how it sits in a checkpoint with three attributes:
    base_model_prefix  "" for the bare encoder, "roberta" for task models (HF's `roberta.` prefix)
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
from roberta.config import RobertaConfig
from roberta.hub import MODEL_FILES, resolve
from roberta.quantize import Int8Linear, int8_device, set_dtype

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

    def to_hf_names(self, key: str) -> tuple[str, ...]:
        """Our state_dict key -> HF key(s), prefix included."""
        prefix = self.base_model_prefix + "." if self.base_model_prefix else ""
        if prefix and not key.startswith(prefix):
            return (key,)  # a task head: HF's names are ours
        return tuple(prefix + k for k in hf_names(key[len(prefix) :]))

    # ---- save ---------------------------------------------------------------------------------

    def hf_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """Our weights under HF's names (fused tensors split, tied copies left out)."""
        if any(isinstance(m, Int8Linear) for m in self.modules()):
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
        """Write config.json, naming this class in `architectures` (what transformers instantiates)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        architectures = {"architectures": [self.hf_architecture or type(self).__name__]}
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
        dtype: e.g. torch.bfloat16; torch.int8 quantizes the Transformer layers for CPU inference
        (roberta/quantize.py).
        Returns the model in eval mode.
        """
        if dtype == torch.int8:
            device = int8_device(device)
        folder = resolve(name_or_path, MODEL_FILES)
        config = cls.config_class.from_json_file(folder / "config.json")
        if config_overrides:
            config = dataclasses.replace(config, **config_overrides)
        model = cls(config)
        model.load_hf_state_dict(read_weights(folder), source=str(name_or_path))
        if device is not None:
            model.to(device)
        return set_dtype(model, dtype).eval()

    def load_hf_state_dict(self, hf: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Copy HF-named tensors into this model; strict: one error names every problem."""
        hf = {k: v for k, v in hf.items() if not IGNORED_HF_KEYS.search(k)}
        hf = self._match_prefix(hf)
        own = self.state_dict()
        used, missing, shapes, fresh = set(), [], [], []
        heads_in_ckpt = {k.split(".")[0] for k in hf}
        for key, param in own.items():
            if key in self.tied_weights:
                continue
            names = self._find(key, hf)
            if names is None:
                body = not self.base_model_prefix or key.startswith(self.base_model_prefix + ".")
                pooler = ".pooler." in f".{key}"
                # A head (or pooler) the checkpoint has no trace of is new: initialised, not an error.
                if (not body and key.split(".")[0] not in heads_in_ckpt) or pooler:
                    fresh.append(key)
                else:
                    missing.append(key)
                continue
            tensor = torch.cat([hf[n] for n in names], dim=0) if len(names) > 1 else hf[names[0]]
            used.update(names)
            if tensor.shape != param.shape:
                shapes.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(param.shape)}")
                continue
            with torch.no_grad():
                param.copy_(tensor.to(param.dtype))
        unexpected = sorted(set(hf) - used)
        body_unexpected = [k for k in unexpected if k.startswith(self._hf_body_prefixes())]
        self._report(source, missing, shapes, body_unexpected, fresh, unexpected)

    def _find(self, key: str, hf: dict[str, torch.Tensor]) -> tuple[str, ...] | None:
        for names in (self.to_hf_names(key), *((a,) for a in self.key_aliases.get(key, ()))):
            if all(n in hf for n in names):
                return names
        return None

    def _hf_body_prefixes(self) -> tuple[str, ...]:
        prefix = self.base_model_prefix + "." if self.base_model_prefix else ""
        return tuple(prefix + p for p in BODY_PREFIXES if p != "pooler.")

    def _match_prefix(self, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A task checkpoint into the bare encoder drops `roberta.`; a bare one into a task model adds it."""
        has_prefix = any(k.startswith("roberta.") for k in hf)
        if self.base_model_prefix and not has_prefix:
            return {("roberta." + k if k.startswith(BODY_PREFIXES) else k): v for k, v in hf.items()}
        if not self.base_model_prefix and has_prefix:
            return {k.removeprefix("roberta."): v for k, v in hf.items()}
        return hf

    def _report(self, source, missing, shapes, body_unexpected, fresh, unexpected) -> None:
        problems = []
        if missing:
            problems.append(f"missing from the checkpoint: {_short(missing)}")
        if shapes:
            problems.append(f"shapes that differ: {_short(shapes)}")
        if body_unexpected:
            problems.append(f"in the checkpoint but not in the model: {_short(body_unexpected)}")
        if problems:
            raise ValueError(
                f"{source} does not fit {type(self).__name__} with this config "
                f"(hidden {self.config.hidden_size}, {self.config.num_hidden_layers} layers, "
                f"vocab {self.config.vocab_size}):\n  "
                + "\n  ".join(problems)
                + "\nDoes config.json belong to these weights?"
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
            return torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{pt} could not be read ({type(e).__name__}: {e}); is it corrupt?") from None
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
