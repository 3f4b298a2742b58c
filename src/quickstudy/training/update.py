"""One meta-update: what the trainer does with a batch of tasks, and the state it keeps for it.

:class:`GradientUpdate` (every meta-learner with ``meta_backward``)::

    optimizer.zero_grad(set_to_none=True)
    metrics = learner.meta_backward(batch)          # under autocast for precision="bfloat16"
    metrics = reduce_gradients(learner, metrics, B) # optional: averaging across processes (.distributed)
    check loss and gradients are finite             # else NonFiniteLossError(step=index)
    clip the gradient norm to grad_clip (if set)
    optimizer.step(); scheduler.step()

An update is any object with ``__call__(index, batch) -> metrics``, ``lr`` (or ``None``), ``state_dict()``
and ``load_state_dict(state)``: meta-RL's TRPO step is one (``quickstudy.rl.kind``).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..optim import build_optimizer, build_schedule
from ..precision import autocast_context
from ..tasks.batch import TaskBatch

__all__ = ["NonFiniteLossError", "GradientUpdate"]


class NonFiniteLossError(ValueError):
    """The meta-loss or a meta-gradient became NaN or infinite.

    Attributes:
        step: index of the failing step (``train_tasks[step]`` was the batch); parameters are as
            they were after ``step`` completed updates (the bad update was not applied).
        tensor: ``"loss"``, the name of the parameter whose gradient is non-finite, or
            ``"grad_norm"`` when every gradient is finite but their norm overflows.
    """

    def __init__(self, message: str, step: int, tensor: str):
        super().__init__(message)
        self.step = step
        self.tensor = tensor


def plain_metrics(owner: str, raw: Any) -> dict[str, float]:
    """``meta_backward``'s metrics as Python floats (``"loss"`` required)."""
    if not isinstance(raw, dict) or "loss" not in raw:
        raise TypeError(f"{owner}.meta_backward must return a dict of floats with 'loss', got {raw!r}")
    metrics = {}
    for key, value in raw.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[key] = float(value)
    return metrics


class GradientUpdate:
    """The optimizer step of a meta-learner (see the module docstring)."""

    def __init__(self, learner: nn.Module, *, steps: int, lr: float, optimizer: str | Callable = "adam",
                 optimizer_kwargs: dict[str, Any] | None = None, schedule: str | Callable | None = None,
                 schedule_options: dict[str, Any] | None = None, grad_clip: float | None = None,
                 precision: str = "float32", device: torch.device = torch.device("cpu"),
                 reduce_gradients: Callable[[nn.Module, dict[str, float], int], dict[str, float]] | None = None
                 ) -> None:
        self.learner, self.grad_clip, self.precision, self.device = learner, grad_clip, precision, device
        # (learner, metrics, tasks in this batch) -> metrics: makes .grad and metrics those of a larger batch
        self.reduce_gradients = reduce_gradients
        self.optimizer = self._build_optimizer(optimizer, lr, dict(optimizer_kwargs or {}))
        self.scheduler = build_schedule("Trainer", schedule, self.optimizer, steps, schedule_options)

    def _build_optimizer(self, spec, lr: float, kwargs: dict[str, Any]) -> torch.optim.Optimizer:
        params = [p for p in self.learner.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"Trainer: {type(self.learner).__name__} has no trainable parameters")
        if isinstance(spec, str):
            return build_optimizer("Trainer", spec.lower(), params, lr, **kwargs)
        if not callable(spec):
            raise ValueError(f"Trainer: optimizer must be a name, an Optimizer class or a factory; got {spec!r}")
        optimizer = spec(params, lr=lr, **kwargs)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Trainer: the optimizer factory returned a {type(optimizer).__name__}, expected a "
                            "torch.optim.Optimizer")
        return optimizer

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def __call__(self, index: int, batch: TaskBatch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.precision):
            metrics = plain_metrics(type(self.learner).__name__, self.learner.meta_backward(batch))
        if self.reduce_gradients is not None:
            metrics = self.reduce_gradients(self.learner, metrics, batch.batch_size)
        loss = metrics["loss"]
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss}) at step {index} (train_tasks[{index}], {batch.batch_size} tasks, "
                f"lr {self.lr:g}): the meta-loss diverged or the batch is bad. The update was not applied; try a "
                "lower lr, grad_clip=..., or check that batch's data", step=index, tensor="loss")
        metrics["grad_norm"] = self._check_and_clip(index, loss)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _check_and_clip(self, index: int, loss: float) -> float:
        named = [(name, p) for name, p in self.learner.named_parameters() if p.grad is not None]
        if not named:
            raise ValueError(
                f"{type(self.learner).__name__}.meta_backward left no gradient on any parameter at step {index}: "
                "nothing to optimise (is the meta-loss detached from the parameters?)")
        grads = [p.grad for _, p in named]
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        norm = float(total)
        if not math.isfinite(norm):
            bad = []
            for name, p in named:
                finite = torch.isfinite(p.grad)
                if not bool(finite.all()):
                    nans = int(torch.isnan(p.grad).sum())
                    bad.append((name, f"{name!r} (shape {tuple(p.shape)}: {nans} NaN and "
                                      f"{int((~finite).sum()) - nans} inf of {p.grad.numel()} gradient entries)"))
            if bad:
                also = f"; also {', '.join(b for _, b in bad[1:4])}{' ...' if len(bad) > 4 else ''}" if len(bad) > 1 else ""
                raise NonFiniteLossError(
                    f"non-finite gradient at step {index} (train_tasks[{index}]): parameter {bad[0][1]}, with a "
                    f"finite loss {loss:.6g}{also}. The update was not applied; try a lower lr, grad_clip=..., or "
                    "look for a log/div/sqrt of 0 in the model", step=index, tensor=bad[0][0])
            total = torch.nn.utils.get_total_norm([g.double() for g in grads], norm_type=2.0)
            norm = float(total)
            if not math.isfinite(norm):
                raise NonFiniteLossError(
                    f"the gradient norm overflows at step {index} (train_tasks[{index}]) although every gradient is "
                    "finite: training has diverged; lower lr or set grad_clip", step=index, tensor="grad_norm")
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_([p for _, p in named], self.grad_clip, total)
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if (self.scheduler is None) != (state["scheduler"] is None):
            have = "no schedule" if self.scheduler is None else "a schedule"
            was = "" if state["scheduler"] is not None else "not "
            raise ValueError(f"{source} was {was}written with an LR schedule but this Trainer has {have}")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
