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
``"threads"`` (gradient meta-learners: MAML, FOMAML, Meta-SGD, ANIL; and ProtoNet)
    The per-task loop of ``"loop"`` split over ``W = torch.get_num_threads()`` Python worker threads (at
    most one per task and per CPU core), each running its share of the tasks with ONE intra-op thread and
    its own copy of the module structure (``torch.func.functional_call`` is not thread-safe on one module;
    the parameter tensors are shared). Each worker sums ``d (loss_i / B) / d meta`` over its tasks in task
    order with ``torch.autograd.grad``; the main thread adds the W sums in worker order: deterministic for a
    given W, equal to the loop up to summation order. Memory is W task graphs. Refused while the model
    writes running statistics or draws random numbers in training mode (batch norm with running
    statistics, dropout): shared state updated from several threads. Only ``meta_backward`` runs threaded;
    ``meta_loss`` and ``predict`` run as the loop.
``"auto"``
    ``"vmap"`` on CUDA, ``"loop"`` elsewhere; ``"threads"`` in place of ``"loop"`` on CPU for convolutional
    models when at least 2 intra-op threads are allowed (gradient meta-learners only; the choice depends on
    the thread count and the model, never on timings). Measured for MAML, Conv4, 5-way 1-shot, 15 queries per class,
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

import contextlib
import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..models.batchnorm import TaskBatchNorm
from ..tasks.batch import TaskBatch

__all__ = ["STRATEGIES", "GRADIENT_STRATEGIES", "TaskFn", "module_copies", "resolve_strategy", "run_meta_loss",
           "run_meta_backward", "run_predict", "threads_obstacle", "thread_workers"]

STRATEGIES = ("auto", "loop", "vmap")
#: the strategies of the meta-learners whose shell provides per-thread task functions (the gradient
#: meta-learners and ProtoNet)
GRADIENT_STRATEGIES = STRATEGIES + ("threads",)

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


def threads_obstacle(module: nn.Module) -> str | None:
    """Why ``module`` in its current mode cannot run tasks in parallel threads, or ``None``."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training and sub.track_running_stats:
            return (f"{name or 'the model'} is a native {type(sub).__name__} updating running statistics: "
                    "threads would update them concurrently")
        if isinstance(sub, TaskBatchNorm) and sub.updates_running_stats:
            return (f"{name} is TaskBatchNorm(policy='running') in training mode: threads would update its running "
                    "statistics concurrently")
        if isinstance(sub, nn.modules.dropout._DropoutNd) and sub.training and sub.p > 0:
            return f"{name} is {type(sub).__name__} in training mode: its random draws would depend on thread timing"
    return None


def thread_workers(batch_size: int) -> int:
    """How many worker threads ``"threads"`` uses for ``batch_size`` tasks: one per allowed intra-op thread."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, batch_size))


def module_copies(model: nn.Module, count: int, cache: dict) -> list[nn.Module]:
    """``count`` copies of ``model``'s module structure over the SAME parameter and buffer tensors, one per worker
    thread (``functional_call`` swaps a module's tensors: not thread-safe on one module). Kept in ``cache`` (the
    caller's dict) while the tensors and the training modes are unchanged; ``cache`` is cleared otherwise."""
    key = (tuple(id(t) for t in model.parameters()), tuple(id(t) for t in model.buffers()),
           tuple(m.training for m in model.modules()))
    if cache.get("key") != key:
        cache.clear()
        cache.update(key=key, copies=[])
    copies = cache["copies"]
    while len(copies) < count:
        shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
        copies.append(copy.deepcopy(model, shared))
    return copies[:count]


def _has_convolution(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())


