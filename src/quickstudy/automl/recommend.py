"""Recommenders: from a new data set's meta-features to a ranked list of portfolio configurations.

All share one interface: ``fit(kb)`` on a :class:`~quickstudy.automl.knowledge.KnowledgeBase`, then
``rank(meta) -> [(configuration index, predicted score), ...]`` best first, for a meta-feature vector
aligned with ``kb.feature_names`` (NaN where a measure is missing). A warm-started search evaluates
the configurations in that order.

Meta-features are first made comparable (:class:`MetaFeatureScaler`): columns missing on more than
half of the data sets or constant are dropped, each value is passed through ``sign(x) log(1 + |x|)``
(counts and ratios span orders of magnitude), missing values take the training median, and each
column is scaled to [0, 1] over the training data sets.

* :class:`KNNRecommender` (Feurer et al. 2015, "Initializing Bayesian hyperparameter optimization via
  meta-learning", AAAI; the warm start of auto-sklearn 1): L1 distance between scaled meta-features;
  ``mode="best"`` proposes the best configuration of the nearest data set, then of the second
  nearest, ... (skipping repeats; then the second-best of each, ...); ``mode="mean"`` orders by the
  mean over the ``k`` nearest data sets of the *normalised* score
  ``(s - min_d) / (max_d - min_d)`` (0 = that data set's worst configuration, 1 = its best).
  ``mode="portfolio"`` orders the neighbours' configurations with :func:`greedy_portfolio`, so that
  the first ``n`` together cover the neighbours best (what matters after ``n`` evaluations is the
  best of them, not each one's average).
  Predicted score: the mean raw score of the configuration on the ``k`` neighbours.
* :class:`SurrogateRecommender`: a gradient-boosted tree regressor (scikit-learn's histogram GBM, 200
  rounds of 15-leaf trees, learning rate 0.05) on ``[scaled meta-features, one-hot
  configuration]`` predicting the configuration's *lift* ``s - mean_d`` over its data set's mean score
  (the ranking within a data set is what a warm start needs; the data set's level is dropped from the
  target, so the trees spend their splits on configuration x task interactions). Predicted score:
  lift + the mean score level of the ``k`` nearest data sets.
* :class:`RegretPortfolioRecommender`: per-configuration regression of the *regret*
  ``s - max_d`` (one multi-output extremely randomized trees model, Geurts et al. 2006, Machine
  Learning 63; regression per algorithm as in SATzilla, Xu et al. 2008, JAIR 32), ordered by
  :func:`greedy_best_of_n` over *scenarios* for the new data set: its predicted regret vector plus each
  training data set's out-of-bag residual vector, so that the first ``n`` together minimise the expected
  regret of the best of them under the model's own error distribution (the first pick is the smallest
  predicted regret, up to the mean residual). Predicted score: predicted regret + the mean best score
  of the ``k`` nearest data sets. Settings fixed a priori (300 trees, 3 rows per leaf, 30% of the
  features per split), not tuned on the leave-one-out results.
* :class:`AverageRankRecommender`: the same order for every data set, by average rank over the
  training data sets; its first entry is the *single best default* configuration.

The registry of names (``quickstudy recommend --method``) is :mod:`quickstudy.automl.recommenders`; its
``"scenario-search"`` is :class:`quickstudy.automl.warm_search.ScenarioSearch`:
the regret-portfolio prior used as a sequential search that re-weights its scenarios by the scores it
observes. Every recommender has ``run(meta, evaluate, budget)``; for the static ones it evaluates the
first ``budget`` entries of :meth:`rank`.
"""

from __future__ import annotations

import numpy as np

from .knowledge import KnowledgeBase

__all__ = ["MetaFeatureScaler", "KNNRecommender", "SurrogateRecommender", "AverageRankRecommender",
           "StaticPortfolioRecommender", "RegretPortfolioRecommender", "greedy_portfolio", "greedy_best_of_n",
           "normalized_scores"]


