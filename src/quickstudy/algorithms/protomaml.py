r"""Proto-MAML (Triantafillou et al., "Meta-Dataset", ICLR 2020, arXiv:1903.03096): MAML whose output layer is
initialised, task by task, from the prototypes of the support set.

An embedding f_theta (e.g. ``Conv4(ways=None)``) and, per task, a linear head whose initial value is the linear form
of the prototypical-network classifier (-||z - c_n||^2 = 2 c_n.z - ||c_n||^2 - ||z||^2, the last term common to
every class):

    prototypes:   c_n = mean_{(x, y) in S, y = n} f_theta(x)
    head init:    W_n = 2 c_n,   b_n = -||c_n||^2
    inner update: (theta, W, b)^{j+1} = (theta, W, b)^j - alpha * grad L(W f(S.x; theta^j) + b, S.y)   (k steps)
    outer loss:   L_meta(theta) = 1/B * sum_i L(W_i^k f(Q_i.x; theta_i^k) + b_i^k, Q_i.y)

The meta-gradient reaches theta also through the prototypes of the initial head (with ``first_order=True``,
fo-Proto-MAML, only through them and the query pass). With ``inner_steps=0`` the predictions are exactly
prototypical networks'.
"""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.batch import Task
from .execution import Run
from .gradient import GradientMetaLearner
from .inner_loop import sgd_inner_loop
from .metric import check_labels, embed
from .protonet import prototypes

__all__ = ["ProtoMAML", "prototype_head"]

_WEIGHT, _BIAS = "__head.weight", "__head.bias"  # the task's head in the fast weights (not a model parameter)


def prototype_head(embeddings: Tensor, labels: Tensor, ways: int) -> tuple[Tensor, Tensor]:
    """``(W [ways, D], b [ways])`` = ``(2 c, -||c||^2)`` for the class means c of ``embeddings``."""
    c = prototypes(embeddings, labels, ways)
    return 2 * c, -(c * c).sum(-1)


class ProtoMAML(GradientMetaLearner):
    """``ProtoMAML(model, inner_lr=0.1, inner_steps=1, first_order=False, loss="cross_entropy", strategy="auto",
    eval_steps=None)``: ``model`` maps ``[n, ...]`` to ``[n, D]`` embeddings; other arguments as
    :class:`~.maml.MAML`."""

    embedding_model = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        first_order: bool = False,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        strategy: str = "auto",
        eval_steps: int | None = None,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order, loss=loss,
                         strategy=strategy, eval_steps=eval_steps, task_type="classification")

    def _logits(self, p: dict[str, Tensor], x: Tensor, run: Run) -> Tensor:
        body = {k: v for k, v in p.items() if k not in (_WEIGHT, _BIAS)}
        return F.linear(embed("ProtoMAML", run, body, x), p[_WEIGHT], p[_BIAS])

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run, ways: int | None = None):
        if ways is None:  # adapt(): one task outside any transform, its labels say how many classes
            ways = check_labels("ProtoMAML", support_y)
        weight, bias = prototype_head(embed("ProtoMAML", run, meta["params"], support_x), support_y, ways)
        # the inner gradient is partial in (theta, W, b): W and b are functions of theta, and autograd.grad with
        # respect to theta itself would add the path through them; a view of theta is a separate node
        start = {**{k: v.view_as(v) for k, v in meta["params"].items()}, _WEIGHT: weight, _BIAS: bias}
        return sgd_inner_loop(lambda p, x: self._logits(p, x, run), start, support_x, support_y, self.loss_fn, steps,
                              self.inner_lr, create_graph=create_graph, use_func=run.use_func)

    def forward_adapted(self, meta, fast, x, run):
        return self._logits(fast, x, run)

    def task_loss(self, meta, task: Task, run: Run) -> tuple[Tensor, Tensor]:
        inner_run = run if self.first_order else run.replace(backward_once=False)
        fast, _ = self.inner_adapt(meta, task.support_x, task.support_y, self.inner_steps, not self.first_order,
                                   inner_run, task.ways)
        outputs = self.forward_adapted(meta, fast, task.query_x, run)
        return self.loss_fn(outputs, task.query_y), outputs

    def predict_task(self, meta, task: Task, run: Run, steps: int = 0) -> Tensor:
        fast, _ = self.inner_adapt(meta, task.support_x, task.support_y, steps, False, run, task.ways)
        return self.forward_adapted(meta, fast, task.query_x, run)
