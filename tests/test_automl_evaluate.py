"""Warm-start evaluation maths on tiny hand-made tables."""

import itertools

import numpy as np
import pytest

from quickstudy.automl.evaluate import best_so_far, expected_random_best, leave_one_out, mean_ci, summarize
from quickstudy.automl.knowledge import KnowledgeBase
from quickstudy.automl.recommend import AverageRankRecommender, KNNRecommender


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_expected_random_best_is_the_mean_over_all_subsets(n):
    s = np.array([0.3, 0.5, 0.5, 0.9, 0.1])
    brute = np.mean([max(c) for c in itertools.combinations(s, n)])
    assert expected_random_best(s, n) == pytest.approx(brute, abs=1e-12)


def test_best_so_far_and_errors():
    s = np.array([0.2, 0.8, 0.5])
    assert best_so_far(s, [2, 0, 1], 1) == 0.5
    assert best_so_far(s, [2, 0, 1], 2) == 0.5
    assert best_so_far(s, [2, 0, 1], 3) == 0.8
    with pytest.raises(ValueError):
        best_so_far(s, [2, 0, 1], 4)
    with pytest.raises(ValueError):
        expected_random_best(s, 0)


def test_regret_rank_and_ci_by_hand():
    oracle = np.array([0.9, 0.8, 0.7])
    best = {"a": np.array([[0.9], [0.8], [0.6]]),   # regrets 0, 0, 0.1
            "random": np.array([[0.7], [0.8], [0.5]])}  # regrets 0.2, 0, 0.2
    summary = summarize(best, oracle, [1])["by_budget"]["1"]
    assert summary["a"]["regret"][0] == pytest.approx(0.1 / 3)
    assert summary["random"]["regret"][0] == pytest.approx(0.4 / 3)
    # ranks: data set 1: a 1, random 2; data set 2: tie 1.5 each; data set 3: a 1, random 2
    assert summary["a"]["rank"][0] == pytest.approx((1 + 1.5 + 1) / 3)
    assert summary["random"]["rank"][0] == pytest.approx((2 + 1.5 + 2) / 3)
    assert summary["a"]["vs"]["random"]["regret_diff"][0] == pytest.approx(-0.1)
    assert "random" not in summary["random"]["vs"]
    mean, half = mean_ci([0.0, 0.0, 0.1])
    from scipy.stats import t

    assert half == pytest.approx(t.ppf(0.975, 2) * np.std([0, 0, 0.1], ddof=1) / np.sqrt(3))
    assert mean_ci([0.5]) == (0.5, 0.0)


def test_leave_one_out_on_a_tiny_knowledge_base():
    # two kinds of data sets: feature ~0 -> config 0 best, feature ~1 -> config 2 best
    feats = np.array([[0.0], [0.1], [0.05], [1.0], [0.9], [0.95]])
    scores = np.array([[0.9, 0.5, 0.1]] * 3 + [[0.1, 0.5, 0.9]] * 3)
    kb = KnowledgeBase([f"d{i}" for i in range(6)], ["c0", "c1", "c2"], scores, ["f"], feats)
    result = leave_one_out(kb, {"knn": lambda: KNNRecommender(k=2), "default": AverageRankRecommender},
                           budgets=[1, 2, 3], progress=False)
    assert np.allclose(result.best["knn"][:, 0], 0.9)  # the nearest data sets always know the answer
    # the other 5 data sets hold 3 of the other kind: their best config has the best average rank, and is
    # the worst one for the held-out data set
    assert np.allclose(result.best["default"][:, 0], 0.1)
    assert np.allclose(result.best["random"][:, 0], 0.5)  # (0.9 + 0.5 + 0.1) / 3
    s = result.summary["by_budget"]
    assert s["1"]["knn"]["regret"] == (0.0, 0.0) and s["3"]["random"]["regret"][0] == pytest.approx(0.0)
    assert s["1"]["knn"]["rank"][0] == 1.0
