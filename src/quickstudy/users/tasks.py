"""Each user a regression task: a few ratings as the support set, the others as the query set, as TaskBatches.

How a variable number of ratings per user fits a TaskBatch (one tensor per field, so every task of a
batch has the same number of rows):

* training (:class:`UserTasks`): every task of batch ``i`` has the same support size K (drawn per batch
  from ``shots``) and exactly ``queries`` query rows, drawn from the user's other ratings without
  replacement when there are enough, otherwise all of them plus draws with replacement. No padding and
  no mask: every row is a real rating, and each user's query loss stays an unbiased estimate of the mean
  squared error over all their other ratings, so the core algorithms (and their vmap path) run unchanged.
* evaluation (:class:`UserEpisodes`): one user per TaskBatch (B = 1) with every other rating as the
  query set, so the per-user metrics are computed on exactly the user's ratings, never on filler rows.

Both are pure functions of their seed and index (the Trainer resumes bit-exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import check_choice, check_int, check_int_range
from ..tasks.batch import TaskBatch
from ..tasks.sampler import IndexedTasks, batch_generator
from .features import RowEncoder

__all__ = ["UserRatings", "Episode", "UserTasks", "UserEpisodes", "SUPPORT_RULES"]

#: how an evaluated user's K support ratings are chosen
SUPPORT_RULES = ("random", "first")


@dataclass(frozen=True)
class UserRatings:
    """Ratings grouped by user (CSR): user ``u``'s items are ``items[offsets[u]:offsets[u + 1]]``.

    ``users`` are string ids, sorted; ``items`` are catalogue rows; ``times`` are Unix seconds (0 if unknown).
    Within a user, ratings keep file order.
    """

    users: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    times: np.ndarray

    @classmethod
    def build(cls, user: np.ndarray, item_rows: np.ndarray, rating: np.ndarray,
              timestamp: np.ndarray | None) -> "UserRatings":
        users, inverse = np.unique(user, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(users))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        times = np.zeros(len(rating), dtype=np.int64) if timestamp is None else timestamp
        return cls(users, offsets, item_rows[order].astype(np.int64), rating[order].astype(np.float32), times[order])

    def __len__(self) -> int:
        return len(self.users)

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def of(self, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(items, ratings, times)`` of user ``u`` (position in ``users``)."""
        start, stop = self.offsets[u], self.offsets[u + 1]
        return self.items[start:stop], self.ratings[start:stop], self.times[start:stop]


@dataclass(frozen=True)
class Episode:
    """One evaluated user: K support ratings and every other rating as the query (catalogue rows)."""

    user: str
    support_items: np.ndarray
    support_ratings: np.ndarray
    query_items: np.ndarray
    query_ratings: np.ndarray


def _batch(encoder: RowEncoder, s_items, s_ratings, q_items, q_ratings, ids, leave_user_out: bool) -> TaskBatch:
    s_items, q_items = torch.as_tensor(s_items), torch.as_tensor(q_items)
    s_ratings, q_ratings = torch.as_tensor(s_ratings, dtype=torch.float32), torch.as_tensor(q_ratings, dtype=torch.float32)
    support_x, query_x = encoder.task(s_items, s_ratings, q_items, q_ratings, leave_user_out=leave_user_out)
    return TaskBatch(support_x=support_x, support_y=s_ratings[..., None], query_x=query_x, query_y=q_ratings[..., None],
                     episode_ids=torch.as_tensor(ids, dtype=torch.int64))


