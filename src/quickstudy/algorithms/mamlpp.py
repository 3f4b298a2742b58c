r"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019, arXiv:1810.09502).

MAML (:mod:`.maml`) with, for k = inner_steps:

    LSLR  learned per-layer per-step inner rates:   phi^{j+1} = phi^j - alpha_{l,j} * grad_{phi_l} L_S(phi^j)
          (one learned scalar per parameter tensor l and step j, initialised to ``inner_lr``)
    MSL   multi-step loss:   L_meta = 1/B * sum_i sum_{j=1..k} v_j(t) * L(f(Q_i.x; phi_i^j), Q_i.y)
          with v_j(t) annealed over the first ``msl_iterations`` meta-iterations t (p = t / msl_iterations):
              v_j = max(1/k - p/k, 0.03/k) for j < k,   v_k = min(1/k + p (k-1)/k, 1 - 0.03 (k-1)/k),
          then only the last step's loss (v_k = 1): the schedule of the authors' code, made continuous in t
    BNWB  per-step batch-norm weights and biases: step j's forward passes (support, then query after the update)
          use their own learned gamma_j, beta_j, which the inner loop does not adapt
    BNRS  per-step batch-norm running statistics: with ``batch_norm="running"`` models each step keeps its own
          running mean and variance, used at evaluation; with transductive batch norm (the default, and what the
          authors' code computes: ``F.batch_norm(..., training=True)`` at every step) the statistics are those of
          the batch at each step already
    DA    derivative-order annealing: first order for the first ``first_order_iterations`` meta-iterations
    CA    cosine annealing of the meta learning rate: ``train.schedule: cosine`` (a Trainer option)

The meta-iteration t is ``self.iteration`` (a buffer: saved in checkpoints, so a resumed run continues the
schedules exactly); every ``meta_loss``/``meta_backward`` call in training mode advances it by one. Evaluation
with more steps than ``inner_steps`` reuses the last step's rates and batch-norm parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_int
from ..models.batchnorm import TaskBatchNorm
from ..tasks.batch import Task, TaskBatch
from .execution import Run
from .gradient import GradientMetaLearner
from .inner_loop import inner_gradients

__all__ = ["MAMLPlusPlus", "msl_weights"]


def msl_weights(steps: int, iteration: int, msl_iterations: int) -> list[float]:
    """The multi-step loss weights v_1..v_k at meta-iteration ``iteration`` (see the module docstring)."""
    if steps == 0:
        return []
    if iteration >= msl_iterations:
        return [0.0] * (steps - 1) + [1.0]
    progress, floor = iteration / msl_iterations, 0.03 / steps
    weights = [max(1.0 / steps - progress / steps, floor) for _ in range(steps - 1)]
    return weights + [min(1.0 / steps + progress * (steps - 1) / steps, 1.0 - (steps - 1) * floor)]


def _key(name: str) -> str:
    return name.replace(".", "__")


class _Adapted(dict):
    """Fast weights that remember how many inner steps made them (the query pass uses that step's batch norm)."""

    steps: int = 0


class MAMLPlusPlus(GradientMetaLearner):
    """``MAMLPlusPlus(model, inner_lr=0.1, inner_steps=5, msl_iterations=5000, first_order_iterations=0,
    learn_inner_lrs=True, per_step_bn=True, first_order=False, loss="cross_entropy", strategy="auto",
    eval_steps=None)``.

    Args:
        inner_lr: initial value of every per-layer per-step rate (fixed with ``learn_inner_lrs=False``).
        inner_steps: k; the number of rates and batch-norm parameter sets per layer.
        msl_iterations: meta-iterations of multi-step loss (0: the last step's loss only).
        first_order_iterations: meta-iterations run first order before second order (``first_order=True``: all).
        per_step_bn: per-step batch-norm weights, biases (and running statistics where the model keeps them).
        Other arguments as :class:`~.maml.MAML`.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        msl_iterations: int = 5000,
        first_order_iterations: int = 0,
        learn_inner_lrs: bool = True,
        per_step_bn: bool = True,
        first_order: bool = False,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        strategy: str = "auto",
        eval_steps: int | None = None,
        task_type: str | None = None,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=first_order, loss=loss,
                         strategy=strategy, eval_steps=eval_steps, task_type=task_type)
        if self.inner_steps < 1:
            raise ValueError(f"MAMLPlusPlus: inner_steps must be a positive integer, got {inner_steps!r}")
        self.msl_iterations = check_int("MAMLPlusPlus", "msl_iterations", msl_iterations, minimum=0)
        self.first_order_iterations = check_int("MAMLPlusPlus", "first_order_iterations", first_order_iterations,
                                                minimum=0)
        self.learn_inner_lrs = check_bool("MAMLPlusPlus", "learn_inner_lrs", learn_inner_lrs)
        self.per_step_bn = check_bool("MAMLPlusPlus", "per_step_bn", per_step_bn)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._weights, self._first_order_now = msl_weights(self.inner_steps, 0, self.msl_iterations), self.first_order
        k = self.inner_steps
        norms = {name: m for name, m in self.model.named_modules()
                 if isinstance(m, (TaskBatchNorm, nn.modules.batchnorm._BatchNorm))}
        params = self.learner.params()
        #: model parameter -> its batch-norm module's name, for the parameters replaced step by step
        self.bn_params = ({n: m for m in norms for n in params if n.rsplit(".", 1)[0] == m} if self.per_step_bn
                          else {})
        self.adapted = [n for n in params if n not in self.bn_params]
        self.lrs = nn.ParameterDict({_key(n): nn.Parameter(torch.full((k,), self.inner_lr),
                                                           requires_grad=self.learn_inner_lrs)
                                     for n in self.adapted})
        self.step_bn = nn.ParameterDict({f"{j}__{_key(n)}": nn.Parameter(params[n].detach().clone())
                                         for j in range(k) for n in self.bn_params})
        #: running-statistics buffer name in the model -> per-step copies' buffer names in this module
        self.step_stats: dict[str, list[str]] = {}
        if self.per_step_bn:
            for name, m in norms.items():
                for stat in ("running_mean", "running_var"):
                    if getattr(m, stat, None) is None:
                        continue
                    full = f"{name}.{stat}" if name else stat
                    copies = []
                    for j in range(k):
                        copies.append(f"stats__{j}__{_key(full)}")
                        self.register_buffer(copies[-1], getattr(m, stat).detach().clone())
                    self.step_stats[full] = copies

    # ----------------------------------------------------------------- schedules
    def _schedule(self) -> tuple[list[float], bool]:
        """(MSL weights, first order?) at the current meta-iteration; advances it in training mode."""
        t = int(self.iteration)
        if self.training:
            self.iteration += 1
        first_order = self.first_order or t < self.first_order_iterations
        return msl_weights(self.inner_steps, t, self.msl_iterations), first_order

    def meta_loss(self, batch: TaskBatch):
        self._weights, self._first_order_now = self._schedule()
        return super().meta_loss(batch)

    def meta_backward(self, batch: TaskBatch):
        self._weights, self._first_order_now = self._schedule()
        return super().meta_backward(batch)

    # ----------------------------------------------------------------- the maths of one task
    def meta_parameters(self):
        params = self.learner.params()
        return {"params": {n: params[n] for n in self.adapted},
                "lrs": {n: self.lrs[_key(n)] for n in self.adapted},
                "bn": [{n: self.step_bn[f"{j}__{_key(n)}"] for n in self.bn_params} for j in range(self.inner_steps)]}

    def _at_step(self, meta, fast, j: int) -> dict[str, Tensor]:
        """The model's tensors at inner step j: the fast weights, step j's batch-norm parameters and statistics."""
        j = min(j, self.inner_steps - 1)
        stats = {full: getattr(self, copies[j]) for full, copies in self.step_stats.items()}
        return {**fast, **meta["bn"][j], **stats}

    def _unroll(self, meta, x, y, steps: int, create_graph: bool, run: Run, on_step=None):
        fast, losses = dict(meta["params"]), []
        for j in range(steps):
            grads, loss = inner_gradients(lambda p: self.loss_fn(run(self._at_step(meta, p, j), x), y), fast,
                                          create_graph=create_graph, use_func=run.use_func)
            if not create_graph:
                grads = {k: g.detach() for k, g in grads.items()}
            rate = min(j, self.inner_steps - 1)
            fast = {k: fast[k] - meta["lrs"][k][rate] * grads[k] for k in fast}
            losses.append(loss)
            if on_step is not None:
                on_step(j, fast)
        adapted = _Adapted(fast)
        adapted.steps = steps
        return adapted, losses

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run):
        return self._unroll(meta, support_x, support_y, steps, create_graph, run)

    def forward_adapted(self, meta, fast, x, run):
        # the query pass after step j uses step j's batch norm, as the support pass of step j did
        return run(self._at_step(meta, fast, max(getattr(fast, "steps", self.inner_steps) - 1, 0)), x)

    def task_loss(self, meta, task: Task, run: Run) -> tuple[Tensor, Tensor]:
        """sum_j v_j L(f(Q.x; phi^j), Q.y): the query loss after every step whose weight is not 0."""
        weights, first_order = self._weights, self._first_order_now
        inner_run = run if first_order else run.replace(backward_once=False)
        terms = []

        def on_step(j: int, fast) -> None:
            if weights[j] > 0 and j < len(weights) - 1:
                terms.append(weights[j] * self.loss_fn(run(self._at_step(meta, fast, j), task.query_x), task.query_y))

        fast, _ = self._unroll(meta, task.support_x, task.support_y, self.inner_steps, not first_order, inner_run,
                               on_step)
        outputs = self.forward_adapted(meta, fast, task.query_x, run)
        total = weights[-1] * self.loss_fn(outputs, task.query_y)
        for term in terms:
            total = total + term
        return total, outputs

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", msl_iterations={self.msl_iterations}, first_order_iterations="
                f"{self.first_order_iterations}, learn_inner_lrs={self.learn_inner_lrs}, "
                f"per_step_bn={self.per_step_bn}")
