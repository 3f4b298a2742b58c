"""The one interface every meta-learner shares, and the kit its implementations share.

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

The kit (used by every algorithm file, so none of them re-implements it): :func:`unwrap_model`,
:func:`check_task`, :func:`check_batch`, :func:`all_finite`, :func:`detach_tree`, :func:`tree_tensors`
and :class:`AdaptedPredictor`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ..models.learner import Learner
from ..tasks.batch import TaskBatch

__all__ = ["MetaLearner", "Predictor", "AdaptedPredictor", "unwrap_model", "check_task", "check_batch",
           "all_finite", "detach_tree", "tree_tensors"]

Predictor = Callable[[Tensor], Tensor]


class MetaLearner(nn.Module):
    """Base class: see the module docstring for the contract."""

    #: "classification" or "regression"; set by subclasses from their loss.
    task_type: str = "classification"
    #: True when the model is an embedding ``[n, ...] -> [n, D]`` without a classification head (ProtoNet,
    #: FineTune, ...): configs build it with ``ways=None`` and any number of test ways works.
    embedding_model: bool = False

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


class AdaptedPredictor:
    """What ``adapt`` returns: ``predictor(query_x)`` -> outputs, without autograd.

    ``support_losses`` holds the support loss before each inner step (Python floats).
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], support_losses: list[float] | None = None) -> None:
        self._fn = fn
        self.support_losses = support_losses or []

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._fn(x)


def unwrap_model(owner: str, model: Any) -> nn.Module:
    """The ``nn.Module`` a meta-learner wraps (a :class:`~quickstudy.models.Learner` view is unwrapped)."""
    if isinstance(model, Learner):
        model = model.module
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_task(owner: str, support_x: Tensor, support_y: Tensor) -> None:
    """One unbatched task: ``support_x [n, ...]`` and ``support_y [n, ...]`` with n >= 1."""
    if not isinstance(support_x, Tensor) or not isinstance(support_y, Tensor):
        raise TypeError(f"{owner}.adapt: support_x and support_y must be tensors")
    if support_x.dim() < 1 or support_y.dim() < 1 or support_x.shape[0] != support_y.shape[0] or support_x.shape[0] == 0:
        raise ValueError(
            f"{owner}.adapt takes one task: support_x [n, ...] and support_y [n, ...] with the same n >= 1; got "
            f"{tuple(support_x.shape)} and {tuple(support_y.shape)} (for a TaskBatch use predict)"
        )


def check_batch(owner: str, batch: Any, task_type: str, loss: Any = None, head_ways: Any = None) -> TaskBatch:
    """A :class:`~quickstudy.TaskBatch` of the learner's task type (``loss`` is named in the error), and no more
    ways than the model's head has outputs (``head_ways``, when an int)."""
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"{owner}: expected a TaskBatch, got {type(batch).__name__}")
    if (task_type == "classification") != batch.is_classification:
        kind = "classification" if batch.is_classification else "regression"
        detail = f" (loss={loss!r})" if loss is not None else ""
        raise ValueError(f"{owner} is set up for {task_type}{detail} but got a {kind} batch")
    if batch.is_classification and batch.ways is not None and isinstance(head_ways, int) and batch.ways > head_ways:
        raise ValueError(f"{owner}: the model's head has {head_ways} outputs but the batch is {batch.ways}-way")
    return batch


def tree_tensors(tree: Any) -> list[Tensor]:
    """The tensors of a tensor, a (nested) mapping of tensors, or a list of them."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [leaf for value in tree.values() for leaf in tree_tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [leaf for value in tree for leaf in tree_tensors(value)]
    return []


def detach_tree(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, Mapping):
        return {k: detach_tree(v) for k, v in tree.items()}
    return tree


def all_finite(tensors: list[Tensor]) -> bool:
    """Whether every tensor holds only finite values (one host sync)."""
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())
