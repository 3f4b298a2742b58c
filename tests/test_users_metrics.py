"""Per-user metrics against hand-derived values, ties averaged, and paired differences."""

import math

import numpy as np
import pytest

from quickstudy.users.metrics import dcg_at, ndcg_at, paired_difference, summarize, user_metrics


def test_ndcg_by_hand():
    # ranked by prediction: ratings 2, 1, 0, 3 -> gains 3, 1, 0, 7; the ideal order has gains 7, 3, 1
    ratings, predicted = np.array([3, 2, 1, 0]), np.array([0.1, 0.4, 0.3, 0.2])
    dcg = 3 / math.log2(2) + 1 / math.log2(3) + 0 / math.log2(4)
    ideal = 7 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ratings, predicted, 3) == pytest.approx(dcg / ideal, abs=1e-12)
    assert ndcg_at(ratings, ratings * 2.0, 3) == pytest.approx(1.0)
    assert ndcg_at(ratings, predicted, 10) == pytest.approx((dcg + 7 / math.log2(5)) / (ideal + 0), abs=1e-12)


def test_ties_get_the_mean_discount_of_their_ranks():
    # two items predicted alike: each is first or second with probability 1/2
    assert ndcg_at(np.array([3, 0]), np.array([5.0, 5.0]), 1) == pytest.approx(0.5)
    assert ndcg_at(np.array([3, 0]), np.array([5.0, 5.0]), 2) == pytest.approx(7 * (1 + 1 / math.log2(3)) / 2 / 7)
    # a constant predictor scores the same whatever the order the items come in
    ratings = np.array([8, 3, 10, 6, 7])
    assert ndcg_at(ratings, np.zeros(5), 3) == pytest.approx(ndcg_at(ratings[::-1], np.zeros(5), 3))
    # and equals the mean over every order of the items
    gains = np.exp2(ratings) - 1
    assert dcg_at(gains, np.zeros(5), 3) == pytest.approx(gains.mean() * sum(1 / math.log2(p + 1) for p in (1, 2, 3)))


def test_ndcg_matches_scikit_learn_with_exponential_gains():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        ratings = rng.integers(0, 11, size=12)
        predicted = np.round(rng.normal(7, 1, size=12), 1)  # rounding makes ties
        expected = metrics.ndcg_score([np.exp2(ratings) - 1], [predicted], k=3, ignore_ties=False)
        assert ndcg_at(ratings, predicted, 3) == pytest.approx(expected, abs=1e-12)


def test_all_zero_ratings_score_zero():
    assert ndcg_at(np.zeros(4), np.arange(4.0), 3) == 0.0


def test_mae_and_rmse():
    m = user_metrics(np.array([8.0, 6.0, 10.0]), np.array([7.0, 6.0, 7.0]))
    assert m["mae"] == pytest.approx(4 / 3) and m["rmse"] == pytest.approx(math.sqrt(10 / 3))
    with pytest.raises(ValueError, match="no query ratings"):
        user_metrics(np.array([]), np.array([]))


def test_summary_and_paired_difference():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.5, 3.0, 5.0])
    s = summarize({"mae": a})["mae"]
    assert s["mean"] == 2.5 and s["ci95"] == pytest.approx(1.96 * np.std(a, ddof=1) / 2)
    d = paired_difference(a, b)
    diff = a - b
    assert d["mean"] == pytest.approx(diff.mean()) and d["ci95"] == pytest.approx(1.96 * np.std(diff, ddof=1) / 2)
    assert d["relative"] == pytest.approx(2.5 / 3.0 - 1)
