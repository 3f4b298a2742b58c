"""One process at a time in a run folder: a lock file naming its owner, released however the owner ends.

``with hold_run_folder(run_dir, purpose="train"): ...`` takes ``run_dir/.quickstudy.lock``: an OS lock
(``fcntl.flock``) on a file that holds the owner's PID, host, start time and purpose. The kernel drops the lock
when its process exits in any way, ``kill -9`` included, so the lock file a dead process leaves behind is stale
by construction and the next command takes it over; a live owner makes the command fail with
:class:`RunFolderInUse` naming its PID. The file is removed when the block ends.

Holding the folder, the command also removes the temporary files an atomic write (:mod:`quickstudy._atomic`)
leaves when its process is killed mid-write: no other process can be writing them.

Where ``fcntl`` is missing (Windows) the lock file is created exclusively instead; a lock left by a dead
process must then be removed by hand (the message says which file).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "RunFolderInUse", "hold_run_folder", "remove_stray_temporaries"]

LOCK_NAME = ".quickstudy.lock"
# what quickstudy._atomic.atomic_write names its temporary files: .<target name>.<random>.tmp
_TEMPORARY = re.compile(r"^\.(?!quickstudy\.lock).+\.[A-Za-z0-9_]{6,}\.tmp$")


class RunFolderInUse(OSError):
    """Another live process holds the run folder."""


def _owner_line(purpose: str) -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{os.getpid()} {socket.gethostname()} {started} {purpose or 'quickstudy'}\n"


def _describe_owner(lock: Path) -> str:
    try:
        parts = lock.read_text().split(maxsplit=3)
    except OSError:
        parts = []
    if len(parts) == 4 and parts[0].isdigit():
        pid, host, started, purpose = parts
        return f"process {pid} on {host} ({purpose.strip()}, since {started})"
    if parts and parts[0].isdigit():
        return f"process {parts[0]}"
    return "another process"


def _in_use(folder: Path, lock: Path) -> RunFolderInUse:
    return RunFolderInUse(f"{str(folder)!r} is in use by {_describe_owner(lock)}: one command at a time works in a "
                          "run folder; wait for it to end (or stop it) and try again")


def _lock_posix(folder: Path, lock: Path) -> int | None:
    """The open, locked lock file's descriptor (``None`` where the file system has no locks)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _in_use(folder, lock) from None
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return None  # e.g. NFS without a lock daemon: nothing to lock with
            raise
        # the previous owner removes the file when it ends: if it did so between our open and our lock, we hold a
        # lock on a file no one else will see; start again on the current one
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        os.close(fd)


def _lock_exclusive_create(folder: Path, lock: Path) -> int:  # pragma: no cover - Windows
    try:
        return os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        error = _in_use(folder, lock)
        raise RunFolderInUse(f"{error}; if that process is gone, delete {str(lock)!r}") from None


def remove_stray_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files of atomic writes that were killed mid-write; returns what was removed. Call it
    only while holding the folder."""
    removed = []
    for path in folder.iterdir():
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _create(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; returns the folders made (deepest last). A file in the way is an
    error naming it."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        if candidate.exists():
            raise NotADirectoryError(f"{str(candidate)!r} is not a folder: a run folder must go elsewhere")
        missing.append(candidate)
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return list(reversed(missing))


@contextmanager
def hold_run_folder(folder: str | os.PathLike, purpose: str = "", create: bool = False) -> Iterator[Path]:
    """Hold ``folder`` for the block (see the module docstring). ``create``: make it (and missing parents) first;
    if the block then fails, the folders made are removed again when nothing else was put in them."""
    folder = Path(folder)
    made = _create(folder) if create else []
    if not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} is not a folder")
    lock = folder / LOCK_NAME
    try:
        fd = _lock_posix(folder, lock) if fcntl is not None else _lock_exclusive_create(folder, lock)
    except BaseException:
        _remove_empty(made)
        raise
    failed = False
    try:
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, _owner_line(purpose).encode())
        remove_stray_temporaries(folder)
        yield folder
    except BaseException:
        failed = True
        raise
    finally:
        _release(lock, fd)
        if failed:
            _remove_empty(made)


def _release(lock: Path, fd: int | None) -> None:
    try:
        lock.unlink(missing_ok=True)  # while still locked: a waiting process then retries on a fresh file
    finally:
        if fd is not None:
            os.close(fd)


def _remove_empty(made: list[Path]) -> None:
    for path in reversed(made):  # deepest first
        try:
            path.rmdir()
        except OSError:  # something else was put there: keep it
            return
