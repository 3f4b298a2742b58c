r"""MetaOptNet (Lee, Maji, Ravichandran & Soatto, CVPR 2019, arXiv:1904.03758) and R2-D2 (Bertinetto, Henriques,
Torr & Vedaldi, ICLR 2019, arXiv:1805.08136): a convex base learner fitted on the support embeddings.

With X = f_theta(S.x) ``[n, D]`` (n = N*K), Y the one-hot labels ``[n, N]`` and Z = f_theta(Q.x):

    ridge (R2-D2):  W = argmin_W ||X W^T - Y||^2 + lambda ||W||^2 = (X^T (X X^T + lambda I)^{-1} Y)^T
                    (the n x n system of Woodbury's identity: n << D)
    svm (MetaOptNet): the Crammer-Singer multi-class SVM, W = alpha^T X with alpha the solution of the dual QP
                    min_alpha 1/2 tr(alpha^T X X^T alpha) - tr(alpha^T Y)
                    s.t. alpha_{n,k} <= C [y_n = k],  sum_k alpha_{n,k} = 0
    logits:         s * Z W^T          (s: a learned scale; lambda is learned too with ``learn_lambda``)
    outer loss:     L_meta(theta, s) = 1/B * sum_tasks CE(logits, Q.y)    (with ``label_smoothing``, as MetaOptNet)

The meta-gradient flows through the base learner's solution into the embedding. Ridge: through
``torch.linalg.solve``. SVM: substituting alpha_n = C (y_n - p_n) turns the constraints into "p_n lies in the
probability simplex", so the dual is solved by ``svm_iterations`` steps of accelerated projected gradient (FISTA,
step 1 / (C^2 ||X X^T||_F), sort-based simplex projection), and the iterations are differentiated by unrolling.
Why unrolling rather than implicit differentiation: the QP has only n*N variables (25 for 5-way 1-shot, 400 for
20-way 1-shot), so keeping every iteration costs a few hundred kilobytes per task; the gradient is then that of the
logits actually computed, even when the iterations stop short of the optimum or a constraint is weakly active
(where the implicit function theorem's conditions fail); and it runs unchanged under ``torch.func.vmap``.
MetaOptNet itself differentiated a few iterations of an interior-point solver (qpth).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_int, check_number
from ..tasks.batch import Task
from .execution import Run
from .metric import MetricMetaLearner, class_onehot, embed

__all__ = ["MetaOptNet", "HEADS", "ridge_head", "svm_head", "svm_dual", "project_simplex"]


def ridge_head(support: Tensor, onehot: Tensor, lam: Tensor | float) -> Tensor:
    """``W [N, D]`` of ridge regression from ``support [n, D]`` to ``onehot [n, N]`` (the dual, n x n, form)."""
    n = support.shape[0]
    gram = support @ support.transpose(0, 1) + lam * torch.eye(n, dtype=support.dtype, device=support.device)
    return (support.transpose(0, 1) @ torch.linalg.solve(gram, onehot)).transpose(0, 1)


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row of ``v`` onto the probability simplex (sort-based, no data-dependent
    shapes: differentiable almost everywhere and runs under vmap)."""
    u = torch.sort(v, dim=-1, descending=True).values
    cumulative = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    support_size = ((u - cumulative / k) > 0).sum(-1, keepdim=True)  # >= 1 for every row
    tau = cumulative.gather(-1, support_size - 1) / support_size.to(v.dtype)
    return (v - tau).clamp_min(0)


def svm_dual(gram: Tensor, onehot: Tensor, C: float, iterations: int) -> Tensor:
    """``alpha [n, N]`` of the Crammer-Singer SVM's dual (see the module docstring) by FISTA over p = y - alpha / C,
    starting from alpha = 0."""
    scale = C * C * torch.linalg.matrix_norm(gram.detach()) + 1e-12  # >= the gradient's Lipschitz constant
    step = 1.0 / scale  # a constant for the unrolled derivative: it does not move the optimum
    p = z = onehot
    t = 1.0
    for _ in range(iterations):
        gradient = -C * (gram @ (C * (onehot - z)) - onehot)  # d/dp of the dual objective at z
        p_next = project_simplex(z - step * gradient)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        z = p_next + ((t - 1.0) / t_next) * (p_next - p)
        p, t = p_next, t_next
    return C * (onehot - p)


