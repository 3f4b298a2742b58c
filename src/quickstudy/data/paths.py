"""Where data lives: the data root, the cache directory, atomic writes and a checked download.

Lookup order for data files (see :func:`find_data_file`):

1. the ``root`` argument of the loader (the folder itself, or ``root/<name>/``); when given, it is the only
   place looked in: a path the user names is never replaced by a copy found elsewhere;
2. the ``QUICKSTUDY_DATA`` environment variable (the folder itself, or ``$QUICKSTUDY_DATA/<name>/``);
3. ``shared/data/<name>`` beside any ancestor of the installed package or of the working directory
   (the layout of a checkout at ``/work/main`` with data at ``/work/shared/data``);
4. the user cache directory, ``$QUICKSTUDY_CACHE`` or ``~/.cache/quickstudy``, subfolder ``<name>/``.

Decoded or generated arrays are cached under :func:`cache_dir` and written atomically (temp file in
the same folder, then :func:`os.replace`), so an interrupted run never leaves a half-written file
under the final name.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import numpy as np

from .._atomic import atomic_write

__all__ = [
    "ENV_DATA", "ENV_CACHE", "cache_dir", "data_root", "shared_data_dirs", "search_dirs",
    "find_data_file", "download_file", "file_md5", "atomic_save_npz", "load_npz",
]

ENV_DATA = "QUICKSTUDY_DATA"
ENV_CACHE = "QUICKSTUDY_CACHE"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The user cache directory (``$QUICKSTUDY_CACHE``, else ``~/.cache/quickstudy``), optionally a
    subfolder of it; created when ``create``."""
    env = os.environ.get(ENV_CACHE)
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "quickstudy"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _ancestors(path: Path) -> list[Path]:
    path = path.resolve()
    return [path, *path.parents]


def shared_data_dirs() -> list[Path]:
    """Existing ``<ancestor>/shared/data`` folders, for the ancestors of this package's file and of
    the current working directory (nearest first, no duplicates)."""
    found: list[Path] = []
    starts = [Path(__file__).parent]
    try:
        starts.append(Path.cwd())
    except OSError:  # the working directory was deleted
        pass
    for start in starts:
        for ancestor in _ancestors(start):
            candidate = ancestor / "shared" / "data"
            if candidate.is_dir() and candidate not in found:
                found.append(candidate)
    return found


def data_root() -> Path | None:
    """The folder data sets are read from when no ``root`` is given: ``$QUICKSTUDY_DATA`` if set,
    else the nearest ``shared/data`` folder (see :func:`shared_data_dirs`), else ``None``."""
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env).expanduser()
    shared = shared_data_dirs()
    return shared[0] if shared else None


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched for the files of data set ``name``, in order, each with a label saying
    where it came from (used in error messages). An explicit ``root`` is the only place searched."""
    places: list[tuple[str, Path]] = []
    if root is not None:
        root = Path(root).expanduser()
        return [("root argument", root), ("root argument", root / name)]
    env = os.environ.get(ENV_DATA)
    if env:
        env_path = Path(env).expanduser()
        places += [(f"${ENV_DATA}", env_path), (f"${ENV_DATA}", env_path / name)]
    for shared in shared_data_dirs():
        places.append(("shared data folder", shared / name))
    places.append(("user cache", cache_dir(name, create=False)))
    unique: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for label, path in places:
        if path not in seen:
            seen.add(path)
            unique.append((label, path))
    return unique


def find_data_file(filename: str, name: str, root: str | os.PathLike | None = None) -> Path | None:
    """The first ``<dir>/filename`` over :func:`search_dirs` that is a file, or ``None``."""
    for _, folder in search_dirs(name, root):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    return None


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: str | os.PathLike, md5: str | None = None, timeout: float = 60.0,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the md5 of the bytes when given.

    The file is written to a temporary name in the destination folder and renamed only after the
    checksum matched. Raises ``OSError`` when the download fails and ``ValueError`` on a checksum
    mismatch (the partial file is removed in both cases).
    """
    dest = Path(dest)
    digest = hashlib.md5()
    with atomic_write(dest, suffix=".part") as out:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (fixed https URLs)
        except (urllib.error.URLError, ValueError) as exc:
            raise OSError(f"could not download {url}: {exc}") from exc
        with response:
            total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                           desc=f"Downloading {dest.name}", file=sys.stderr)
            try:
                while True:
                    block = response.read(1 << 16)
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
        if md5 is not None and digest.hexdigest() != md5.lower():  # raising here discards the download
            raise ValueError(f"checksum mismatch for {url}: md5 {digest.hexdigest()}, expected {md5}")
    return dest


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez`` (uncompressed), written atomically."""
    path = Path(path)
    with atomic_write(path) as out:
        np.savez(out, **arrays)
    return path


def load_npz(path: str | os.PathLike, keys: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The named arrays of a cache file, or ``None`` when it is missing, unreadable or lacks a key
    (a stale or damaged cache is rebuilt rather than trusted). Never unpickles."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except Exception:  # noqa: BLE001 - any damage means "rebuild"
        return None
