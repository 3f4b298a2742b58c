"""A warm-started *sequential* search over the portfolio: prior from meta-features, posterior from scores.

The static recommenders (:mod:`quickstudy.automl.recommend`) fix the whole order before anything is
evaluated. A search learns while it runs: after trying a few configurations on the new data set it has
their scores, and those say much about the rest (a data set where every linear model sits at chance
wants trees or neighbours). :class:`ScenarioSearch` keeps the meta-feature prior of
:class:`~quickstudy.automl.recommend.RegretPortfolioRecommender` and conditions it on what it observes.

**Scenarios.** The prior model predicts the new data set's regret vector ``p`` (configuration c's score
minus the data set's best). Each training data set ``d`` contributes one scenario for the new data set,
``v_d = p + e_d``, its out-of-bag residual ``e_d`` added to the prediction: "the new data set deviates
from the model the way ``d`` did". Under scenario ``d`` the new data set's scores are ``M + v_dc`` for an
unknown level ``M``.

**Posterior.** After the configurations ``S`` were scored ``o_c``, the level is profiled out,
``M_d = mean_{c in S}(o_c - v_dc)``, and the scenario is weighted by a Gaussian likelihood of what is left:

    w_d  ∝  exp( -sum_{c in S} (o_c - v_dc - M_d)^2 / (2 sigma^2) ).

Truth and scenario differ by ``e_new - e_d``, two residuals of the same model, so ``sigma^2 = 2 var(e)``
(the residuals' variance about each data set's mean residual): fixed by the training data, not tuned.
One observation carries no information about the scenarios (the level absorbs it).

**Acquisition.** The next configuration maximises the expected improvement over the best score so far,
``sum_d w_d max(0, M_d + v_dc - max_{c' in S} o_c')``; the first is the best mean scenario value. With
uniform weights this is exactly the greedy expected best-of-n order of the prior recommender
(:func:`~quickstudy.automl.recommend.greedy_best_of_n`), so the first two picks are the prior's and every
difference after them comes from the observed scores. When no scenario expects an improvement the
search takes the best weighted mean prediction.

The scenario weighting is the sequential-model-based idea of transfer in hyperparameter search,
weighting earlier tasks by how well they explain the new task's observations (Wistuba, Schilling &
Schmidt-Thieme 2018, "Scalable Gaussian process-based transfer surrogates for hyperparameter
optimization", Machine Learning 107; Feurer, Letham & Bakshy 2018, "Scalable meta-learning for Bayesian
optimization", RGPE) and of active testing (Leite, Brazdil & Vanschoren 2012, MLDM), here over a fixed
portfolio with exact look-ups of past scores.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np

from .knowledge import KnowledgeBase
from .recommend import RegretPortfolioRecommender

__all__ = ["ScenarioSearch", "run_search_order"]


def run_search_order(propose: Callable[[Mapping[int, float]], int], evaluate: Callable[[int], float],
                     budget: int) -> list[tuple[int, float]]:
    """Evaluate ``budget`` configurations, each chosen by ``propose(observed so far)``; ``[(index, score)]``."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    observed: dict[int, float] = {}
    for _ in range(budget):
        c = int(propose(dict(observed)))
        if c in observed:
            raise RuntimeError(f"the search proposed configuration {c} twice")
        observed[c] = float(evaluate(c))
    return list(observed.items())


class ScenarioSearch:
    """Sequential warm-started search: regret-portfolio prior, scenarios re-weighted by observed scores."""

    name = "scenario-search"

    def __init__(self, n_estimators: int = 300, seed: int = 0, noise: float | None = None):
        if noise is not None and not noise > 0:
            raise ValueError(f"noise must be positive, got {noise}")
        self.n_estimators, self.seed, self.noise = n_estimators, seed, noise

    def fit(self, kb: KnowledgeBase) -> "ScenarioSearch":
        self.prior_ = RegretPortfolioRecommender(n_estimators=self.n_estimators, seed=self.seed).fit(kb)
        residuals = self.prior_.residuals_
        centered = residuals - residuals.mean(1, keepdims=True)
        implied = math.sqrt(2.0 * float(np.mean(centered ** 2)))  # truth - scenario = e_new - e_d
        self.noise_ = self.noise if self.noise is not None else max(implied, 1e-6)
        return self

    def scenarios(self, meta: np.ndarray) -> np.ndarray:
        """[training data sets, configurations]: the predicted regret vector plus each out-of-bag residual."""
        predicted = self.prior_.model_.predict(self.prior_.scaler_.transform(meta))[0]
        return predicted[None] + self.prior_.residuals_

    def posterior(self, scenarios: np.ndarray, observed: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
        """Scenario weights (sum 1) and each scenario's profiled level ``M_d`` given ``{index: score}``."""
        n_s = len(scenarios)
        if not observed:
            return np.full(n_s, 1.0 / n_s), np.zeros(n_s)
        tested = np.fromiter(observed.keys(), dtype=int)
        scores = np.fromiter(observed.values(), dtype=float)
        gap = scores[None] - scenarios[:, tested]
        level = gap.mean(1)
        log_w = -0.5 * ((gap - level[:, None]) ** 2).sum(1) / self.noise_ ** 2
        weights = np.exp(log_w - log_w.max())
        return weights / weights.sum(), level

    def propose_from(self, scenarios: np.ndarray, observed: Mapping[int, float]) -> int:
        """The next configuration to evaluate, given the scenarios and the scores observed so far."""
        n_c = scenarios.shape[1]
        untested = np.array([c for c in range(n_c) if c not in observed])
        if len(untested) == 0:
            raise ValueError("every configuration of the portfolio has been evaluated")
        weights, level = self.posterior(scenarios, observed)
        predicted = level[:, None] + scenarios[:, untested]  # [scenarios, untested] in the data set's own scale
        if observed:
            improvement = weights @ np.maximum(predicted - max(observed.values()), 0.0)
            if improvement.max() > 0:
                return int(untested[int(np.argmax(improvement))])  # ties: the lower index
        return int(untested[int(np.argmax(weights @ predicted))])

    def run(self, meta: np.ndarray, evaluate: Callable[[int], float], budget: int) -> list[tuple[int, float]]:
        """Search ``budget`` configurations for the data set with meta-features ``meta``; ``evaluate(index)``
        scores one configuration on it (e.g. cross-validated balanced accuracy). Returns ``[(index, score)]``
        in evaluation order."""
        scenarios = self.scenarios(meta)
        return run_search_order(lambda observed: self.propose_from(scenarios, observed), evaluate, budget)

    def rank(self, meta: np.ndarray) -> list[tuple[int, float]]:
        """Before any evaluation the search has only its prior: the regret-portfolio order."""
        return self.prior_.rank(meta)

    def neighbours(self, meta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.prior_.neighbours(meta, k)
