r"""Per-user recommendation metrics, their mean with a 95% CI over users, and paired differences.

For one user with query ratings :math:`r_1..r_Q` and predictions :math:`\hat r_1..\hat r_Q`:

* MAE :math:`= \frac1Q \sum |\hat r_q - r_q|`, RMSE :math:`= \sqrt{\frac1Q \sum (\hat r_q - r_q)^2}`;
* nDCG@k of the query items ranked by predicted rating (the measure of MeLU, Lee et al. 2019, and MAMO,
  Dong et al. 2020), with the exponential gain :math:`2^{r} - 1` of MAMO's code and the discount
  :math:`1/\log_2(p + 1)` at rank p:

  .. math::  \mathrm{DCG@k} = \sum_{p=1}^{k} \frac{2^{r_{(p)}} - 1}{\log_2(p + 1)}, \qquad
             \mathrm{nDCG@k} = \mathrm{DCG@k} / \mathrm{IDCG@k}

  where IDCG@k ranks by the true ratings. Equal predictions (a mean baseline predicts one value for
  many items) are not broken by position, which would reward an arbitrary order: DCG is its expectation
  over a random order within each tie, i.e. every item of a tie spanning ranks a..b gets the mean
  discount of those of the ranks a..b that are within k (McSherry & Najork, ECIR 2008). A user whose
  query ratings are all 0 has IDCG = 0 and nDCG = 0 (scikit-learn's convention).

Over users: the mean and ``1.96 * s / sqrt(n)`` (:func:`quickstudy.training.metrics.mean_ci95`). A paired
comparison of methods A and B on the same users uses the per-user differences A - B.
"""

from __future__ import annotations

import math

import numpy as np

from ..training.metrics import mean_ci95

__all__ = ["METRICS", "dcg_at", "ndcg_at", "user_metrics", "summarize", "paired_difference"]

#: per-user metrics, in report order, and whether lower is better
METRICS: dict[str, bool] = {"mae": True, "rmse": True, "ndcg@3": False, "ndcg@5": False}


def dcg_at(gains: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Tie-averaged DCG@k of items with ``gains`` ranked by ``scores`` (descending)."""
    gains, scores = np.asarray(gains, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    discount = 1.0 / np.log2(np.arange(len(gains)) + 2.0)
    discount[k:] = 0.0
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_gains = scores[order], gains[order]
    # tie groups: runs of equal scores in the ranked list
    starts = np.flatnonzero(np.concatenate([[True], ranked_scores[1:] != ranked_scores[:-1]]))
    bounds = np.append(starts, len(gains))
    total = 0.0
    for a, b in zip(bounds[:-1], bounds[1:]):
        total += ranked_gains[a:b].sum() * discount[a:b].mean()
    return float(total)


def ndcg_at(ratings: np.ndarray, predictions: np.ndarray, k: int) -> float:
    """nDCG@k with gain ``2^r - 1`` of the items ranked by ``predictions`` (module docstring)."""
    gains = np.exp2(np.asarray(ratings, dtype=np.float64)) - 1.0
    ideal = dcg_at(gains, gains, k)
    if ideal <= 0.0:
        return 0.0
    return dcg_at(gains, predictions, k) / ideal


def user_metrics(ratings: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """MAE, RMSE, nDCG@3 and nDCG@5 of one user's query ratings."""
    ratings = np.asarray(ratings, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(ratings.shape)
    if ratings.size == 0:
        raise ValueError("user_metrics: the user has no query ratings")
    if not np.isfinite(predictions).all():
        raise ValueError("user_metrics: a prediction is not finite")
    error = predictions - ratings
    return {"mae": float(np.abs(error).mean()), "rmse": float(math.sqrt((error ** 2).mean())),
            "ndcg@3": ndcg_at(ratings, predictions, 3), "ndcg@5": ndcg_at(ratings, predictions, 5)}


def summarize(per_user: dict[str, list[float] | np.ndarray]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "ci95"}}`` over users."""
    out = {}
    for name, values in per_user.items():
        mean, ci = mean_ci95(np.asarray(values, dtype=np.float64))
        out[name] = {"mean": mean, "ci95": ci}
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Per-user ``a - b`` on the same users: its mean, 95% CI half-width, and ``mean(a) / mean(b) - 1``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} and {b.shape} are not the same users")
    mean, ci = mean_ci95(a - b)
    return {"mean": mean, "ci95": ci, "relative": float(a.mean() / b.mean() - 1.0) if b.mean() != 0 else math.nan}
