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
