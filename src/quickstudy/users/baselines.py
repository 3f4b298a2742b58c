r"""The non-meta baselines a recommender team tries first, fitted on the training ratings only.

Each baseline has ``fit(train)`` (a :class:`TrainingRatings`) and
``predict(support_items, support_ratings, query_items) -> ratings``: it sees the new user's K support
ratings and predicts the query items. With :math:`\mu` the training mean and :math:`S` the support set:

``global``  :math:`\hat r = \mu`.
``item``    the item's mean training rating (:math:`\mu` for an item never rated in training).
``user``    the mean of the user's support ratings.
``mf``      matrix factorisation with biases, :math:`\hat r_{ui} = \mu + b_u + b_i + p_u^\top q_i`, fitted by
            alternating least squares (Koren, Bell & Volinsky 2009; Hu, Koren & Volinsky 2008 for ALS).
            A new user's :math:`w = [p_u; b_u]` is folded in in closed form with the item side fixed:
            :math:`w = (X^\top X + \Lambda)^{-1} X^\top y`, rows :math:`X_s = [q_s; 1]`,
            :math:`y_s = r_s - \mu - b_s`, :math:`\Lambda = \mathrm{diag}(\lambda_f I, \lambda_b)`
            (ridge regression on the support set).
``knn``     item-based k-NN on baseline residuals (Sarwar et al. 2001; Koren 2010, eq. 3):
            :math:`\hat r_{ui} = b_{ui} + \sum_{j \in S} s_{ij} (r_{uj} - b_{uj}) / (\sum_{j \in S} |s_{ij}| + \delta)`,
            :math:`b_{ui} = \mu + b_u + b_i`, :math:`s_{ij}` the cosine of the items' training residuals,
            shrunk by :math:`n_{ij} / (n_{ij} + h)` (:math:`n_{ij}` users who rated both).

Hyperparameters are chosen on the meta-validation users (bench/users_baselines.py), never on test users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_int, check_number

__all__ = ["TrainingRatings", "GlobalMean", "ItemMean", "UserMean", "MatrixFactorization", "ItemKNN",
           "BASELINES", "build_baseline", "fold_in"]


@dataclass(frozen=True)
class TrainingRatings:
    """The ratings training may read: user codes ``0..users-1``, catalogue rows, values (float64)."""

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    users: int
    items: int

    @property
    def mean(self) -> float:
        return float(self.rating.mean())


def _item_bias(train: TrainingRatings, shrink: float) -> np.ndarray:
    count = np.bincount(train.item, minlength=train.items)
    total = np.bincount(train.item, weights=train.rating - train.mean, minlength=train.items)
    return np.divide(total, count + shrink, out=np.zeros(train.items), where=count + shrink > 0)


def _user_bias(residual: np.ndarray, shrink: float) -> float:
    """``sum(residual) / (n + shrink)`` of a user's baseline residuals."""
    return float(residual.sum() / (len(residual) + shrink))


class GlobalMean:
    """Predicts the mean of all training ratings."""

    name = "global"

    def fit(self, train: TrainingRatings) -> "GlobalMean":
        self.mu = train.mean
        return self

    def predict(self, support_items, support_ratings, query_items) -> np.ndarray:
        return np.full(len(query_items), self.mu)


class ItemMean:
    """Predicts each item's mean training rating (the global mean for an item never rated in training)."""

    name = "item"

    def fit(self, train: TrainingRatings) -> "ItemMean":
        count = np.bincount(train.item, minlength=train.items)
        total = np.bincount(train.item, weights=train.rating, minlength=train.items)
        self.means = np.where(count > 0, total / np.maximum(count, 1), train.mean)
        return self

    def predict(self, support_items, support_ratings, query_items) -> np.ndarray:
        return self.means[query_items]


class UserMean:
    """Predicts the mean of the new user's support ratings for every item."""

    name = "user"

    def fit(self, train: TrainingRatings) -> "UserMean":
        return self

    def predict(self, support_items, support_ratings, query_items) -> np.ndarray:
        return np.full(len(query_items), float(np.mean(support_ratings)))


