r"""What the network sees per rated item: item statistics from the training ratings only, and the x rows.

Item statistics (:class:`ItemStatistics`) come from the ratings training may read (the split's
``train_rows``) and nothing else, so a validation or test user's ratings never reach an item's count,
mean or bias. With the global mean :math:`\mu` of those ratings and :math:`n_i` ratings of item i, the
item bias is shrunk towards 0 for rarely rated items (Koren 2010, "Factor in the neighbors", eq. 2):

.. math::  b_i = \frac{\sum_{u} (r_{ui} - \mu)}{n_i + \lambda_i}

An x row (:class:`RowEncoder`, ``x.shape[-1] == encoder.width``) is, in this column order:

==============  ======  =================================================================
item            1       1 + rank of the item among the items rated in training; 0 = never rated
genres          G       multi-hot genres of the item (the catalogue's genre_names)
year            1       (year - 2000) / 20, 0 when unknown
item stats      2       b_i, log(1 + n_i) / log(1 + max n)
user profile    4 (+G)  from the task's SUPPORT set only (the same in every row of the task):
                        mean residual r - mu - b_i, mean rating - mu, std of the ratings, log K;
                        with ``genre_profile``: per genre, the summed residuals over (support items
                        of that genre + 1)
==============  ======  =================================================================

The user profile is the user's embedding input: MovieTweetings has no user features (MeLU used age,
gender, occupation), so the few ratings a new user gives are the only thing to describe them by.

Training tasks are made of training users, whose ratings are inside the statistics: an item's bias would
hold the very rating the network is asked to predict. Their rows are therefore encoded with the task's own
user taken out of every item statistic (``leave_user_out``: count - 1, total - r, and an item rated by no one
else becomes "never rated"), which is what a new user's rows look like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._validation import check_bool, check_number
from ..data.ratings import ItemCatalogue

__all__ = ["ItemStatistics", "RowEncoder"]

PROFILE_BASE = 4


@dataclass(frozen=True)
class ItemStatistics:
    """Per catalogue item: ``count`` and ``total`` of its training ratings; ``global_mean`` of all of them."""

    count: np.ndarray
    total: np.ndarray
    global_mean: float

    @classmethod
    def from_ratings(cls, item_rows: np.ndarray, ratings: np.ndarray, items: int) -> "ItemStatistics":
        """From the catalogue rows and values of the training ratings (nothing else may go in)."""
        if len(ratings) == 0:
            raise ValueError("ItemStatistics: no training ratings")
        count = np.bincount(item_rows, minlength=items).astype(np.int64)
        total = np.bincount(item_rows, weights=ratings.astype(np.float64), minlength=items)
        return cls(count, total, float(ratings.astype(np.float64).mean()))

    def mean(self) -> np.ndarray:
        """Each item's mean training rating, the global mean for an item never rated in training."""
        return np.where(self.count > 0, self.total / np.maximum(self.count, 1), self.global_mean)

    def bias(self, shrink: float) -> np.ndarray:
        """``b_i = sum(r - mu) / (n_i + shrink)`` (0 for an item never rated in training)."""
        denominator = self.count + shrink
        return np.divide(self.total - self.count * self.global_mean, denominator,
                         out=np.zeros(len(self.count)), where=denominator > 0)