def normalized_scores(scores: np.ndarray) -> np.ndarray:
    """Per data set (row): ``(s - min) / (max - min)``; a row with all scores equal becomes 1."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    return np.where(span > 0, (scores - low) / np.where(span > 0, span, 1.0), 1.0)


class MetaFeatureScaler:
    """Drop mostly-missing or constant columns, signed log, median imputation, min-max to [0, 1]."""

    def __init__(self, max_missing: float = 0.5):
        self.max_missing = max_missing

    def fit(self, matrix: np.ndarray) -> "MetaFeatureScaler":
        matrix = np.asarray(matrix, dtype=float)
        if matrix.ndim != 2 or len(matrix) < 2:
            raise ValueError(f"need a [data sets, features] matrix with at least 2 rows, got shape {matrix.shape}")
        t = self._transform_raw(matrix)
        missing = np.isnan(t).mean(0)
        with np.errstate(all="ignore"):
            median = np.nanmedian(np.where(missing[None] < 1.0, t, 0.0), axis=0)
        filled = np.where(np.isnan(t), median, t)
        low, high = filled.min(0), filled.max(0)
        self.keep_ = (missing <= self.max_missing) & (high > low)
        if not self.keep_.any():
            raise ValueError("no usable meta-feature: every column is mostly missing or constant")
        self.median_, self.low_, self.span_ = median[self.keep_], low[self.keep_], (high - low)[self.keep_]
        return self

    @staticmethod
    def _transform_raw(matrix: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            t = np.sign(matrix) * np.log1p(np.abs(matrix))
        return np.where(np.isfinite(t), t, np.nan)

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
        if matrix.shape[1] != len(self.keep_):
            raise ValueError(f"meta-feature vector has {matrix.shape[1]} entries, the scaler was fit on "
                             f"{len(self.keep_)}")
        t = self._transform_raw(matrix)[:, self.keep_]
        t = np.where(np.isnan(t), self.median_, t)
        return (t - self.low_) / self.span_


def greedy_portfolio(norm: np.ndarray) -> list[int]:
    """Order the configurations (columns) of normalised scores ``norm`` [data sets, configurations] so that
    each prefix is a good *set* to try: step ``t`` adds the configuration that most raises the mean over
    data sets of the best normalised score so far (ties, e.g. once every data set is covered, go to the
    higher mean normalised score). The first pick is the best on average; later picks cover the data
    sets the earlier ones serve badly. Greedy maximisation of this monotone submodular coverage is
    within (1 - 1/e) of the best set of each size (Nemhauser et al. 1978)."""
    n_d, n_c = norm.shape
    current = np.zeros(n_d)
    remaining = list(range(n_c))
    mean = norm.mean(0)
    order: list[int] = []
    while remaining:
        gains = np.array([np.maximum(current, norm[:, c]).mean() for c in remaining])
        best_gain = gains.max()
        ties = [c for c, g in zip(remaining, gains) if g >= best_gain - 1e-12]
        pick = max(ties, key=lambda c: (mean[c], -c))
        order.append(pick)
        current = np.maximum(current, norm[:, pick])
        remaining.remove(pick)
    return order


def greedy_best_of_n(values: np.ndarray) -> list[int]:
    """Order the configurations (columns) of ``values`` [scenarios, configurations] (higher is better) so
    that step ``t`` adds the configuration that most raises the mean over scenarios of the best value so
    far: a greedy maximisation of the expected best of the first ``n`` (first pick: the best mean)."""
    n_s, n_c = values.shape
    current = np.full(n_s, -np.inf)
    remaining = list(range(n_c))
    order: list[int] = []
    while remaining:
        gains = [np.maximum(current, values[:, c]).mean() for c in remaining]
        pick = remaining[int(np.argmax(gains))]  # ties: the lower index
        order.append(pick)
        current = np.maximum(current, values[:, pick])
        remaining.remove(pick)
    return order


class _Base:
    name = "base"

    def fit(self, kb: KnowledgeBase) -> "_Base":
        self.kb_ = kb
        self.scores_ = kb.filled_scores()
        self.scaler_ = MetaFeatureScaler().fit(kb.metafeatures)
        self.train_x_ = self.scaler_.transform(kb.metafeatures)
        return self

    def neighbours(self, meta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the ``k`` nearest training data sets (L1 on scaled meta-features) and their distances."""
        x = self.scaler_.transform(meta)[0]
        dist = np.abs(self.train_x_ - x).sum(1)
        order = np.argsort(dist, kind="stable")[:k]
        return order, dist[order]

    def rank(self, meta: np.ndarray) -> list[tuple[int, float]]:
        raise NotImplementedError

    def run(self, meta: np.ndarray, evaluate, budget: int) -> list[tuple[int, float]]:
        """A static warm start as a search: evaluate the first ``budget`` configurations of :meth:`rank`
        (``evaluate(index) -> score``); ``[(index, score)]`` in evaluation order."""
        if budget < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        return [(c, float(evaluate(c))) for c, _ in self.rank(meta)[:budget]]


class KNNRecommender(_Base):
    """k nearest data sets on scaled meta-features (see the module docstring for ``mode``)."""

    def __init__(self, k: int = 10, mode: str = "mean"):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if mode not in ("mean", "best", "portfolio"):
            raise ValueError(f"mode must be 'mean', 'best' or 'portfolio', got {mode!r}")
        self.k, self.mode = k, mode
        self.name = f"knn-{mode}"

    def rank(self, meta: np.ndarray) -> list[tuple[int, float]]:
        idx, _ = self.neighbours(meta, self.k)
        raw = self.scores_[idx]
        predicted = raw.mean(0)
        if self.mode == "mean":
            order = np.lexsort((-predicted, -normalized_scores(raw).mean(0)))
            return [(int(c), float(predicted[c])) for c in order]
        if self.mode == "portfolio":
            return [(c, float(predicted[c])) for c in greedy_portfolio(normalized_scores(raw))]
        ranked: list[int] = []
        per_neighbour = [np.argsort(-row, kind="stable") for row in raw]
        for depth in range(raw.shape[1]):
            for order in per_neighbour:
                c = int(order[depth])
                if c not in ranked:
                    ranked.append(c)
        return [(c, float(predicted[c])) for c in ranked]


