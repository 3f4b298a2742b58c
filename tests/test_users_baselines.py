"""Baselines against closed forms: fold-in is ridge least squares, ALS fits exact low-rank data, kNN's cosine
matches a dense computation, the means are means."""

import numpy as np
import pytest

from quickstudy.users.baselines import (GlobalMean, ItemKNN, ItemMean, MatrixFactorization, TrainingRatings,
                                        UserMean, _ridge_rows, fold_in)


def test_fold_in_is_the_ridge_least_squares_solution():
    rng = np.random.default_rng(0)
    factors, residuals = rng.normal(size=(5, 3)), rng.normal(size=5)
    reg, bias_reg = 2.0, 0.5
    p, b = fold_in(factors, residuals, reg, bias_reg)
    # min ||X w - y||^2 + w^T diag(reg, reg, reg, bias_reg) w  ==  ordinary least squares on an augmented system
    x = np.concatenate([factors, np.ones((5, 1))], 1)
    augmented = np.concatenate([x, np.diag(np.sqrt([reg, reg, reg, bias_reg]))])
    target = np.concatenate([residuals, np.zeros(4)])
    expected = np.linalg.lstsq(augmented, target, rcond=None)[0]
    np.testing.assert_allclose(np.append(p, b), expected, rtol=1e-10, atol=1e-12)


def test_grouped_ridge_matches_one_solve_per_group():
    rng = np.random.default_rng(1)
    x, y, group = rng.normal(size=(40, 3)), rng.normal(size=40), rng.integers(0, 5, size=40)
    penalty = np.array([1.0, 2.0, 0.5])
    w = _ridge_rows(x, y, group, 6, penalty)
    for g in range(5):
        rows = group == g
        expected = np.linalg.solve(x[rows].T @ x[rows] + np.diag(penalty), x[rows].T @ y[rows])
        np.testing.assert_allclose(w[g], expected, rtol=1e-10)
    assert np.array_equal(w[5], np.zeros(3))  # a group without rows


def dense_ratings(users=30, items=20, seed=0):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(users, 2)), rng.normal(size=(items, 2))
    value = 6.0 + rng.normal(size=(users, 1)) + rng.normal(size=(1, items)) + p @ q.T
    u, i = np.meshgrid(np.arange(users), np.arange(items), indexing="ij")
    return TrainingRatings(u.ravel(), i.ravel(), value.ravel(), users, items), value


def test_als_fits_exact_low_rank_ratings():
    train, value = dense_ratings()
    mf = MatrixFactorization(factors=2, reg=1e-6, bias_reg=1e-6, fold_in_reg=1e-6, fold_in_bias_reg=1e-6,
                             iterations=60).fit(train)
    # a training user folded in again on all its ratings is predicted (almost) exactly
    predicted = mf.predict(np.arange(20), value[3], np.arange(20))
    assert np.abs(predicted - value[3]).max() < 0.05


def test_knn_similarity_matches_a_dense_computation():
    rng = np.random.default_rng(2)
    users, items = 25, 12
    mask = rng.random((users, items)) < 0.5
    u, i = np.nonzero(mask)
    r = rng.integers(0, 11, size=len(u)).astype(float)
    train = TrainingRatings(u, i, r, users, items)
    knn = ItemKNN(shrink=3.0, damping=0.5, item_shrink=2.0, user_shrink=1.0).fit(train)
    mu = r.mean()
    b_i = np.bincount(i, weights=r - mu, minlength=items) / (np.bincount(i, minlength=items) + 2.0)
    first = r - mu - b_i[i]
    b_u = np.bincount(u, weights=first, minlength=users) / (np.bincount(u, minlength=users) + 1.0)
    dense = np.zeros((users, items))
    dense[u, i] = first - b_u[u]
    common = mask.T.astype(float) @ mask.astype(float)
    norms = np.sqrt((dense ** 2).sum(0))
    expected = dense.T @ dense / np.outer(norms, norms) * common / (common + 3.0)
    query, support = np.array([0, 3, 5, 7]), np.array([1, 2, 9])
    np.testing.assert_allclose(knn.similarity(query, support), expected[np.ix_(query, support)], atol=1e-12)
    # and the prediction is the damped weighted mean of the support residuals around the baseline
    ratings = np.array([9.0, 4.0, 7.0])
    residual = ratings - mu - b_i[support]
    user_bias = residual.sum() / (3 + 1.0)
    sims = expected[np.ix_(query, support)]
    want = mu + user_bias + b_i[query] + (sims * (residual - user_bias)).sum(1) / (np.abs(sims).sum(1) + 0.5)
    np.testing.assert_allclose(knn.predict(support, ratings, query), want, atol=1e-12)


def test_knn_on_items_nobody_rated_in_training_falls_back_to_the_baseline():
    train = TrainingRatings(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([8.0, 4.0, 6.0]), 2, 4)
    knn = ItemKNN(item_shrink=0.0, user_shrink=0.0).fit(train)
    predicted = knn.predict(np.array([0]), np.array([9.0]), np.array([2, 3]))  # items 2 and 3: never rated
    # mu = 6, b_0 = mean(8, 6) - 6 = 1, b_u = 9 - 6 - b_0 = 2; unrated items: b_i = 0 and no neighbour
    assert predicted.tolist() == [8.0, 8.0]


def test_the_means():
    train = TrainingRatings(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([8.0, 4.0, 6.0]), 2, 3)
    assert GlobalMean().fit(train).predict([], [], np.array([0, 2])).tolist() == [6.0, 6.0]
    assert ItemMean().fit(train).predict([], [], np.array([0, 1, 2])).tolist() == [7.0, 4.0, 6.0]  # unseen: global
    assert UserMean().fit(train).predict([0], np.array([3.0, 5.0]), np.array([1, 2])).tolist() == [4.0, 4.0]


def test_bad_hyperparameters_name_the_baseline():
    with pytest.raises(ValueError, match="mf: factors must be a positive integer"):
        MatrixFactorization(factors=0)
