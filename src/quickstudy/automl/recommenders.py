"""The registry of warm-start recommenders: name -> a fresh recommender (``quickstudy recommend --method``).

A registry module of its own, importing the recommenders' modules and imported by none of them, so that
adding a recommender never makes an import cycle.
"""

from __future__ import annotations

from typing import Callable

from .recommend import (AverageRankRecommender, KNNRecommender, RegretPortfolioRecommender,
                        StaticPortfolioRecommender, SurrogateRecommender)
from .warm_search import ScenarioSearch

__all__ = ["RECOMMENDERS", "make_recommender"]

#: name -> factory of a fresh recommender
RECOMMENDERS: dict[str, Callable[[], object]] = {
    "knn-mean": lambda: KNNRecommender(mode="mean"),
    "knn-best": lambda: KNNRecommender(mode="best"),
    "knn-portfolio": lambda: KNNRecommender(mode="portfolio"),
    "surrogate": SurrogateRecommender,
    "regret-portfolio": RegretPortfolioRecommender,
    "best-default": AverageRankRecommender,
    "static-portfolio": StaticPortfolioRecommender,
    "scenario-search": ScenarioSearch,
}


def make_recommender(name: str):
    """A fresh recommender by name (one of :data:`RECOMMENDERS`)."""
    if name not in RECOMMENDERS:
        raise ValueError(f"unknown recommender {name!r}; expected one of {', '.join(RECOMMENDERS)}")
    return RECOMMENDERS[name]()
