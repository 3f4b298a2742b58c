"""Recommenders on a constructed knowledge base whose answer is known."""

import numpy as np
import pytest

from quickstudy.automl.knowledge import KnowledgeBase
from quickstudy.automl.recommend import (AverageRankRecommender, KNNRecommender, MetaFeatureScaler,
                                         RegretPortfolioRecommender, SurrogateRecommender, greedy_best_of_n,
                                         normalized_scores)


def clustered_kb(seed=0):
    """Three families of data sets (meta-feature clusters at 0, 10, 100); family f's best config is f."""
    rng = np.random.default_rng(seed)
    names, feats, scores = [], [], []
    for family, centre in enumerate((0.0, 10.0, 100.0)):
        for i in range(6):
            names.append(f"d{family}_{i}")
            feats.append([centre + rng.normal(scale=0.1 * (centre + 1)), rng.normal(), np.nan if i == 0 else 1.0])
            row = rng.uniform(0.5, 0.6, size=4)
            row[family] = 0.9
            scores.append(row)
    return KnowledgeBase(names, ["c0", "c1", "c2", "c3"], np.array(scores), ["size", "noise", "mostly_one"],
                         np.array(feats))


def test_knn_returns_the_nearest_data_sets_best_configuration():
    kb = clustered_kb()
    for mode in ("mean", "best", "portfolio"):
        rec = KNNRecommender(k=3, mode=mode).fit(kb)
        for family, centre in enumerate((0.0, 10.0, 100.0)):
            ranked = rec.rank(np.array([centre, 0.0, 1.0]))
            assert ranked[0][0] == family, (mode, family, ranked)
            assert ranked[0][1] == pytest.approx(0.9)  # predicted: the neighbours' mean score
            assert sorted(c for c, _ in ranked) == [0, 1, 2, 3]  # a full order, no repeats


def test_knn_neighbours_are_the_cluster():
    rec = KNNRecommender(k=6).fit(clustered_kb())
    idx, dist = rec.neighbours(np.array([10.0, 0.0, np.nan]), 6)  # a missing value takes the median
    assert {rec.kb_.datasets[i][:2] for i in idx} == {"d1"}
    assert np.all(np.diff(dist) >= 0)


def test_surrogate_and_average_rank():
    kb = clustered_kb()
    sur = SurrogateRecommender(max_iter=50).fit(kb)
    assert sur.rank(np.array([100.0, 0.0, 1.0]))[0][0] == 2
    default = AverageRankRecommender().fit(kb)
    order = [c for c, _ in default.rank(None)]
    assert order[-1] == 3  # never the best anywhere: last on average rank


def test_regret_portfolio_picks_the_cluster_best_first():
    kb = clustered_kb()
    rec = RegretPortfolioRecommender(n_estimators=100).fit(kb)
    assert np.isfinite(rec.residuals_).all()
    for family, centre in enumerate((0.0, 10.0, 100.0)):
        ranked = rec.rank(np.array([centre, 0.0, 1.0]))
        assert ranked[0][0] == family, (family, ranked)
        assert sorted(c for c, _ in ranked) == [0, 1, 2, 3]
        # neighbours' best level (0.9) + a predicted regret, shrunk towards the other clusters' on 17 rows
        assert 0.6 < ranked[0][1] <= 0.9 + 1e-9


def test_greedy_best_of_n_hedges_across_scenarios():
    # config 0 is best on average (mean 0.5 vs 0.45); the next pick covers the scenario 0 serves badly
    values = np.array([[1.0, 0.0, 0.9], [0.0, 0.9, 0.0]])
    assert greedy_best_of_n(values) == [0, 1, 2]


def test_greedy_portfolio_covers_complementary_data_sets():
    from quickstudy.automl.recommend import greedy_portfolio

    norm = np.array([[1.0, 0.0, 0.6], [1.0, 0.0, 0.6], [0.0, 1.0, 0.6]])
    # config 0 has the best mean (0.67 vs 0.6); next, config 1 completes the cover (mean max 1.0)
    assert greedy_portfolio(norm) == [0, 1, 2]


def test_scaler_and_normalized_scores():
    m = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan], [2.0, 5.0, 1.0]])
    scaler = MetaFeatureScaler().fit(m)
    assert scaler.keep_.tolist() == [True, False, False]  # constant and mostly-missing columns dropped
    t = scaler.transform(m)
    assert t.min() == 0.0 and t.max() == 1.0
    with pytest.raises(ValueError, match="fit on 3"):
        scaler.transform(np.zeros(2))
    n = normalized_scores(np.array([[0.5, 0.7, 0.6], [0.4, 0.4, 0.4]]))
    assert n.tolist() == [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        KNNRecommender(k=0)
    with pytest.raises(ValueError, match="mode must be"):
        KNNRecommender(mode="median")
