"""The sequential warm-started search: its posterior by hand, its first picks equal the prior's, it
adapts to what it observes, and the leave-one-out protocol feeds it the held-out data set's scores."""

import math

import numpy as np
import pytest

from quickstudy.automl.evaluate import format_head_to_head, leave_one_out, plot_head_to_head, summarize
from quickstudy.automl.knowledge import DATA_DIR, KnowledgeBase
from quickstudy.automl.recommend import AverageRankRecommender, greedy_best_of_n
from quickstudy.automl.recommenders import make_recommender
from quickstudy.automl.warm_search import ScenarioSearch, run_search_order


def bare_search(noise: float) -> ScenarioSearch:
    """A ScenarioSearch used only through propose_from/posterior, which need just the noise scale."""
    search = ScenarioSearch(noise=noise)
    search.noise_ = noise
    return search


def test_posterior_by_hand():
    search = bare_search(0.1)
    scenarios = np.array([[0.0, -0.2, -0.4],
                          [0.0, -0.4, -0.2]])
    weights, level = search.posterior(scenarios, {})
    assert np.allclose(weights, 0.5) and np.allclose(level, 0.0)
    # one observation: the level absorbs it, the scenarios stay equally likely
    weights, level = search.posterior(scenarios, {0: 0.8})
    assert np.allclose(weights, 0.5) and np.allclose(level, 0.8)
    # two: config 1 scored 0.2 below config 0, as scenario 0 says; scenario 1 says 0.4 below
    weights, level = search.posterior(scenarios, {0: 0.8, 1: 0.6})
    # scenario 1: gaps (0.8, 1.0), level 0.9, squared residuals 0.01 + 0.01; scenario 0 fits exactly
    expected = np.array([1.0, math.exp(-0.5 * 0.02 / 0.01)])
    assert np.allclose(weights, expected / expected.sum())
    assert np.allclose(level, [0.8, 0.9])


def test_first_two_picks_are_the_prior_greedy_order():
    rng = np.random.default_rng(0)
    scenarios = -rng.uniform(0.0, 0.3, size=(20, 8))
    truth = 0.7 + scenarios[3]
    picks = [c for c, _ in run_search_order(lambda seen: bare_search(0.05).propose_from(scenarios, seen),
                                            lambda c: truth[c], budget=2)]
    assert picks == greedy_best_of_n(scenarios)[:2]


def test_search_follows_the_scenarios_that_explain_its_observations():
    # two kinds of data sets: kind A (most scenarios) wants config 2, kind B wants config 3; both agree
    # that config 0 is a safe first pick; config 1 separates them (A: close to 0, B: far below)
    kind_a = np.array([-0.05, -0.06, 0.0, -0.30])
    kind_b = np.array([-0.05, -0.30, -0.30, 0.0])
    scenarios = np.array([kind_a] * 7 + [kind_b] * 3)
    search = bare_search(0.05)
    assert search.propose_from(scenarios, {}) == 0
    # the same two configurations tried, two outcomes: a static order cannot tell them apart, the search can
    # config 1 far below config 0, as on kind B: try kind B's best
    assert search.propose_from(scenarios, {0: 0.75, 1: 0.50}) == 3
    # config 1 close to config 0, as on kind A: try kind A's best
    assert search.propose_from(scenarios, {0: 0.75, 1: 0.74}) == 2


def test_run_search_order_errors():
    with pytest.raises(ValueError, match="budget"):
        run_search_order(lambda seen: 0, lambda c: 0.0, 0)
    with pytest.raises(RuntimeError, match="twice"):
        run_search_order(lambda seen: 0, lambda c: 0.0, 2)
    with pytest.raises(ValueError, match="noise"):
        ScenarioSearch(noise=0.0)


class _Probe:
    """A sequential recommender that records the scores it is shown and picks configurations in reverse."""

    seen: list = []

    def fit(self, kb):
        self.n = kb.scores.shape[1]
        return self

    def run(self, meta, evaluate, budget):
        out = [(c, evaluate(c)) for c in reversed(range(self.n))][:budget]
        _Probe.seen.append([s for _, s in out])
        return out


