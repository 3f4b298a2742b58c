"""MovieTweetings 100K (Dooms, De Pessemier & Martens, CrowdRec workshop at RecSys 2013; MIT licence):
100,000 ratings on a 0-10 scale from tweets like "I rated The Matrix 9/10 #IMDb", by 16,554 users of
10,506 movies, 2013-02-28 to 2013-09-01.

``ratings.dat`` is ``user::movie::rating::timestamp`` and ``movies.dat`` is ``movie::Title (Year)::Genres``;
movie ids are 7-digit IMDb numbers with leading zeros, kept as strings. The files are looked for like
every data set (``root``, ``$QUICKSTUDY_DATA``, ``shared/data/movietweetings``, the user cache) and, when
missing, downloaded from the upstream repository at the fixed snapshot commit and checked (md5).
"""

from __future__ import annotations

import os
from pathlib import Path

from .paths import cache_dir, download_file, search_dirs
from .ratings import ItemCatalogue, Ratings, check_known_items, read_items, read_ratings

__all__ = ["MOVIETWEETINGS_FILES", "find_movietweetings", "load_movietweetings"]

_COMMIT = "a645287b5856975583467dac6432fb65f5386427"
_BASE = f"https://raw.githubusercontent.com/sidooms/MovieTweetings/{_COMMIT}/snapshots/100K"

#: file name -> (official URL at the snapshot commit, md5 of the file)
MOVIETWEETINGS_FILES: dict[str, tuple[str, str]] = {
    "ratings.dat": (f"{_BASE}/ratings.dat", "f5e9db01cdf9490fa13713a26183b7cf"),
    "movies.dat": (f"{_BASE}/movies.dat", "951734ec730ee5c0f338cc8532a5f50b"),
}

SCALE = (0.0, 10.0)


def find_movietweetings(filename: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The path of ``ratings.dat`` or ``movies.dat``; downloaded (md5-checked) when absent and ``download``.
    ``FileNotFoundError`` lists every place looked in."""
    if filename not in MOVIETWEETINGS_FILES:
        raise ValueError(f"find_movietweetings: filename must be one of {sorted(MOVIETWEETINGS_FILES)}, got {filename!r}")
    places = search_dirs("movietweetings", root)
    for _, folder in places:
        if (folder / filename).is_file():
            return folder / filename
    url, md5 = MOVIETWEETINGS_FILES[filename]
    failure = ""
    if download:
        target = (Path(root).expanduser() if root is not None else cache_dir("movietweetings", create=False)) / filename
        try:
            return download_file(url, target, md5=md5)
        except (OSError, ValueError) as exc:
            failure = f"\nThe download into {target} failed: {exc}"
    looked = "\n".join(f"  - {folder / filename}  ({label})" for label, folder in places)
    raise FileNotFoundError(
        f"MovieTweetings file {filename!r} not found. Looked in:\n{looked}{failure}\n"
        f"To get it: download {url} (md5 {md5}) into a folder and pass root='<folder>', or set QUICKSTUDY_DATA "
        f"to a folder holding movietweetings/{filename}.")


def load_movietweetings(root: str | os.PathLike | None = None, download: bool = True) -> tuple[Ratings, ItemCatalogue]:
    """``(ratings, movies)`` of MovieTweetings 100K; every rated movie is checked to be in the catalogue."""
    ratings = read_ratings(find_movietweetings("ratings.dat", root, download), scale=SCALE)
    movies = read_items(find_movietweetings("movies.dat", root, download))
    check_known_items(ratings, movies)
    return ratings, movies