def svm_head(support: Tensor, onehot: Tensor, C: float, iterations: int) -> Tensor:
    """``W [N, D] = alpha^T X`` of the Crammer-Singer SVM on ``support [n, D]`` (linear kernel)."""
    alpha = svm_dual(support @ support.transpose(0, 1), onehot, C, iterations)
    return alpha.transpose(0, 1) @ support


#: name -> W from (support [n, D], one-hot labels [n, N], the learner)
HEADS: dict[str, Callable[[Tensor, Tensor, "MetaOptNet", dict], Tensor]] = {
    "ridge": lambda x, y, learner, p: ridge_head(x, y, learner.ridge_lambda_of(p)),
    "svm": lambda x, y, learner, p: svm_head(x, y, learner.C, learner.svm_iterations),
}


class MetaOptNet(MetricMetaLearner):
    """``MetaOptNet(model, head="svm", C=0.1, svm_iterations=100, ridge_lambda=1.0, learn_lambda=True, scale=1.0,
    label_smoothing=0.0, strategy="auto")``; ``head="ridge"`` is R2-D2.

    Args:
        model: the embedding ``[n, ...] -> [n, D]`` (e.g. ``Conv4(ways=None)``).
        head: ``"svm"`` or ``"ridge"`` (:data:`HEADS`).
        C: the SVM's slack penalty (MetaOptNet: 0.1).
        svm_iterations: FISTA iterations of the SVM's dual, all differentiated.
        ridge_lambda: the ridge penalty (its initial value with ``learn_lambda``).
        learn_lambda: meta-learn log(lambda) (R2-D2 learns it).
        scale: initial value of the learned logit scale s.
        label_smoothing: of the outer cross-entropy (MetaOptNet trains with 0.1).
        strategy: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"threads"`` (:mod:`quickstudy.algorithms.execution`).
    """

    def __init__(self, model: nn.Module, head: str = "svm", C: float = 0.1, svm_iterations: int = 100,
                 ridge_lambda: float = 1.0, learn_lambda: bool = True, scale: float = 1.0,
                 label_smoothing: float = 0.0, strategy: str = "auto") -> None:
        super().__init__(model, strategy)
        self.head = check_choice("MetaOptNet", "head", head, HEADS)
        self.C = check_number("MetaOptNet", "C", C)
        self.svm_iterations = check_int("MetaOptNet", "svm_iterations", svm_iterations)
        self.learn_lambda = check_bool("MetaOptNet", "learn_lambda", learn_lambda)
        self.label_smoothing = check_number("MetaOptNet", "label_smoothing", label_smoothing, allow_zero=True)
        if self.label_smoothing >= 1:
            raise ValueError(f"MetaOptNet: label_smoothing must be in [0, 1), got {label_smoothing!r}")
        log_lambda = torch.tensor(math.log(check_number("MetaOptNet", "ridge_lambda", ridge_lambda)))
        self.log_lambda = nn.Parameter(log_lambda, requires_grad=self.learn_lambda)
        self.scale = nn.Parameter(torch.tensor(check_number("MetaOptNet", "scale", scale)))

    def meta_parameters(self):
        return {**super().meta_parameters(), "head": {"scale": self.scale, "log_lambda": self.log_lambda}}

    def ridge_lambda_of(self, p: dict[str, Tensor]) -> Tensor:
        return p["log_lambda"].exp()

    def task_outputs(self, meta, task: Task, run: Run) -> Tensor:
        support = embed("MetaOptNet", run, meta["embed"], task.support_x)
        query = embed("MetaOptNet", run, meta["embed"], task.query_x)
        weights = HEADS[self.head](support, class_onehot(task.support_y, task.ways, support.dtype), self, meta["head"])
        return meta["head"]["scale"] * (query @ weights.transpose(0, 1))

    def output_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        detail = (f"C={self.C}, svm_iterations={self.svm_iterations}" if self.head == "svm"
                  else f"learn_lambda={self.learn_lambda}")
        return f"head={self.head!r}, {detail}, label_smoothing={self.label_smoothing}, strategy={self.strategy!r}"