class UserTasks(IndexedTasks):
    """Training tasks: batch ``i`` holds ``batch_size`` users drawn (seeded by ``(seed, i)``) among those with
    at least K + 1 ratings, K drawn uniformly from ``shots`` (an int or an inclusive ``(low, high)`` range)."""

    def __init__(self, grouped: UserRatings, encoder: RowEncoder, *, shots: int | tuple[int, int] = (5, 10),
                 queries: int = 20, batch_size: int = 32, seed: int = 0, num_batches: int | None = None) -> None:
        self.grouped, self.encoder = grouped, encoder
        self.shots = check_int_range("UserTasks", "shots", shots)
        self.queries = check_int("UserTasks", "queries", queries)
        self.batch_size = check_int("UserTasks", "batch_size", batch_size)
        self.seed = int(seed)
        self.num_batches = check_int("UserTasks", "num_batches", num_batches, allow_none=True)
        counts = grouped.counts()
        if int((counts > self.shots[1]).sum()) == 0:
            raise ValueError(f"UserTasks: no training user has more than {self.shots[1]} ratings (shots={shots}); "
                             "lower task.shots or give more training data")
        self._by_count = np.argsort(counts, kind="stable")
        self._sorted_counts = counts[self._by_count]

    def __repr__(self) -> str:
        return (f"UserTasks({len(self.grouped)} users, shots={self.shots}, queries={self.queries}, "
                f"batch_size={self.batch_size}, seed={self.seed})")

    def batch(self, index: int) -> TaskBatch:
        gen = batch_generator(self.seed, index)
        low, high = self.shots
        k = low + int(torch.randint(high - low + 1, (1,), generator=gen))
        first = int(np.searchsorted(self._sorted_counts, k + 1))  # users with at least K + 1 ratings
        picks = torch.randint(len(self._by_count) - first, (self.batch_size,), generator=gen).numpy() + first
        s_items, s_ratings, q_items, q_ratings = [], [], [], []
        for u in self._by_count[picks]:
            items, ratings, _ = self.grouped.of(int(u))
            order = torch.randperm(len(items), generator=gen).numpy()
            rest = order[k:]
            if len(rest) >= self.queries:
                chosen = rest[:self.queries]
            else:  # all of them, then draws with replacement: each rating keeps the same expected weight
                extra = torch.randint(len(rest), (self.queries - len(rest),), generator=gen).numpy()
                chosen = np.concatenate([rest, rest[extra]])
            s_items.append(items[order[:k]])
            s_ratings.append(ratings[order[:k]])
            q_items.append(items[chosen])
            q_ratings.append(ratings[chosen])
        ids = self._by_count[picks]
        # the users are training users: their own ratings are taken out of the item statistics they see
        return _batch(self.encoder, np.stack(s_items), np.stack(s_ratings), np.stack(q_items), np.stack(q_ratings), ids,
                      leave_user_out=True)


class UserEpisodes:
    """Evaluation tasks: ``episodes[j]`` is user j alone (B = 1) with ``shots`` support ratings and every other
    rating as the query set. ``support="random"`` draws them from a permutation seeded by ``(seed, j)`` (the
    5-rating support set is inside the 10-rating one); ``"first"`` takes the user's first ``shots`` by time.
    Users with fewer than ``shots + 1`` ratings are left out. ``leave_user_out``: the users are training users
    (see :meth:`RowEncoder.task`); validation and test users never are."""

    def __init__(self, grouped: UserRatings, encoder: RowEncoder, *, shots: int, support: str = "random",
                 seed: int = 1234, leave_user_out: bool = False) -> None:
        self.grouped, self.encoder = grouped, encoder
        self.leave_user_out = leave_user_out
        self.shots = check_int("UserEpisodes", "shots", shots)
        self.support = check_choice("UserEpisodes", "support", support, SUPPORT_RULES)
        self.seed = int(seed)
        self.positions = np.flatnonzero(grouped.counts() > self.shots)
        if len(self.positions) == 0:
            raise ValueError(f"UserEpisodes: no user has more than {self.shots} ratings to evaluate on")

    def __len__(self) -> int:
        return len(self.positions)

    def __repr__(self) -> str:
        return f"UserEpisodes({len(self)} users, shots={self.shots}, support={self.support!r}, seed={self.seed})"

    def episode(self, j: int) -> Episode:
        if not 0 <= j < len(self):
            raise IndexError(f"episode {j} out of range for {len(self)} users")
        u = int(self.positions[j])
        items, ratings, times = self.grouped.of(u)
        if self.support == "first":
            order = np.argsort(times, kind="stable")
        else:
            order = torch.randperm(len(items), generator=batch_generator(self.seed, u)).numpy()
        s, q = order[:self.shots], order[self.shots:]
        return Episode(str(self.grouped.users[u]), items[s], ratings[s], items[q], ratings[q])

    def __getitem__(self, j: int) -> TaskBatch:
        e = self.episode(j)
        return _batch(self.encoder, e.support_items[None], e.support_ratings[None], e.query_items[None],
                      e.query_ratings[None], [int(self.positions[j])], leave_user_out=self.leave_user_out)

    def __iter__(self):
        return (self[j] for j in range(len(self)))
