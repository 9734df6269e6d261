"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The evaluation data folder: $ROBERTA_DATA, else `shared/data` beside the repository.

    Tests that need it are skipped (with the reason) when it is absent.
    """
    path = Path(os.environ.get("ROBERTA_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"data folder {path} not found (set ROBERTA_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(data_dir, tmp_path_factory) -> Path:
    """A tiny random RobertaForMaskedLM (hidden 32, 2 layers) with the real roberta-base tokenizer,
    saved in the HF layout: what a CLI or API test passes as `--model`."""
    import torch

    from roberta import RobertaConfig, RobertaForMaskedLM
    from roberta.tokenizer import Tokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    files = data_dir / "roberta-base-tokenizer"
    Tokenizer.from_files(files / "vocab.json", files / "merges.txt").save_pretrained(folder)
    torch.manual_seed(0)
    config = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    RobertaForMaskedLM(config).save_pretrained(folder)
    return folder
