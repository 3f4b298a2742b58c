"""The shell of the meta-learners whose adaptation is a differentiable inner loop (MAML and relatives).

A subclass writes the maths of ONE task, as functions of the meta-parameters ``meta`` (a dict of tensors)
and a :class:`~.execution.Run` (``run(params, x)`` applies the model; under the ``"threads"`` strategy each
worker passes its own copy of the module structure, so no algorithm needs a thread-safe copy of itself):

* :meth:`meta_parameters` -> the meta-parameters as a dict (pytree) of tensors,
* :meth:`inner_adapt` ``(meta, support_x, support_y, steps, create_graph, run) -> (fast, losses)``,
* :meth:`forward_adapted` ``(meta, fast, x, run) -> outputs``,

and inherits ``meta_loss``, ``meta_backward``, ``adapt`` and ``predict``, executed by :mod:`.execution`.
The outer loss of one task is ``L(forward_adapted(meta, inner_adapt(meta, support), query_x), query_y)``.
Adaptation at evaluation (``adapt``/``predict`` with ``steps=None``) uses ``eval_steps`` (default
``inner_steps``), always first order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_int, check_number
from ..models.learner import Learner
from ..tasks.batch import Task, TaskBatch
from .base import (AdaptedPredictor, MetaLearner, Predictor, all_finite, check_batch, check_task, detach_tree,
                   tree_tensors, unwrap_model)
from .execution import STRATEGIES, Execution, Run
from .losses import LossFn, resolve_loss, summarize

__all__ = ["GradientMetaLearner"]


class GradientMetaLearner(MetaLearner):
    """Shell for MAML-family meta-learners (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        inner_lr: float,
        inner_steps: int,
        first_order: bool,
        loss: str | LossFn,
        strategy: str,
        eval_steps: int | None,
        task_type: str | None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.model = unwrap_model(owner, model)
        self.learner = Learner(self.model)  # a plain object: registers nothing
        self.execution = Execution(owner, self.model)
        self.inner_lr = check_number(owner, "inner_lr", inner_lr)
        self.inner_steps = check_int(owner, "inner_steps", inner_steps, minimum=0)
        self.eval_steps = check_int(owner, "eval_steps", eval_steps, minimum=0, allow_none=True)
        self.first_order = check_bool(owner, "first_order", first_order)
        self.strategy = check_choice(owner, "strategy", strategy, STRATEGIES)
        self.loss = loss
        self.loss_fn, self.task_type = resolve_loss(owner, loss, task_type)
        if not self.learner.params():
            raise ValueError(f"{owner}: the model has no trainable parameters")

    # ----------------------------------------------------------------- the maths (subclasses)
    def meta_parameters(self) -> dict[str, Any]:
        return {"params": self.learner.params()}

    def inner_adapt(self, meta, support_x: Tensor, support_y: Tensor, steps: int, create_graph: bool, run: Run):
        raise NotImplementedError

    def forward_adapted(self, meta, fast, x: Tensor, run: Run) -> Tensor:
        raise NotImplementedError

    def task_loss(self, meta, task: Task, run: Run) -> tuple[Tensor, Tensor]:
        """Outer loss of one task, ``L(f(query_x; adapt(theta, support)), query_y)``, and the query outputs.
        A second-order inner loop's graph is differentiated twice, so it never runs ``backward_once``."""
        inner_run = run if self.first_order else run.replace(backward_once=False)
        fast, _ = self.inner_adapt(meta, task.support_x, task.support_y, self.inner_steps, not self.first_order,
                                   inner_run)
        outputs = self.forward_adapted(meta, fast, task.query_x, run)
        return self.loss_fn(outputs, task.query_y), outputs

    def predict_task(self, meta, task: Task, run: Run, steps: int = 0) -> Tensor:
        fast, _ = self.inner_adapt(meta, task.support_x, task.support_y, steps, False, run)
        return self.forward_adapted(meta, fast, task.query_x, run)

    # ----------------------------------------------------------------- the shared interface
    def _check_batch(self, batch: TaskBatch) -> TaskBatch:
        return check_batch(type(self).__name__, batch, self.task_type, self.loss, getattr(self.model, "ways", None))

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.inner_steps if self.eval_steps is None else self.eval_steps
        return check_int(f"{type(self).__name__}.adapt", "steps", steps, minimum=0)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        batch = self._check_batch(batch)
        extra = [p for p in self.parameters() if p.requires_grad]
        loss, losses, outputs = self.execution.meta_loss(self.task_loss, self.meta_parameters(), batch, self.strategy,
                                                         extra)
        return loss, summarize(losses, outputs, batch.query_y)

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        batch = self._check_batch(batch)
        extra = [p for p in self.parameters() if p.requires_grad]
        losses, outputs = self.execution.meta_backward(self.task_loss, self.meta_parameters(), batch, self.strategy,
                                                       extra)
        return summarize(losses, outputs, batch.query_y)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        owner = type(self).__name__
        check_task(owner, support_x, support_y)
        steps = self._steps(steps)
        meta = detach_tree(self.meta_parameters())
        run = Run(self.learner, backward_once=True)  # first order: each inner graph is backpropagated once
        with torch.no_grad():
            fast, losses = self.inner_adapt(meta, support_x, support_y, steps, False, run)
        if not all_finite(losses + tree_tensors(fast)):
            raise FloatingPointError(
                f"{owner}.adapt: the support loss or the adapted weights became non-finite during {steps} inner "
                f"steps (support losses before each step: {[float(v) for v in losses]}); lower "
                f"inner_lr={self.inner_lr} or check the inputs")
        return AdaptedPredictor(lambda x: self.forward_adapted(meta, fast, x, run), [float(v) for v in losses])

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        batch = self._check_batch(batch)
        steps = self._steps(steps)
        meta = detach_tree(self.meta_parameters())
        with torch.no_grad():
            return self.execution.predict(lambda m, task, run: self.predict_task(m, task, run, steps), meta, batch,
                                          self.strategy)

    def extra_repr(self) -> str:
        return (f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, first_order={self.first_order}, "
                f"loss={self.loss!r}, strategy={self.strategy!r}")