class RowEncoder:
    """Builds x rows (see the module docstring) for items given by catalogue row.

    Args:
        catalogue: the items (genres, years).
        stats: training statistics of the same catalogue.
        shrink: lambda_i of the item bias.
        genre_profile: add the per-genre residual profile (G more columns).
    """

    def __init__(self, catalogue: ItemCatalogue, stats: ItemStatistics, *, shrink: float = 5.0,
                 genre_profile: bool = True) -> None:
        if len(stats.count) != len(catalogue):
            raise ValueError(f"RowEncoder: statistics for {len(stats.count)} items, catalogue of {len(catalogue)}")
        self.shrink = check_number("RowEncoder", "shrink", shrink, allow_zero=True)
        self.genre_profile = check_bool("RowEncoder", "genre_profile", genre_profile)
        self.global_mean = stats.global_mean
        self.genres = int(catalogue.genres.shape[1])
        seen = stats.count > 0
        embed = np.zeros(len(catalogue), dtype=np.int64)
        embed[seen] = np.arange(1, int(seen.sum()) + 1)
        #: rows of the item embedding table: one per item rated in training, plus row 0 for the others
        self.embedding_rows = int(seen.sum()) + 1
        self._embed = torch.as_tensor(embed, dtype=torch.float32)
        self._count = torch.as_tensor(stats.count, dtype=torch.float64)
        self._total = torch.as_tensor(stats.total, dtype=torch.float64)
        self._log_max = math.log1p(max(int(stats.count.max()), 1))
        self._years = torch.as_tensor(np.nan_to_num((catalogue.years.astype(np.float64) - 2000.0) / 20.0, nan=0.0),
                                      dtype=torch.float32)
        self._item_genres = torch.as_tensor(catalogue.genres, dtype=torch.float32)
        self.profile_width = PROFILE_BASE + (self.genres if self.genre_profile else 0)
        self.item_width = 1 + self.genres + 3
        #: columns of an x row
        self.width = self.item_width + self.profile_width

    def _bias(self, count: Tensor, total: Tensor) -> Tensor:
        denominator = count + self.shrink
        bias = (total - count * self.global_mean) / denominator.clamp(min=1e-12)
        return torch.where(denominator > 0, bias, torch.zeros_like(bias)).to(torch.float32)  # shrink 0, no rating

    @property
    def items(self) -> int:
        return int(self._embed.shape[0])

    def _item_columns(self, items: Tensor, own: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(item columns [B, N, item_width], item bias [B, N])``; ``own``: the rating the task's user gave each
        item, to take out of the statistics (training tasks: the user is one of the training users)."""
        count, total = self._count[items], self._total[items]
        embed = self._embed[items]
        if own is not None:
            count, total = count - 1.0, total - own.to(torch.float64)
            embed = torch.where(count > 0, embed, torch.zeros_like(embed))  # rated by no one else: unknown
        bias = self._bias(count, total)
        log_count = (torch.log1p(count) / self._log_max).to(torch.float32)
        columns = torch.cat([embed[..., None], self._item_genres[items], self._years[items][..., None],
                             bias[..., None], log_count[..., None]], -1)
        return columns, bias

    def _profile(self, support_items: Tensor, ratings: Tensor, bias: Tensor) -> Tensor:
        k = ratings.shape[-1]
        residual = ratings - self.global_mean - bias
        centred = ratings - self.global_mean
        std = ratings.std(dim=-1, correction=0) if k > 1 else torch.zeros_like(ratings[..., 0])
        profile = torch.stack([residual.mean(-1), centred.mean(-1), std, torch.full_like(std, math.log(k))], -1)
        if self.genre_profile:
            genres = self._item_genres[support_items]                       # [B, K, G]
            by_genre = (genres * residual[..., None]).sum(-2) / (genres.sum(-2) + 1.0)
            profile = torch.cat([profile, by_genre], -1)
        return profile

    def task(self, support_items: Tensor, support_ratings: Tensor, query_items: Tensor,
             query_ratings: Tensor | None = None, *, leave_user_out: bool = False) -> tuple[Tensor, Tensor]:
        """``(support_x, query_x)`` ``[B, K | Q, width]`` of a batch of tasks; the profile comes from the support
        sets only.

        ``leave_user_out=True`` (training tasks, whose user is among the training users): every item statistic
        is computed without the task's own user's ratings (``query_ratings`` required), as it will be for a
        new user. Otherwise the network would learn to trust an item bias that already holds the rating it
        is asked to predict (for an item rated once, ``b_i = (r - mu) / (1 + lambda)``), a trust that fails on
        every new user."""
        ratings = support_ratings.to(torch.float32)
        if leave_user_out and query_ratings is None:
            raise ValueError("RowEncoder.task: leave_user_out needs the query ratings")
        s_columns, s_bias = self._item_columns(support_items, ratings if leave_user_out else None)
        q_columns, _ = self._item_columns(query_items, query_ratings if leave_user_out else None)
        profile = self._profile(support_items, ratings, s_bias)
        def with_profile(columns: Tensor) -> Tensor:
            return torch.cat([columns, profile[:, None, :].expand(-1, columns.shape[1], -1)], -1)
        return with_profile(s_columns), with_profile(q_columns)

    def model_shape(self) -> dict[str, int]:
        """The shape arguments of :class:`~quickstudy.models.MeLU` for these rows."""
        return {"items": self.embedding_rows, "genres": self.genres, "profile": self.profile_width}
