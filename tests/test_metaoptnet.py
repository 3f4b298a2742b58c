"""MetaOptNet's base learners against reference solvers: the ridge head against torch.linalg.solve of the primal
normal equations (and its gradient against finite differences), the SVM's dual against scikit-learn's
Crammer-Singer SVM on a small separable problem, and strong duality at the solution."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quickstudy.algorithms import MetaOptNet
from quickstudy.algorithms.metaoptnet import project_simplex, ridge_head, svm_dual, svm_head


def separable(seed=0):
    """3 well-separated classes of 4 points in 2-d."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]], dtype=torch.float64)
    x = centres.repeat_interleave(4, 0) + 0.5 * torch.randn(12, 2, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(4)
    return x, y, F.one_hot(y, 3).double()


def test_ridge_head_equals_the_primal_normal_equations():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 10, generator=g, dtype=torch.float64)  # n = 6 < D = 10: the dual form is the cheap one
    y = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).double()
    lam = 0.7
    primal = torch.linalg.solve(x.T @ x + lam * torch.eye(10, dtype=torch.float64), x.T @ y).T
    torch.testing.assert_close(ridge_head(x, y, lam), primal, rtol=1e-10, atol=1e-12)


def test_ridge_head_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y = F.one_hot(torch.tensor([0, 1, 0, 1]), 2).double()
    assert torch.autograd.gradcheck(lambda x, lam: ridge_head(x, y, lam), (x, lam))


def test_simplex_projection_by_hand():
    # (0.5, 0.2) -> tau = (0.5 + 0.2 - 1) / 2 = -0.15 -> (0.65, 0.35); (2, 0) -> (1, 0)
    out = project_simplex(torch.tensor([[0.5, 0.2], [2.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[0.65, 0.35], [1.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("C", [0.1, 1.0])
def test_svm_head_equals_scikit_learns_crammer_singer_svm(C):
    sklearn_svm = pytest.importorskip("sklearn.svm")
    x, y, onehot = separable()
    reference = sklearn_svm.LinearSVC(C=C, multi_class="crammer_singer", fit_intercept=False, tol=1e-12,
                                      max_iter=1_000_000).fit(x.numpy(), y.numpy()).coef_
    torch.testing.assert_close(svm_head(x, onehot, C, iterations=3000), torch.from_numpy(reference),
                               rtol=1e-6, atol=1e-6)


def test_svm_dual_solution_closes_the_duality_gap():
    """At the optimum the dual objective equals the primal 1/2 ||W||^2 + C sum_n max_k (1 - [k = y_n] + w_k x_n
    - w_{y_n} x_n) (the Crammer-Singer hinge), and the dual constraints hold."""
    x, y, onehot = separable(seed=3)
    C = 0.5
    alpha = svm_dual(x @ x.T, onehot, C, iterations=3000)
    w = alpha.T @ x
    scores = x @ w.T
    hinge = (1 - onehot + scores - scores.gather(1, y.unsqueeze(1))).max(1).values
    primal = 0.5 * (w * w).sum() + C * hinge.sum()
    dual = -0.5 * (w * w).sum() + (alpha * onehot).sum()
    assert float(primal - dual) == pytest.approx(0.0, abs=1e-8)
    assert torch.all(alpha <= C * onehot + 1e-12) and torch.allclose(alpha.sum(1), torch.zeros(12, dtype=torch.float64))


def test_metaoptnet_logits_are_the_scaled_base_learner_on_the_query_embeddings():
    torch.manual_seed(0)
    model = nn.Linear(2, 2, bias=False).double()  # embedding: the identity
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x, y, onehot = separable()
    for head, weights in (("ridge", ridge_head(x, onehot, 2.0)), ("svm", svm_head(x, onehot, 0.1, 500))):
        learner = MetaOptNet(model, head=head, ridge_lambda=2.0, svm_iterations=500, scale=3.0).double()
        query = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)
        torch.testing.assert_close(learner.adapt(x, y)(query), 3.0 * query @ weights.T)


def test_metaoptnet_rejects_an_unknown_head():
    with pytest.raises(ValueError, match="head must be one of 'ridge', 'svm'"):
        MetaOptNet(nn.Linear(2, 2), head="lasso")
