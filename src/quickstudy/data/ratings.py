"""Explicit ratings and item catalogues: a user's own files and MovieTweetings, read with line-exact errors.

Ratings files (one rating a line, ids kept as strings, so IMDb numbers keep their leading zeros):

* ``user::item::rating[::timestamp]`` (the MovieLens / MovieTweetings ``.dat`` format), or
* CSV ``user,item,rating[,timestamp]``, with an optional header line naming the columns.

The format is taken from the first data line; every line must then have the same number of fields.
Timestamps are Unix seconds (integers). Item catalogues are ``item::Title (Year)::Genre|Genre`` (the
MovieTweetings ``movies.dat``) or CSV ``item,title[,genres][,year]`` with a header.

Every expected failure (a malformed line, a rating outside the scale, a repeated (user, item) pair, an
empty file) raises ``ValueError`` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Ratings", "ItemCatalogue", "read_ratings", "read_items", "check_known_items"]

_YEAR = re.compile(r"\((\d{4})\)\s*$")


@dataclass(frozen=True)
class Ratings:
    """Explicit ratings, one row per (user, item) pair, in file order.

    ``user``/``item`` are string ids; ``rating`` float32 on ``scale``; ``timestamp`` int64 Unix seconds
    (``None`` when the file has none); ``line`` the 1-based line each rating came from (for messages).
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray | None
    line: np.ndarray
    source: str
    scale: tuple[float, float]

    def __len__(self) -> int:
        return int(self.rating.shape[0])

    def subset(self, rows: np.ndarray) -> "Ratings":
        """The ratings at ``rows`` (a boolean mask or integer indices), same source and scale."""
        return Ratings(self.user[rows], self.item[rows], self.rating[rows],
                       None if self.timestamp is None else self.timestamp[rows], self.line[rows], self.source,
                       self.scale)

    def where(self, row: int) -> str:
        """``"FILE, line N"`` for rating ``row`` (error messages)."""
        return f"{self.source}, line {int(self.line[row])}"