def _ridge_rows(x: np.ndarray, y: np.ndarray, group: np.ndarray, groups: int, penalty: np.ndarray) -> np.ndarray:
    """For each group g: ``argmin_w sum_{r in g} (y_r - x_r w)^2 + w^T diag(penalty) w`` (rows of x grouped by g),
    solved in one batched call. Groups without rows get w = 0."""
    dim = x.shape[1]
    columns = np.ascontiguousarray(x.T)
    gram = np.empty((dim, dim, groups))
    for a in range(dim):  # X^T X of every group at once, one entry (pair of columns) at a time
        for b in range(a, dim):
            gram[a, b] = gram[b, a] = np.bincount(group, weights=columns[a] * columns[b], minlength=groups)
    gram = gram.transpose(2, 0, 1)
    rhs = np.stack([np.bincount(group, weights=columns[a] * y, minlength=groups) for a in range(dim)], 1)
    gram += np.diag(penalty)
    return np.linalg.solve(gram, rhs[..., None])[..., 0]


def fold_in(item_factors: np.ndarray, residuals: np.ndarray, reg: float, bias_reg: float) -> tuple[np.ndarray, float]:
    """A new user's ``(p_u, b_u)`` from the support items' factors ``[K, d]`` and residuals ``r - mu - b_i``:
    the ridge solution ``(X^T X + diag(reg I, bias_reg))^{-1} X^T y`` with ``X = [q, 1]``."""
    x = np.concatenate([item_factors, np.ones((len(residuals), 1))], 1)
    penalty = np.diag(np.concatenate([np.full(item_factors.shape[1], reg), [bias_reg]]))
    w = np.linalg.solve(x.T @ x + penalty, x.T @ residuals)
    return w[:-1], float(w[-1])


class MatrixFactorization:
    """Biased MF by ALS on the training ratings; a new user folded in on the support set (module docstring)."""

    name = "mf"

    def __init__(self, factors: int = 16, reg: float = 5.0, bias_reg: float = 5.0, fold_in_reg: float = 20.0,
                 fold_in_bias_reg: float = 1.0, iterations: int = 10, seed: int = 0) -> None:
        self.factors = check_int("mf", "factors", factors)
        self.reg = check_number("mf", "reg", reg)
        self.bias_reg = check_number("mf", "bias_reg", bias_reg)
        self.fold_in_reg = check_number("mf", "fold_in_reg", fold_in_reg)
        self.fold_in_bias_reg = check_number("mf", "fold_in_bias_reg", fold_in_bias_reg)
        self.iterations = check_int("mf", "iterations", iterations)
        self.seed = int(seed)

    def fit(self, train: TrainingRatings) -> "MatrixFactorization":
        rng = np.random.default_rng(self.seed)
        d, u, i, r = self.factors, train.user, train.item, train.rating
        self.mu = train.mean
        p = rng.normal(0.0, 0.1, (train.users, d))
        q = rng.normal(0.0, 0.1, (train.items, d))
        bu, bi = np.zeros(train.users), np.zeros(train.items)
        penalty = np.concatenate([np.full(d, self.reg), [self.bias_reg]])
        ones = np.ones((len(r), 1))
        for _ in range(self.iterations):
            w = _ridge_rows(np.concatenate([q[i], ones], 1), r - self.mu - bi[i], u, train.users, penalty)
            p, bu = w[:, :d], w[:, d]
            w = _ridge_rows(np.concatenate([p[u], ones], 1), r - self.mu - bu[u], i, train.items, penalty)
            q, bi = w[:, :d], w[:, d]
        self.item_factors, self.item_bias = q, bi  # items never rated in training: q = 0, b = 0 (ridge of nothing)
        return self

    def predict(self, support_items, support_ratings, query_items) -> np.ndarray:
        residual = np.asarray(support_ratings, dtype=np.float64) - self.mu - self.item_bias[support_items]
        p, b = fold_in(self.item_factors[support_items], residual, self.fold_in_reg, self.fold_in_bias_reg)
        return self.mu + b + self.item_bias[query_items] + self.item_factors[query_items] @ p


