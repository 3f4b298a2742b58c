r"""MAML — Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400).

For each task i with support set S_i and query set Q_i, starting from the shared initialisation theta:

    inner update (k = inner_steps steps, step size alpha = inner_lr):
        phi_i^0 = theta,    phi_i^{j+1} = phi_i^j - alpha * grad_phi L(f(S_i.x; phi_i^j), S_i.y)

    outer loss (meta_loss), minimised over theta by the trainer's optimizer:
        L_meta(theta) = 1/B * sum_i L(f(Q_i.x; phi_i^k(theta)), Q_i.y)

The meta-gradient differentiates through the inner updates (second order: Hessian-vector products).
``first_order=True`` (FOMAML, Finn et al. section 5.2) treats each inner gradient as a constant, so
d phi_i^k / d theta = I and the meta-gradient is the query gradient at phi_i^k.

Usage::

    maml = MAML(Conv4(in_channels=1, ways=5), inner_lr=0.4, inner_steps=1)
    loss, metrics = maml.meta_loss(batch)          # differentiable w.r.t. maml.parameters()
    predictor = maml.adapt(support_x, support_y)   # one task; predictor(query_x) -> logits

``strategy`` chooses how the B tasks run (``"auto"``, ``"loop"``, ``"vmap"`` or ``"threads"``, see
:mod:`quickstudy.algorithms.execution`); the inner loop itself is :func:`~.inner_loop.sgd_inner_loop`.
Batch norm in the inner loop follows the model's declared policy (:mod:`quickstudy.models.batchnorm`).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .gradient import GradientMetaLearner
from .inner_loop import sgd_inner_loop

__all__ = ["MAML", "FOMAML"]


class MAML(GradientMetaLearner):
    """``MAML(model, inner_lr=0.4, inner_steps=1, first_order=False, loss="cross_entropy", strategy="auto")``.

    Args:
        model: any ``nn.Module`` (e.g. ``quickstudy.models.Conv4``); its parameters are the initialisation theta.
        inner_lr: inner step size alpha (> 0).
        inner_steps: inner SGD steps k during meta-training (>= 0).
        first_order: drop the second-order terms (FOMAML).
        loss: ``"cross_entropy"`` (classification), ``"mse"`` (regression) or a callable ``(outputs, targets)``.
        strategy: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"threads"``.
        eval_steps: inner steps at evaluation (``adapt``/``predict`` with ``steps=None``); default ``inner_steps``.
        task_type: only for a callable ``loss``: ``"classification"`` (default) or ``"regression"``.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        strategy: str = "auto",
        eval_steps: int | None = None,
        task_type: str | None = None,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order, loss=loss,
                         strategy=strategy, eval_steps=eval_steps, task_type=task_type)

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run):
        return sgd_inner_loop(run, meta["params"], support_x, support_y, self.loss_fn, steps, self.inner_lr,
                              create_graph=create_graph, use_func=run.use_func)

    def forward_adapted(self, meta, fast, x, run):
        return run(fast, x)


class FOMAML(MAML):
    """First-order MAML: :class:`MAML` with ``first_order=True`` (the inner gradients are constants)."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        strategy: str = "auto",
        eval_steps: int | None = None,
        task_type: str | None = None,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True, loss=loss,
                         strategy=strategy, eval_steps=eval_steps, task_type=task_type)
