"""Where a model or tokenizer named by the user lives: a local folder, a built-in model, or the Hub.

`resolve("path/to/dir")` returns that folder; `resolve("roberta-small-books")` the built-in model
shipped inside this package; `resolve("roberta-base")` downloads the named files from the
Hugging Face Hub (for users who are online) and returns the cached snapshot folder.
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL = "roberta-small-books"  # the small model pretrained by `roberta pretrain` (see models/)

MODEL_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]
TOKENIZER_FILES = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "encoder.json",
    "vocab.bpe",
    "dict.txt",
    "sentencepiece.bpe.model",  # XLM-R, CamemBERT
    "vocab.txt",  # BERT, MiniLM (WordPiece)
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",  # the model's family (model_type) and its longest input
]


def builtin_models() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if p.is_dir()) if BUILTIN_DIR.is_dir() else []


def resolve(name_or_path: str | os.PathLike, filenames: list[str]) -> Path:
    """Return a local folder holding (some of) `filenames` for a path, a built-in name or a Hub id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; pass the folder that holds it")
    name = str(name_or_path)
    if (BUILTIN_DIR / name).is_dir():
        return BUILTIN_DIR / name
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name:
        raise FileNotFoundError(f"no such folder: {name!r}")
    return _download(name, filenames)


def _download(repo_id: str, filenames: list[str]) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(repo_id, allow_patterns=filenames, local_files_only=offline)
    except Exception as e:  # huggingface_hub raises many types: offline, 404, gated, bad id
        builtins = ", ".join(builtin_models()) or "none installed"
        raise OSError(
            f"could not resolve {repo_id!r}: it is not a local folder, not a built-in model "
            f"({builtins}), and fetching it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}). "
            "Are you offline? Pass a local folder with config.json and model.safetensors instead."
        ) from None
    return Path(folder)
