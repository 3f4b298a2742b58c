r"""Meta-SGD (Li, Zhou, Chen & Li, 2017, arXiv:1707.09835): MAML with learned per-parameter step sizes.

    inner update (element-wise product, alpha has the shape of theta):
        phi_i^0 = theta,    phi_i^{j+1} = phi_i^j - alpha (.) grad_phi L(f(S_i.x; phi_i^j), S_i.y)

    outer loss, minimised over BOTH theta and alpha:
        L_meta(theta, alpha) = 1/B * sum_i L(f(Q_i.x; phi_i^k(theta, alpha)), Q_i.y)

alpha is ``self.lrs``, a ParameterDict with one tensor per trainable tensor of the model (key: the
parameter name with ``.`` replaced by ``__``), initialised to ``inner_lr`` everywhere (the paper draws
it at random; a constant start makes Meta-SGD begin exactly as MAML). ``first_order=True`` drops the
second-order terms in theta; alpha still receives its gradient ``-grad_phi L_S`` through the update.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .gradient import GradientMetaLearner
from .inner_loop import sgd_inner_loop

__all__ = ["MetaSGD"]


def _key(name: str) -> str:
    return name.replace(".", "__")


class MetaSGD(GradientMetaLearner):
    """``MetaSGD(model, inner_lr=0.4, inner_steps=1, first_order=False, loss="cross_entropy", strategy="auto")``.

    ``inner_lr`` is the initial value of every learned step size; other arguments as :class:`~.maml.MAML`.
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
        self.lrs = nn.ParameterDict(
            {_key(name): nn.Parameter(torch.full_like(p.detach(), self.inner_lr)) for name, p in self.learner.params().items()}
        )

    def meta_parameters(self):
        params = self.learner.params()
        return {"params": params, "lrs": {name: self.lrs[_key(name)] for name in params}}

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run):
        return sgd_inner_loop(run, meta["params"], support_x, support_y, self.loss_fn, steps, meta["lrs"],
                              create_graph=create_graph, use_func=run.use_func)

    def forward_adapted(self, meta, fast, x, run):
        return run(fast, x)
