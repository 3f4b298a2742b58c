"""The one interface every meta-learner shares, so the trainer, evaluation and CLI never special-case
an algorithm.

A meta-learner is an ``nn.Module`` whose parameters are the meta-parameters (an initialisation,
per-parameter step sizes, an embedding, ...). It offers:

* ``meta_loss(batch) -> (loss, metrics)``: the mean query loss over the tasks of a
  :class:`~quickstudy.TaskBatch` after adaptation on their support sets, differentiable w.r.t.
  ``self.parameters()``. (Reptile has no such loss and says so.)
* ``meta_backward(batch) -> metrics``: accumulate the meta-update direction into ``.grad`` of the
  meta-parameters. For gradient-based methods it is the gradient of ``meta_loss``, computed task by
  task so that each task's graph is freed after its own backward; for Reptile it is the Reptile
  direction ``theta - mean(phi)``. The trainer then clips and calls ``optimizer.step()``.
* ``adapt(support_x, support_y, steps=None) -> predictor``: one unbatched task; ``predictor(query_x)``
  returns logits (classification) or predictions (regression).
* ``predict(batch, steps=None) -> Tensor``: query outputs for every task of a batch, without the
  meta-gradient graph: ``[B, N*Q, N]`` logits or ``[B, Q, *y_shape]`` predictions.

``metrics`` is a dict of Python floats with at least ``"loss"`` and, for classification,
``"accuracy"``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..tasks.batch import TaskBatch

__all__ = ["MetaLearner", "Predictor"]

Predictor = Callable[[Tensor], Tensor]


class MetaLearner(nn.Module):
    """Base class: see the module docstring for the contract."""

    #: "classification" or "regression"; set by subclasses from their loss.
    task_type: str = "classification"

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        loss, metrics = self.meta_loss(batch)
        loss.backward()
        return metrics

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        raise NotImplementedError

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        outputs = []
        for task in batch:
            outputs.append(self.adapt(task.support_x, task.support_y, steps=steps)(task.query_x).detach())
        return torch.stack(outputs)