class ItemKNN:
    """Item-based k-NN over the support items on baseline residuals (module docstring)."""

    name = "knn"

    def __init__(self, shrink: float = 10.0, damping: float = 1.0, item_shrink: float = 5.0,
                 user_shrink: float = 3.0) -> None:
        self.shrink = check_number("knn", "shrink", shrink, allow_zero=True)
        self.damping = check_number("knn", "damping", damping, allow_zero=True)
        self.item_shrink = check_number("knn", "item_shrink", item_shrink, allow_zero=True)
        self.user_shrink = check_number("knn", "user_shrink", user_shrink, allow_zero=True)

    def fit(self, train: TrainingRatings) -> "ItemKNN":
        self.mu = train.mean
        self.item_bias = _item_bias(train, self.item_shrink)
        first = train.rating - self.mu - self.item_bias[train.item]
        user_bias = np.bincount(train.user, weights=first, minlength=train.users) / (
            np.bincount(train.user, minlength=train.users) + self.user_shrink)
        residual = first - user_bias[train.user]
        order = np.lexsort((train.user, train.item))  # CSR by item
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(train.item, minlength=train.items))])
        self.users_of = train.user[order]
        self.residual = residual[order]
        self.norm = np.sqrt(np.bincount(train.item, weights=residual ** 2, minlength=train.items))
        self.users = train.users
        return self

    def _item_vector(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        values, present = np.zeros(self.users), np.zeros(self.users)
        rows = slice(self.indptr[j], self.indptr[j + 1])
        values[self.users_of[rows]] = self.residual[rows]
        present[self.users_of[rows]] = 1.0
        return values, present

    def similarity(self, query_items: np.ndarray, support_items: np.ndarray) -> np.ndarray:
        """``[Q, K]`` shrunk cosines between query and support items (0 where either was never rated in training)."""
        query_items = np.asarray(query_items)
        starts, stops = self.indptr[query_items], self.indptr[query_items + 1]
        lengths = stops - starts
        segment = np.repeat(np.arange(len(query_items)), lengths)  # the query item of each training rating
        flat = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
        users, residual = self.users_of[flat], self.residual[flat]
        sims = np.zeros((len(query_items), len(support_items)))
        for k, j in enumerate(np.asarray(support_items)):
            values, present = self._item_vector(int(j))
            # float64 even when no query item was rated in training (numpy's bincount then returns int64)
            dots = np.bincount(segment, weights=residual * values[users], minlength=len(query_items)).astype(float)
            common = np.bincount(segment, weights=present[users], minlength=len(query_items)).astype(float)
            denominator = self.norm[query_items] * self.norm[j]
            cosine = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
            sims[:, k] = cosine * common / (common + self.shrink) if self.shrink > 0 else cosine
        return sims

    def predict(self, support_items, support_ratings, query_items) -> np.ndarray:
        support_items, query_items = np.asarray(support_items), np.asarray(query_items)
        residual = np.asarray(support_ratings, dtype=np.float64) - self.mu - self.item_bias[support_items]
        b_u = _user_bias(residual, self.user_shrink)
        sims = self.similarity(query_items, support_items)
        neighbours = (sims * (residual - b_u)).sum(1) / (np.abs(sims).sum(1) + self.damping)
        return self.mu + b_u + self.item_bias[query_items] + neighbours


#: name -> baseline class (config ``eval.baselines`` and ``baselines.<name>`` keyword arguments)
BASELINES: dict[str, type] = {"global": GlobalMean, "item": ItemMean, "user": UserMean, "mf": MatrixFactorization,
                              "knn": ItemKNN}


def build_baseline(name: str, **kwargs):
    if name not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(repr(n) for n in BASELINES)}; got {name!r}")
    return BASELINES[name](**kwargs)