def resolve_strategy(owner: str, strategy: str, module: nn.Module, threads_ok: bool = False) -> str:
    """The concrete strategy (``"loop"``, ``"vmap"`` or ``"threads"``) for ``module`` in its current mode and
    device. ``threads_ok``: the caller can run ``"threads"`` (it provides per-thread task functions); for other
    callers (``meta_loss``, ``predict``) ``"threads"`` runs as ``"loop"``."""
    if strategy == "loop":
        return "loop"
    if strategy == "threads":
        if not threads_ok:  # meta_loss and predict: the tasks' graphs or outputs are kept together anyway
            return "loop"
        obstacle = threads_obstacle(module)
        if obstacle is not None:
            raise ValueError(f"{owner}: strategy='threads' cannot run this model: {obstacle}; use strategy='loop'")
        return "threads"
    obstacle = vmap_obstacle(module)
    if strategy == "vmap":
        if obstacle is not None:
            raise ValueError(f"{owner}: strategy='vmap' cannot run this model: {obstacle}; or use strategy='loop'")
        return "vmap"
    if strategy == "auto":
        device = _device_of(module)
        if obstacle is None and (device.type == "cuda" or not _has_convolution(module)):
            return "vmap"
        if (threads_ok and device.type == "cpu" and _has_convolution(module) and thread_workers(2) >= 2
                and threads_obstacle(module) is None):
            return "threads"
        return "loop"
    allowed = GRADIENT_STRATEGIES if threads_ok else STRATEGIES
    raise ValueError(f"{owner}: strategy must be one of {', '.join(repr(s) for s in allowed)}; got {strategy!r}")


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


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quickstudy-task")
        return pool


def _autocast_state() -> list[tuple[str, torch.dtype]]:
    """The autocast contexts active in this thread, as ``(device_type, dtype)`` pairs."""
    return [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
            if torch.is_autocast_enabled(device)]


def _threaded_backward(worker_fns: list[TaskFn], meta: Any, batch: TaskBatch,
                       extra_leaves: list[Tensor]) -> tuple[Tensor, Tensor]:
    sx, sy, qx, qy = _fields(batch)
    B = batch.batch_size
    workers = min(len(worker_fns), B)
    scale = 1.0 / B
    seen: set[int] = set()
    leaves = []
    for leaf in torch.utils._pytree.tree_leaves(meta) + list(extra_leaves):
        if isinstance(leaf, Tensor) and leaf.requires_grad and id(leaf) not in seen:
            seen.add(id(leaf))
            leaves.append(leaf)
    grad_mode = torch.is_grad_enabled()
    autocast = _autocast_state()  # thread-local in torch: re-entered in each worker
    chunks = [range(w * B // workers, (w + 1) * B // workers) for w in range(workers)]

    def work(w: int):
        torch.set_num_threads(1)
        fn = worker_fns[w]
        total: list[Tensor | None] = [None] * len(leaves)
        losses, outputs = [], []
        with torch.set_grad_enabled(grad_mode), contextlib.ExitStack() as stack:
            for device_type, dtype in autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype))
            for i in chunks[w]:
                loss, out = fn(meta, sx[i], sy[i], qx[i], qy[i], use_func=False)
                grads = torch.autograd.grad(loss * scale, leaves, allow_unused=True)
                for k, g in enumerate(grads):
                    if g is not None:
                        total[k] = g if total[k] is None else total[k] + g
                losses.append(loss.detach())
                outputs.append(out.detach())
        return total, losses, outputs

    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one intra-op thread per worker (the OpenMP setting is process-wide)
    try:
        results = [f.result() for f in [_pool(workers).submit(work, w) for w in range(workers)]]
    finally:
        torch.set_num_threads(previous)
    with torch.no_grad():
        for k, leaf in enumerate(leaves):
            parts = [r[0][k] for r in results if r[0][k] is not None]  # worker order: deterministic
            if not parts:
                continue
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            if leaf.grad is None:
                leaf.grad = total.contiguous() if leaf.is_contiguous() else total
            else:
                leaf.grad.add_(total)
    losses = [loss for r in results for loss in r[1]]
    outputs = [out for r in results for out in r[2]]
    return torch.stack(losses), torch.stack(outputs)


def run_meta_backward(task_fn: TaskFn, meta: Any, batch: TaskBatch, strategy: str,
                      worker_fns: list[TaskFn] | None = None, extra_leaves: list[Tensor] = ()) -> tuple[Tensor, Tensor]:
    """Accumulate ``d mean_i(loss_i) / d meta`` into ``.grad``; return ``(per-task losses, outputs)`` detached.

    With ``"loop"`` each task is backpropagated on its own, scaled by 1/B, and its graph freed at once.
    With ``"threads"``, ``worker_fns`` holds one task function per worker thread (each on its own module
    structure) and the gradients go to the tensors of ``meta`` and ``extra_leaves`` that require them.
    """
    if strategy == "threads":
        if not worker_fns:
            raise ValueError("run_meta_backward: strategy 'threads' needs worker_fns, one task function per thread")
        if len(worker_fns) > 1 and batch.batch_size > 1:
            return _threaded_backward(worker_fns, meta, batch, list(extra_leaves))
        strategy = "loop"
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