@dataclass(frozen=True)
class ItemCatalogue:
    """What is known about each item besides its ratings: title, genres (multi-hot) and year.

    ``years`` is float32 with ``nan`` where unknown; ``genres`` is bool ``[items, len(genre_names)]``.
    """

    ids: np.ndarray
    titles: np.ndarray
    genres: np.ndarray
    genre_names: tuple[str, ...]
    years: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def index_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this catalogue (int64), ``-1`` for an id it does not hold."""
        ids = np.asarray(ids).astype(str)
        if len(self.ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1).astype(np.int64)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"ratings file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None


def _split(text: str, separator: str) -> list[str]:
    if separator == "::":
        return [part.strip() for part in text.split("::")]
    return [part.strip() for part in next(csv.reader(io.StringIO(text)))]


def read_ratings(path: str | os.PathLike, scale: tuple[float, float] = (0.0, 10.0)) -> Ratings:
    """Read a ratings file (see the module docstring); ratings must lie in ``scale`` (inclusive)."""
    path = Path(path)
    low, high = float(scale[0]), float(scale[1])
    if not low < high:
        raise ValueError(f"read_ratings: scale must be (low, high) with low < high, got {scale!r}")
    lines = _lines(path)
    users, items, ratings, times, numbers = [], [], [], [], []
    separator, width = None, None
    seen: dict[tuple[str, str], int] = {}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if separator is None:
            separator = "::" if "::" in text else ","
        fields = _split(text, separator)
        if width is None and separator == "," and len(fields) >= 3 and _number(fields[2]) is None \
                and fields[0].lower() in ("user", "user_id", "userid"):
            width = len(fields)  # a header line naming the columns
            if width not in (3, 4):
                raise ValueError(f"{path}, line {number}: the header must name user,item,rating[,timestamp]; "
                                 f"got {len(fields)} columns: {text!r}")
            continue
        if width is None:
            width = len(fields)
        expected = "user::item::rating[::timestamp]" if separator == "::" else "user,item,rating[,timestamp]"
        if len(fields) != width or width not in (3, 4):
            raise ValueError(f"{path}, line {number}: expected {expected} ({width if width in (3, 4) else '3 or 4'} "
                             f"fields like the first line), got {len(fields)} field(s): {text!r}")
        user, item, rating_text = fields[0], fields[1], fields[2]
        if not user or not item:
            raise ValueError(f"{path}, line {number}: the user and item ids must not be empty: {text!r}")
        rating = _number(rating_text)
        if rating is None:
            raise ValueError(f"{path}, line {number}: rating {rating_text!r} is not a number")
        if not low <= rating <= high:
            raise ValueError(f"{path}, line {number}: rating {rating_text} is outside the scale {low:g}..{high:g}")
        if width == 4:
            stamp = fields[3]
            if not re.fullmatch(r"-?\d+", stamp):
                raise ValueError(f"{path}, line {number}: timestamp {stamp!r} is not an integer (Unix seconds)")
            times.append(int(stamp))
        key = (user, item)
        if key in seen:
            raise ValueError(f"{path}, line {number}: user {user!r} already rated item {item!r} on line {seen[key]}")
        seen[key] = number
        users.append(user)
        items.append(item)
        ratings.append(rating)
        numbers.append(number)
    if not ratings:
        raise ValueError(f"{path}: no ratings (the file is empty)")
    return Ratings(user=np.array(users), item=np.array(items), rating=np.array(ratings, dtype=np.float32),
                   timestamp=np.array(times, dtype=np.int64) if width == 4 else None,
                   line=np.array(numbers, dtype=np.int64), source=str(path), scale=(low, high))


def read_items(path: str | os.PathLike) -> ItemCatalogue:
    """Read an item catalogue: ``item::Title (Year)::Genre|Genre`` or CSV ``item,title[,genres][,year]``
    with a header. Genres are ``|``-separated; a missing year is ``nan``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items file {str(path)!r} does not exist")
    lines = _lines(path)
    content = [(n, t) for n, t in enumerate(lines, start=1) if t.strip()]
    if not content:
        raise ValueError(f"{path}: no items (the file is empty)")
    dat = "::" in content[0][1]
    if dat:
        columns = ["item", "title", "genres"]
    else:
        columns = [c.strip().lower() for c in _split(content[0][1], ",")]
        if columns[:2] != ["item", "title"] or any(c not in ("genres", "year") for c in columns[2:]):
            raise ValueError(f"{path}, line {content[0][0]}: a CSV items file needs a header item,title[,genres][,year]; "
                             f"got {content[0][1]!r}")
        content = content[1:]
    ids, titles, genre_lists, years, where = [], [], [], [], {}
    for number, text in content:
        fields = text.split("::") if dat else _split(text, ",")
        if dat and len(fields) > 3:  # a title holding '::'
            fields = [fields[0], "::".join(fields[1:-1]), fields[-1]]
        if len(fields) != len(columns):
            raise ValueError(f"{path}, line {number}: expected {len(columns)} fields ({', '.join(columns)}), "
                             f"got {len(fields)}: {text!r}")
        row = dict(zip(columns, (f.strip() for f in fields)))
        if not row["item"]:
            raise ValueError(f"{path}, line {number}: the item id must not be empty")
        if row["item"] in where:
            raise ValueError(f"{path}, line {number}: item {row['item']!r} is already listed on line {where[row['item']]}")
        where[row["item"]] = number
        year = math.nan
        if "year" in row:
            if row["year"]:
                value = _number(row["year"])
                if value is None:
                    raise ValueError(f"{path}, line {number}: year {row['year']!r} is not a number")
                year = value
        else:
            match = _YEAR.search(row["title"])
            year = float(match.group(1)) if match else math.nan
        ids.append(row["item"])
        titles.append(row["title"])
        genre_lists.append([g.strip() for g in row.get("genres", "").split("|") if g.strip()])
        years.append(year)
    names = tuple(sorted({g for gs in genre_lists for g in gs}))
    column = {name: k for k, name in enumerate(names)}
    genres = np.zeros((len(ids), len(names)), dtype=bool)
    for row, gs in enumerate(genre_lists):
        genres[row, [column[g] for g in gs]] = True
    return ItemCatalogue(ids=np.array(ids), titles=np.array(titles), genres=genres, genre_names=names,
                         years=np.array(years, dtype=np.float32), source=str(path))


def check_known_items(ratings: Ratings, catalogue: ItemCatalogue) -> np.ndarray:
    """Each rating's row in ``catalogue``; ``ValueError`` naming the line of the first unknown item."""
    rows = catalogue.index_of(ratings.item)
    unknown = np.flatnonzero(rows < 0)
    if len(unknown):
        first = int(unknown[0])
        more = f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
        raise ValueError(f"{ratings.where(first)}: item {str(ratings.item[first])!r} is not in the item catalogue "
                         f"{catalogue.source}{more}")
    return rows
