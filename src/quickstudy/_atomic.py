"""Atomic file writes: a temporary file beside the target, fsynced, then renamed over it.

A reader never sees a half-written checkpoint, cache or download, and a failed write (an exception
inside the block) leaves the previous file as it was and no temporary file behind. A process killed mid-write
leaves its temporary file (``.<name>.<random>.tmp``); the next command that holds the folder removes it
(:mod:`quickstudy.run_lock`). With ``previous=``, the file being replaced is kept under that name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "atomic_write_text"]


@contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp",
                 previous: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as handle: handle.write(...)``; ``path`` appears only if the block succeeds.
    ``previous``: first keep the content ``path`` had under this name (atomically too), e.g. the checkpoint
    before the last; at every moment both names hold a complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; publish like a normal file
        if previous is not None:
            _keep(path, Path(previous))
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path) as handle:
        handle.write(text.encode("utf-8"))
    return Path(path)


def _keep(path: Path, previous: Path) -> None:
    """Make ``previous`` hold ``path``'s current content: a hard link (no copy) renamed into place."""
    if not path.is_file():
        return
    staging = previous.with_name(f".{previous.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            os.link(path, staging)
        except OSError:  # a file system without hard links
            shutil.copy2(path, staging)
        os.replace(staging, previous)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); harmless to skip where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