def test_leave_one_out_runs_searches_on_the_held_out_row():
    scores = np.array([[0.1, 0.2, 0.9], [0.3, 0.8, 0.4], [0.7, 0.6, 0.5], [0.2, 0.3, 0.4]])
    kb = KnowledgeBase([f"d{i}" for i in range(4)], ["a", "b", "c"], scores, ["f"], np.arange(4.0)[:, None])
    _Probe.seen = []
    result = leave_one_out(kb, {"probe": _Probe, "default": AverageRankRecommender}, budgets=[1, 2], progress=False)
    assert [row for row in _Probe.seen] == [list(r[::-1][:2]) for r in scores]
    assert np.allclose(result.best["probe"][:, 0], scores[:, 2])
    assert np.allclose(result.best["probe"][:, 1], scores[:, 1:].max(1))
    assert np.allclose(result.worst, scores.min(1))


def test_scenario_search_through_the_registry_on_a_tiny_knowledge_base():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(12, 3))
    scores = rng.uniform(0.4, 0.9, size=(12, 6))
    kb = KnowledgeBase([f"d{i}" for i in range(12)], [f"c{j}" for j in range(6)], scores, ["a", "b", "c"], feats)
    search = make_recommender("scenario-search")
    search.n_estimators = 20
    search.fit(kb)
    assert search.noise_ > 0
    evaluated = search.run(feats[0], lambda c: scores[0, c], budget=6)
    assert sorted(c for c, _ in evaluated) == list(range(6))  # every configuration once
    assert [s for _, s in evaluated] == [scores[0, c] for c, _ in evaluated]
    assert [c for c, _ in search.rank(feats[0])] == [c for c, _ in search.prior_.rank(feats[0])]


def test_normalized_regret_and_head_to_head_by_hand():
    oracle, worst = np.array([0.9, 0.8]), np.array([0.5, 0.0])
    best = {"warm": np.array([[0.9], [0.6]]),          # regrets 0, 0.2 -> normalised 0, 0.25
            "random": np.array([[0.7], [0.6]]),        # 0.2, 0.2 -> 0.5, 0.25
            "best-default": np.array([[0.8], [0.4]]),  # 0.1, 0.4 -> 0.25, 0.5
            "other": np.array([[0.5], [0.2]])}
    row = summarize(best, oracle, [1], worst=worst)["by_budget"]["1"]
    assert row["warm"]["normalized_regret"][0] == pytest.approx(0.125)
    assert row["best-default"]["normalized_regret"][0] == pytest.approx(0.375)
    # ranks among warm, random, best-default only: data set 0: 1, 3, 2; data set 1: 1.5, 1.5, 3
    h = row["warm"]["head_to_head"]
    assert h["warm"][0] == pytest.approx(1.25) and h["random"][0] == pytest.approx(2.25)
    assert h["best-default"][0] == pytest.approx(2.5)
    assert "head_to_head" not in row["random"]
    table = format_head_to_head(summarize(best, oracle, [1], worst=worst))
    assert "| 1 | warm | 1.25 ±" in table and "| 1 | other |" in table


def test_head_to_head_plot(tmp_path):
    oracle, worst = np.array([0.9, 0.8, 0.7]), np.array([0.5, 0.0, 0.1])
    best = {"warm": np.array([[0.9, 0.9], [0.6, 0.8], [0.6, 0.7]]),
            "random": np.array([[0.7, 0.8], [0.6, 0.7], [0.3, 0.5]]),
            "best-default": np.array([[0.8, 0.8], [0.4, 0.8], [0.5, 0.6]])}
    summary = summarize(best, oracle, [1, 3], worst=worst)
    path = plot_head_to_head(summary, "warm", tmp_path / "goal.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="head-to-head"):
        plot_head_to_head(summary, "random", tmp_path / "no.png")


needs_kb = pytest.mark.skipif(not (DATA_DIR / "scores.csv").is_file(), reason="no knowledge base")


@needs_kb
def test_crossval_reproduces_the_knowledge_base_cell():
    from quickstudy.automl.crossval import cv_folds, score_configuration
    from quickstudy.automl.datasets import load_pmlb, pmlb_root, prepare_classification
    from quickstudy.automl.knowledge import load_knowledge_base

    try:
        X, y, _ = load_pmlb("iris", pmlb_root())
    except FileNotFoundError:
        pytest.skip("PMLB data not found")
    kb = load_knowledge_base()
    X, y = prepare_classification(X, y, max_rows=1000, min_per_class=3, seed=0)
    for name in ("logreg:C=1.0", "knn:n_neighbors=7,weights=uniform"):
        score, seconds, note = score_configuration(name, X, y, cv_folds(y), timeout=60)
        assert note is None and seconds >= 0
        cell = kb.scores[kb.datasets.index("iris"), kb.configurations.index(name)]
        assert score == pytest.approx(cell, abs=5e-5)  # the table keeps 4 decimals
