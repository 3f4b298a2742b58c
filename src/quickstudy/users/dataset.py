"""One place that turns a ratings table, an item catalogue and a user split into everything downstream reads:
training ratings, item statistics, the row encoder and the per-user groups of each part.

Leakage rule, enforced here: item statistics, the encoder (and so the network's inputs), the baselines
and the training tasks are all built from ``split.train_rows`` alone; the validation and test users'
ratings only ever become episodes, whose support sets reach the model at adaptation time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..data.ratings import ItemCatalogue, Ratings, check_known_items
from .baselines import TrainingRatings
from .features import ItemStatistics, RowEncoder
from .splits import UserSplit
from .tasks import UserRatings

__all__ = ["UsersData", "catalogue_of_ids"]


def catalogue_of_ids(ids: np.ndarray, source: str) -> ItemCatalogue:
    """A catalogue with no titles, genres or years, for ratings given without an items file."""
    ids = np.unique(ids)
    return ItemCatalogue(ids=ids, titles=ids.copy(), genres=np.zeros((len(ids), 0), dtype=bool), genre_names=(),
                         years=np.full(len(ids), np.nan, dtype=np.float32), source=source)


@dataclass
class UsersData:
    """Ratings + catalogue + split, and what is derived from the training ratings only.

    ``shrink``: lambda of the item bias; ``genre_profile``: see :class:`~.features.RowEncoder`.
    """

    ratings: Ratings
    catalogue: ItemCatalogue
    split: UserSplit
    shrink: float = 5.0
    genre_profile: bool = True

    def __post_init__(self) -> None:
        self.item_rows = check_known_items(self.ratings, self.catalogue)

    @cached_property
    def stats(self) -> ItemStatistics:
        rows = self.split.train_rows
        return ItemStatistics.from_ratings(self.item_rows[rows], self.ratings.rating[rows], len(self.catalogue))

    @cached_property
    def encoder(self) -> RowEncoder:
        return RowEncoder(self.catalogue, self.stats, shrink=self.shrink, genre_profile=self.genre_profile)

    def grouped(self, part: str) -> UserRatings:
        """The ratings of one part (``"train"``, ``"val"``, ``"test"``) grouped by user."""
        rows = self.split.rows(part)
        r = self.ratings
        return UserRatings.build(r.user[rows], self.item_rows[rows], r.rating[rows],
                                 None if r.timestamp is None else r.timestamp[rows])

    def training(self) -> TrainingRatings:
        """The training ratings as the baselines take them (user codes, catalogue rows)."""
        rows = self.split.train_rows
        users, codes = np.unique(self.ratings.user[rows], return_inverse=True)
        return TrainingRatings(codes.astype(np.int64), self.item_rows[rows], self.ratings.rating[rows].astype(np.float64),
                               len(users), len(self.catalogue))