class SurrogateRecommender(_Base):
    """Gradient boosting on ``[meta-features, one-hot configuration] -> lift over the data set's mean``."""

    name = "surrogate"

    def __init__(self, max_iter: int = 200, k: int = 10, seed: int = 0):
        self.max_iter, self.k, self.seed = max_iter, k, seed

    def _design(self, x: np.ndarray) -> np.ndarray:
        n_cfg = self.scores_.shape[1]
        rows = np.repeat(x, n_cfg, axis=0)
        onehot = np.tile(np.eye(n_cfg), (len(x), 1))
        return np.hstack([rows, onehot])

    def fit(self, kb: KnowledgeBase) -> "SurrogateRecommender":
        from sklearn.ensemble import HistGradientBoostingRegressor

        super().fit(kb)
        lift = self.scores_ - self.scores_.mean(1, keepdims=True)
        design = self._design(self.train_x_)
        leaf = max(2, min(20, len(design) // 100))  # 20 on the PMLB table (5,000+ rows), less on tiny ones
        self.model_ = HistGradientBoostingRegressor(max_iter=self.max_iter, learning_rate=0.05, max_leaf_nodes=15,
                                                    min_samples_leaf=leaf, early_stopping=False,
                                                    random_state=self.seed)
        self.model_.fit(design, lift.reshape(-1))
        return self

    def rank(self, meta: np.ndarray) -> list[tuple[int, float]]:
        x = self.scaler_.transform(meta)
        lift = self.model_.predict(self._design(x))
        idx, _ = self.neighbours(meta, self.k)
        level = float(self.scores_[idx].mean())
        order = np.argsort(-lift, kind="stable")
        return [(int(c), float(np.clip(level + lift[c], 0.0, 1.0))) for c in order]


class RegretPortfolioRecommender(_Base):
    """Extra-trees regression of each configuration's regret, ordered by expected best-of-n over the
    model's out-of-bag errors (see the module docstring)."""

    name = "regret-portfolio"

    def __init__(self, n_estimators: int = 300, k: int = 10, seed: int = 0):
        self.n_estimators, self.k, self.seed = n_estimators, k, seed

    def fit(self, kb: KnowledgeBase) -> "RegretPortfolioRecommender":
        from sklearn.ensemble import ExtraTreesRegressor

        super().fit(kb)
        regret = self.scores_ - self.scores_.max(1, keepdims=True)  # <= 0, 0 = the data set's best
        self.model_ = ExtraTreesRegressor(n_estimators=self.n_estimators, min_samples_leaf=3, max_features=0.3,
                                          bootstrap=True, oob_score=True, random_state=self.seed, n_jobs=1)
        self.model_.fit(self.train_x_, regret)
        # a row that no tree left out (only on tiny tables) contributes no error rather than a NaN
        self.residuals_ = np.nan_to_num(regret - self.model_.oob_prediction_)
        return self

    def rank(self, meta: np.ndarray) -> list[tuple[int, float]]:
        predicted = self.model_.predict(self.scaler_.transform(meta))[0]
        order = greedy_best_of_n(predicted[None] + self.residuals_)
        idx, _ = self.neighbours(meta, self.k)
        level = float(self.scores_[idx].max(1).mean())
        return [(c, float(np.clip(level + predicted[c], 0.0, 1.0))) for c in order]


class AverageRankRecommender(_Base):
    """The training data sets' average-rank order (the first entry is the single best default)."""

    name = "best-default"

    def fit(self, kb: KnowledgeBase) -> "AverageRankRecommender":
        from scipy.stats import rankdata

        super().fit(kb)
        ranks = rankdata(-self.scores_, axis=1)  # 1 = best on that data set, ties averaged
        self.mean_rank_ = ranks.mean(0)
        self.order_ = np.lexsort((-self.scores_.mean(0), self.mean_rank_))
        return self

    def rank(self, meta: np.ndarray | None = None) -> list[tuple[int, float]]:
        mean = self.scores_.mean(0)
        return [(int(c), float(mean[c])) for c in self.order_]


class StaticPortfolioRecommender(_Base):
    """The same order for every data set: :func:`greedy_portfolio` over all training data sets (a static
    portfolio, as in auto-sklearn 2.0; Feurer et al. 2022, JMLR 23(261)) -- a stronger baseline than the
    average-rank order, with no meta-features."""

    name = "static-portfolio"

    def fit(self, kb: KnowledgeBase) -> "StaticPortfolioRecommender":
        super().fit(kb)
        self.order_ = greedy_portfolio(normalized_scores(self.scores_))
        return self

    def rank(self, meta: np.ndarray | None = None) -> list[tuple[int, float]]:
        mean = self.scores_.mean(0)
        return [(c, float(mean[c])) for c in self.order_]
