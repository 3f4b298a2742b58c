"""Recommend for one new user: adapt a trained run to their ratings and rank every item they have not rated.

``recommend_for_ratings(run, ratings_file, top=10)`` reads the user's ratings (``user,item,rating[,timestamp]``
CSV or the ``::`` format, on the run's rating scale), adapts the run's meta-learner to all of them (the
support set), predicts every other item of the run's catalogue, and returns the ``top`` highest as rows
``{rank, item, title, predicted_rating}``. It reads only the run folder (``config.yaml``, ``items.npz``,
the checkpoint), never the training data.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .._validation import check_int
from ..data.ratings import Ratings, check_known_items, read_ratings
from ..tasks.kinds import kind_of
from .build import ITEMS_FILE, load_items
from .config import load_users_config
from .features import RowEncoder
from .kind import load_learner

__all__ = ["MIN_RATINGS", "Recommender", "recommend_for_ratings"]

#: a new user needs this many ratings: with one, the profile's spread is undefined and one rating says
#: nothing about how the user uses the scale
MIN_RATINGS = 2


class Recommender:
    """A trained run ready to adapt: ``recommend(items, ratings, top)`` for catalogue rows and ratings."""

    def __init__(self, run_dir: str | os.PathLike, checkpoint: str = "best") -> None:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
        kind = kind_of(run_dir).name
        if kind != "users":  # a clear refusal, not the users schema's complaints about another kind's keys
            raise ValueError(f"{str(run_dir)!r} is a run of kind {kind!r}; recommending needs a run of kind 'users' "
                             "(configs/users/)")
        self.config, _ = load_users_config(run_dir / "config.yaml")
        self.catalogue, stats = load_items(run_dir / ITEMS_FILE)
        f = self.config.features
        self.encoder = RowEncoder(self.catalogue, stats, shrink=f.item_shrink, genre_profile=f.genre_profile)
        self.learner = load_learner(run_dir, self.config, self.encoder, stats.global_mean, checkpoint)
        self.scale = self.config.data.scale

    def predict(self, items: np.ndarray, ratings: np.ndarray) -> np.ndarray:
        """Predicted rating of every catalogue item (float64 ``[items]``) after adapting to ``(items, ratings)``."""
        s_items = torch.as_tensor(np.asarray(items, dtype=np.int64))[None]
        s_ratings = torch.as_tensor(np.asarray(ratings, dtype=np.float32))[None]
        everything = torch.arange(len(self.catalogue))[None]
        support_x, query_x = self.encoder.task(s_items, s_ratings, everything)
        predictor = self.learner.adapt(support_x[0], s_ratings[0, :, None])
        with torch.no_grad():
            predicted = predictor(query_x[0])[:, 0].double().numpy()
        return np.clip(predicted, self.scale[0], self.scale[1]) if self.config.eval.clip else predicted

    def recommend(self, items: np.ndarray, ratings: np.ndarray, top: int = 10) -> list[dict]:
        """The ``top`` unrated items with the highest predicted ratings (ties: catalogue order)."""
        check_int("recommend", "top", top)
        predicted = self.predict(items, ratings)
        predicted[np.asarray(items, dtype=np.int64)] = -np.inf  # already rated
        order = np.argsort(-predicted, kind="stable")[:min(top, len(predicted) - len(items))]
        return [{"rank": rank, "item": str(self.catalogue.ids[i]), "title": str(self.catalogue.titles[i]),
                 "predicted_rating": round(float(predicted[i]), 3)} for rank, i in enumerate(order, start=1)]


def _one_user(ratings: Ratings, user: str | None) -> Ratings:
    users = list(dict.fromkeys(ratings.user.tolist()))  # file order
    if user is None:
        if len(users) > 1:
            shown = ", ".join(repr(u) for u in users[:5]) + (" ..." if len(users) > 5 else "")
            raise ValueError(f"{ratings.source}: holds the ratings of {len(users)} users ({shown}); "
                             "pass --user ID to choose one")
        user = users[0]
    rows = np.flatnonzero(ratings.user == user)
    if len(rows) == 0:
        raise ValueError(f"{ratings.source}: no ratings of user {user!r}")
    return ratings.subset(rows)


def recommend_for_ratings(run_dir: str | os.PathLike, ratings_path: str | os.PathLike, *, top: int = 10,
                          user: str | None = None, checkpoint: str = "best") -> dict:
    """``{"user", "ratings", "recommendations": [...]}`` for the user whose ratings are in ``ratings_path``."""
    recommender = Recommender(run_dir, checkpoint)
    ratings = _one_user(read_ratings(ratings_path, scale=recommender.scale), user)
    rows = check_known_items(ratings, recommender.catalogue)
    if len(ratings) < MIN_RATINGS:
        raise ValueError(f"{ratings.where(0)}: user {str(ratings.user[0])!r} has only {len(ratings)} rating; "
                         f"at least {MIN_RATINGS} are needed to adapt")
    return {"user": str(ratings.user[0]), "ratings": len(ratings),
            "recommendations": recommender.recommend(rows, ratings.rating, top)}
