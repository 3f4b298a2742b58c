"""Users split into meta-train / meta-validation / meta-test, disjoint: at random (seeded) or by arrival time.

``random_split``: the users with at least ``min_ratings`` ratings are shuffled (seeded) and a
``val_fraction`` and a ``test_fraction`` of them become validation and test users; every other user,
including all users with fewer ratings, is a training user. Training may read every rating of a training
user and none of a validation or test user.

``time_split`` (true new users): the test users are those whose *first* rating comes at or after
``cutoff`` (Unix seconds) and who have at least ``min_ratings`` ratings. A model trained at the cut-off
could only have seen the ratings made before it, so training reads only ratings with
``timestamp < cutoff``, of users who arrived before it; the latest-arriving ``val_fraction`` of the users
with at least ``min_ratings`` such ratings are the validation users (their ratings before the cut-off).
Users who arrive after the cut-off with fewer than ``min_ratings`` ratings are not used at all.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from .._validation import check_int, check_number
from ..data.ratings import Ratings

__all__ = ["UserSplit", "random_split", "time_split", "parse_cutoff", "SPLITS"]

SPLITS = ("random", "time")


@dataclass(frozen=True)
class UserSplit:
    """Rows of a :class:`~quickstudy.data.ratings.Ratings` table each part may use.

    ``train_rows``: every rating training may read (statistics, embeddings, training tasks).
    ``val_rows`` / ``test_rows``: the ratings of the validation / test users (episodes are made from them).
    ``val_users`` / ``test_users``: their ids, sorted. ``cutoff``: Unix seconds (time split) or ``None``.
    """

    kind: str
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    val_users: np.ndarray
    test_users: np.ndarray
    cutoff: int | None = None

    def rows(self, part: str) -> np.ndarray:
        if part not in ("train", "val", "test"):
            raise ValueError(f"UserSplit.rows: part must be 'train', 'val' or 'test', got {part!r}")
        return getattr(self, f"{part}_rows")

    def summary(self, ratings: Ratings) -> dict:
        """Counts of users and ratings in each part (JSON-ready)."""
        out = {"kind": self.kind, "cutoff": self.cutoff}
        for part in ("train", "val", "test"):
            rows = self.rows(part)
            out[part] = {"users": int(len(np.unique(ratings.user[rows]))), "ratings": int(len(rows))}
        return out


def _check_fractions(owner: str, val_fraction: float, test_fraction: float | None) -> None:
    check_number(owner, "val_fraction", val_fraction, allow_zero=True)
    if test_fraction is not None:
        check_number(owner, "test_fraction", test_fraction)
    if val_fraction + (test_fraction or 0.0) >= 1.0:
        raise ValueError(f"{owner}: val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}")


def _rows_of(ratings: Ratings, users: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(ratings.user, users))


def random_split(ratings: Ratings, *, min_ratings: int = 15, val_fraction: float = 0.1, test_fraction: float = 0.3,
                 seed: int = 0) -> UserSplit:
    """Seeded random split of the users with ``min_ratings`` or more ratings (see the module docstring)."""
    check_int("random_split", "min_ratings", min_ratings, minimum=2)
    _check_fractions("random_split", val_fraction, test_fraction)
    users, counts = np.unique(ratings.user, return_counts=True)  # sorted: the shuffle does not depend on file order
    eligible = users[counts >= min_ratings]
    if len(eligible) < 2:
        raise ValueError(f"random_split: only {len(eligible)} users have at least {min_ratings} ratings; "
                         "lower split.min_ratings or give more data")
    order = np.random.default_rng(seed).permutation(len(eligible))
    n_test = max(1, int(round(test_fraction * len(eligible))))
    n_val = int(round(val_fraction * len(eligible)))
    test_users = np.sort(eligible[order[:n_test]])
    val_users = np.sort(eligible[order[n_test:n_test + n_val]])
    held_out = np.isin(ratings.user, np.concatenate([test_users, val_users]))
    return UserSplit("random", np.flatnonzero(~held_out), _rows_of(ratings, val_users), _rows_of(ratings, test_users),
                     val_users, test_users)


def parse_cutoff(value: int | float | str) -> int:
    """Unix seconds from a number or an ISO date / date-time (``"2013-05-01"``, taken as UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"cutoff must be Unix seconds or an ISO date like '2013-05-01', got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value)
    if isinstance(value, (_dt.date, _dt.datetime)):  # YAML reads an unquoted 2013-05-01 as a date
        value = value.isoformat()
    try:
        moment = _dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"cutoff must be Unix seconds or an ISO date like '2013-05-01', got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return int(moment.timestamp())


def time_split(ratings: Ratings, *, cutoff: int | float | str, min_ratings: int = 15,
               val_fraction: float = 0.1) -> UserSplit:
    """Test users arrive at or after ``cutoff``; training sees only what was rated before it (module docstring)."""
    check_int("time_split", "min_ratings", min_ratings, minimum=2)
    _check_fractions("time_split", val_fraction, None)
    if ratings.timestamp is None:
        raise ValueError(f"time_split needs timestamps, but {ratings.source} has none "
                         "(use user,item,rating,timestamp or a random split)")
    cut = parse_cutoff(cutoff)
    users, inverse, counts = np.unique(ratings.user, return_inverse=True, return_counts=True)
    first = np.full(len(users), np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, inverse, ratings.timestamp)
    test_users = users[(first >= cut) & (counts >= min_ratings)]
    if len(test_users) == 0:
        when = _dt.datetime.fromtimestamp(cut, _dt.timezone.utc).isoformat()
        raise ValueError(f"time_split: no user with at least {min_ratings} ratings arrives at or after the cut-off "
                         f"{when}; choose an earlier split.cutoff")
    before = ratings.timestamp < cut
    counts_before = np.bincount(inverse[before], minlength=len(users))
    candidates = np.flatnonzero((first < cut) & (counts_before >= min_ratings))
    n_val = int(round(val_fraction * len(candidates)))
    # the latest arrivals validate: they resemble the new users most (ties broken by user id, sorted)
    latest = candidates[np.argsort(first[candidates], kind="stable")][len(candidates) - n_val:]
    val_users = np.sort(users[latest])
    is_val = np.isin(ratings.user, val_users)
    train_rows = np.flatnonzero(before & ~is_val)
    val_rows = np.flatnonzero(before & is_val)
    return UserSplit("time", train_rows, val_rows, _rows_of(ratings, test_users), val_users, np.sort(test_users), cut)
