"""Atomic file writes: nothing a user saved is ever left half-written.

Every file is written to a hidden temporary file beside its target and renamed over it in one step
(`os.replace` is atomic on POSIX), so a crash or a kill mid-write leaves the old file intact. The
file is flushed to the disk (fsync) before the rename, and the folder after it: without that, a
power loss can leave the new name pointing at an empty file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a saved model or figure is for sharing
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (names created or renamed in it) to the disk; a no-op on Windows,
    which cannot open a folder."""
    if os.name == "nt":
        return
    fsync_file(path)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under `folder`, then every folder, deepest first, `folder` last."""
    folder = Path(folder)
    paths = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for p in paths:
        if p.is_file() and not p.is_symlink():
            fsync_file(p)
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            fsync_dir(p)
    fsync_dir(folder)
