"""How the tasks of a meta-batch are executed: one place, used by every gradient-based meta-learner.

An algorithm describes ONE task as a pure function of its meta-parameters (a dict / pytree of tensors)::

    task_fn(meta, support_x, support_y, query_x, query_y, use_func) -> (query_loss, query_outputs)

and this module runs it over the B tasks of a :class:`~quickstudy.TaskBatch`:

``"loop"``
    A Python loop over the tasks. ``meta_backward`` calls ``(loss_i / B).backward()`` per task, so each
    task's graph is freed before the next is built: memory is one task's graph. Inner gradients use
    ``torch.autograd.grad`` (``use_func=False``).
``"vmap"``
    ``torch.func.vmap`` over the task dimension (inner gradients with ``torch.func.grad``,
    ``use_func=True``), then one backward through the mean: every task's graph is alive at once.
``"auto"``
    ``"vmap"`` on CUDA, ``"loop"`` elsewhere. Measured for MAML, Conv4, 5-way 1-shot, 15 queries per class,
    meta-batch 32, one inner step: on an H100, vmap took 37 ms (second order) / 30 ms (first order) per
    meta-batch against 443 / 172 ms for the loop, with 2.7 GiB against 0.15 GiB of GPU memory; on 2 CPU
    cores the loop was 1.9x faster than vmap with a fifth of the memory (DESIGN.md, "Pitfalls", saw
    2.9-5.5x and 7-22x on these machines): vmap keeps every task's graph alive at once. Models without
    convolutions are the exception on CPU: their per-task work is a few tiny GEMMs, so the loop is all
    Python overhead, and vmap wins (sinusoid MLP 1-40-40-1, K=10, meta-batch 25, 2 cores: 3.6 ms per
    meta-batch with vmap against 21.5 ms with the loop). So ``"auto"`` is vmap on CUDA and for
    convolution-free models, the loop otherwise.

Both strategies give the same meta-gradient (tests check it in float64 at second order with batch norm).
vmap is refused (``"auto"`` falls back to the loop) while the model is in training mode and contains a
native ``nn.BatchNorm*`` layer (silently wrong second-order gradients under vmap in torch 2.13) or a
:class:`~quickstudy.models.TaskBatchNorm` with ``policy="running"`` (running statistics cannot be
written from inside vmap).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..models.batchnorm import TaskBatchNorm
from ..tasks.batch import TaskBatch

__all__ = ["STRATEGIES", "TaskFn", "resolve_strategy", "run_meta_loss", "run_meta_backward", "run_predict"]

STRATEGIES = ("auto", "loop", "vmap")

TaskFn = Callable[..., tuple[Tensor, Tensor]]


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def vmap_obstacle(module: nn.Module) -> str | None:
    """Why ``module`` in its current mode cannot run under vmap, or ``None``."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            return (
                f"{name or 'the model'} is a native {type(sub).__name__} in training mode: under torch.func.vmap "
                "its second-order gradients are silently wrong in torch 2.13 (DESIGN.md, Pitfalls); use "
                "quickstudy.models.TaskBatchNorm2d"
            )
        if isinstance(sub, TaskBatchNorm) and sub.updates_running_stats:
            return (
                f"{name} is TaskBatchNorm(policy='running') in training mode: its running statistics cannot be "
                "updated inside torch.func.vmap"
            )
    return None


def _has_convolution(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def resolve_strategy(owner: str, strategy: str, module: nn.Module) -> str:
    """The concrete strategy (``"loop"`` or ``"vmap"``) for ``module`` in its current mode and device."""
    if strategy == "loop":
        return "loop"
    obstacle = vmap_obstacle(module)
    if strategy == "vmap":
        if obstacle is not None:
            raise ValueError(f"{owner}: strategy='vmap' cannot run this model: {obstacle}; or use strategy='loop'")
        return "vmap"
    if strategy == "auto":
        if obstacle is not None:
            return "loop"
        if _device_of(module).type == "cuda" or not _has_convolution(module):
            return "vmap"
        return "loop"
    raise ValueError(f"{owner}: strategy must be one of {', '.join(repr(s) for s in STRATEGIES)}; got {strategy!r}")


def _fields(batch: TaskBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return batch.support_x, batch.support_y, batch.query_x, batch.query_y


def run_meta_loss(task_fn: TaskFn, meta: Any, batch: TaskBatch, strategy: str) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean query loss, per-task losses [B] detached, query outputs [B, ...] detached)``; the mean keeps its
    graph to ``meta``. Every task's graph is alive until the caller's backward."""
    sx, sy, qx, qy = _fields(batch)
    if strategy == "vmap":
        fn = torch.func.vmap(partial(task_fn, use_func=True), in_dims=(None, 0, 0, 0, 0), randomness="different")
        losses, outputs = fn(meta, sx, sy, qx, qy)
        return losses.mean(), losses.detach(), outputs.detach()
    losses, outputs = [], []
    for i in range(batch.batch_size):
        loss, out = task_fn(meta, sx[i], sy[i], qx[i], qy[i], use_func=False)
        losses.append(loss)
        outputs.append(out.detach())
    stacked = torch.stack(losses)
    return stacked.mean(), stacked.detach(), torch.stack(outputs)


def run_meta_backward(task_fn: TaskFn, meta: Any, batch: TaskBatch, strategy: str) -> tuple[Tensor, Tensor]:
    """Accumulate ``d mean_i(loss_i) / d meta`` into ``.grad``; return ``(per-task losses, outputs)`` detached.

    With ``"loop"`` each task is backpropagated on its own, scaled by 1/B, and its graph freed at once.
    """
    if strategy == "vmap":
        loss, losses, outputs = run_meta_loss(task_fn, meta, batch, strategy)
        loss.backward()
        return losses, outputs
    sx, sy, qx, qy = _fields(batch)
    scale = 1.0 / batch.batch_size
    losses, outputs = [], []
    for i in range(batch.batch_size):
        loss, out = task_fn(meta, sx[i], sy[i], qx[i], qy[i], use_func=False)
        (loss * scale).backward()
        losses.append(loss.detach())
        outputs.append(out.detach())
    return torch.stack(losses), torch.stack(outputs)


def run_predict(predict_fn: Callable[..., Tensor], meta: Any, batch: TaskBatch, strategy: str) -> Tensor:
    """``predict_fn(meta, support_x, support_y, query_x, use_func) -> query outputs`` over the tasks, stacked."""
    sx, sy, qx, _ = _fields(batch)
    if strategy == "vmap":
        fn = torch.func.vmap(partial(predict_fn, use_func=True), in_dims=(None, 0, 0, 0), randomness="different")
        return fn(meta, sx, sy, qx).detach()
    return torch.stack([predict_fn(meta, sx[i], sy[i], qx[i], use_func=False).detach()
                        for i in range(batch.batch_size)])
