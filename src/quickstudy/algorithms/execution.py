"""How the tasks of a meta-batch are executed: one place, used by every meta-learner that runs task by task.

An algorithm describes ONE task as a pure function of its meta-parameters (a dict / pytree of tensors)::

    task_fn(meta, task, run) -> (query_loss, query_outputs)        predict_fn(meta, task, run) -> query_outputs

where ``task`` is a :class:`~quickstudy.tasks.Task` (the four tensors of one task and the batch's ``ways`` and
``shots``) and ``run`` a :class:`Run`: the functional model to call (``run(params, x)``), whether the call is
inside ``torch.func`` (``run.use_func``) and whether the graph will be backpropagated only once
(``run.backward_once``). :class:`Execution` runs it over the B tasks of a :class:`~quickstudy.TaskBatch`:

``"loop"``
    A Python loop over the tasks. ``meta_backward`` calls ``(loss_i / B).backward()`` per task, so each
    task's graph is freed before the next is built: memory is one task's graph.
``"vmap"``
    ``torch.func.vmap`` over the task dimension (inner gradients with ``torch.func.grad``), then one backward
    through the mean: every task's graph is alive at once.
``"threads"``
    The loop split over ``W = torch.get_num_threads()`` worker threads (at most one per task and per core),
    each with ONE intra-op thread and its own copy of the module structure over the same parameter tensors
    (``functional_call`` swaps a module's tensors: not thread-safe on one module). Each worker sums
    ``d (loss_i / B) / d meta`` over its tasks in order; the main thread adds the W sums in worker order:
    deterministic for a given W, equal to the loop up to summation order. Refused while the model writes
    running statistics or draws random numbers in training mode. ``predict`` runs as the loop.
``"auto"``
    ``"vmap"`` on CUDA and for convolution-free models on CPU (their per-task work is a few tiny matrix
    products, so the loop is all Python overhead); ``"threads"`` for convolutional models on a CPU with at
    least 2 intra-op threads; ``"loop"`` otherwise. The choice depends on the device, the model and the thread
    count, never on timings (the measurements behind it are in docs/bench).

``meta_loss`` with gradients enabled (any strategy but an explicit ``"loop"`` and vmap) computes the meta-gradient
at once, as ``meta_backward`` does, and returns a mean whose backward only scales it: the README's
``meta_loss(batch)[0].backward()`` is as fast as ``meta_backward`` and gives the same gradient, bit for bit.

vmap is refused (``"auto"`` falls back) while the model is in training mode and contains a native
``nn.BatchNorm*`` layer (torch 2.13 returns silently wrong second-order gradients there) or a
:class:`~quickstudy.models.TaskBatchNorm` with ``policy="running"``. The strategy is resolved once per
(strategy, device, training modes, thread count) and cached.
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .._validation import check_choice
from ..models.batchnorm import TaskBatchNorm
from ..models.learner import Learner
from ..precision import autocast_state, enter_autocast
from ..tasks.batch import Task, TaskBatch
from .base import tree_tensors

__all__ = ["STRATEGIES", "Run", "Execution", "TaskFn", "vmap_obstacle", "threads_obstacle", "thread_workers"]

STRATEGIES = ("auto", "loop", "vmap", "threads")


@dataclass(frozen=True)
class Run:
    """How one task is being run (see the module docstring)."""

    model: Learner
    use_func: bool = False
    backward_once: bool = False

    def __call__(self, params: Any, x: Tensor) -> Tensor:
        return self.model(params, x, backward_once=self.backward_once)

    def replace(self, **changes: Any) -> "Run":
        return replace(self, **changes)


TaskFn = Callable[[Any, Task, Run], tuple[Tensor, Tensor]]


def vmap_obstacle(module: nn.Module) -> str | None:
    """Why ``module`` in its current mode cannot run under vmap, or ``None``."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training:
            return (f"{name or 'the model'} is a native {type(sub).__name__} in training mode: under torch.func.vmap "
                    "its second-order gradients are silently wrong in torch 2.13 (pytorch/functorch#534); use "
                    "quickstudy.models.TaskBatchNorm2d")
        if isinstance(sub, TaskBatchNorm) and sub.updates_running_stats:
            return (f"{name} is TaskBatchNorm(policy='running') in training mode: its running statistics cannot be "
                    "updated inside torch.func.vmap")
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


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="quickstudy-task")
        return pool


def _leaves(meta: Any, extra: list[Tensor]) -> list[Tensor]:
    """The distinct tensors of ``meta`` and ``extra`` that require gradients, in order."""
    seen: set[int] = set()
    leaves = []
    for leaf in tree_tensors(meta) + list(extra):
        if leaf.requires_grad and id(leaf) not in seen:
            seen.add(id(leaf))
            leaves.append(leaf)
    return leaves


def _sum_parts(leaves: list[Tensor], parts: list[list[Tensor | None]]) -> list[Tensor | None]:
    """Per leaf, the sum of its parts in the order given (deterministic); ``None`` where no part has one."""
    totals: list[Tensor | None] = []
    with torch.no_grad():
        for k in range(len(leaves)):
            terms = [p[k] for p in parts if p[k] is not None]
            total = terms[0] if terms else None
            for term in terms[1:]:
                total = total + term
            totals.append(total)
    return totals


class _MeanWithGradient(torch.autograd.Function):
    """The mean query loss whose meta-gradient is already known (``meta_loss``): its backward scales it."""

    @staticmethod
    def forward(ctx, value: Tensor, gradients: list[Tensor | None], *leaves: Tensor) -> Tensor:
        ctx.gradients = gradients
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError("meta_loss computed its meta-gradient task by task (as meta_backward does), so it "
                               "cannot be differentiated twice; build the meta-learner with strategy='loop' to keep "
                               "every task's graph for a create_graph backward")
        return (None, None, *[None if g is None else g * grad for g in ctx.gradients])


def _accumulate(leaves: list[Tensor], parts: list[list[Tensor | None]]) -> None:
    """``leaf.grad += sum of its parts`` (summed in the order given: deterministic)."""
    with torch.no_grad():
        for leaf, total in zip(leaves, _sum_parts(leaves, parts)):
            if total is None:
                continue
            if leaf.grad is None:
                leaf.grad = total.contiguous() if leaf.is_contiguous() else total
            else:
                leaf.grad.add_(total)


class Execution:
    """Runs one meta-learner's task functions over task batches on ``model`` (see the module docstring)."""

    def __init__(self, owner: str, model: nn.Module) -> None:
        self.owner, self.model, self.learner = owner, model, Learner(model)
        self._resolved: dict[tuple, str] = {}
        self._copies: tuple[tuple, list[Learner]] = ((), [])

    # ------------------------------------------------------------------ choosing a strategy
    def _signature(self) -> tuple:
        """What a resolution and the thread copies depend on, in one walk of the module tree."""
        modes, tensors, device = [], [], None
        for module in self.model.modules():
            modes.append((module.training, getattr(module, "kernels", None)))  # a model's kernel switch too
            for tensor in list(module._parameters.values()) + list(module._buffers.values()):
                if tensor is not None:
                    tensors.append(id(tensor))
                    device = device or tensor.device
        return (device or torch.device("cpu"), tuple(modes), tuple(tensors))

    def resolve(self, strategy: str, threads_ok: bool, signature: tuple | None = None) -> str:
        """The concrete strategy (``"loop"``, ``"vmap"`` or ``"threads"``) for the model as it is now.
        ``threads_ok``: the caller can run ``"threads"`` (``meta_backward``); elsewhere it runs as ``"loop"``."""
        check_choice(self.owner, "strategy", strategy, STRATEGIES)
        signature = signature or self._signature()
        key = (strategy, threads_ok, signature, torch.get_num_threads())
        if key not in self._resolved:
            self._resolved = {key: self._decide(strategy, threads_ok, signature[0])}  # one live entry is enough
        return self._resolved[key]

    def _decide(self, strategy: str, threads_ok: bool, device: torch.device) -> str:
        if strategy == "loop" or (strategy == "threads" and not threads_ok):
            return "loop"
        if strategy == "threads":
            obstacle = threads_obstacle(self.model)
            if obstacle is not None:
                raise ValueError(f"{self.owner}: strategy='threads' cannot run this model: {obstacle}; "
                                 "use strategy='loop'")
            return "threads"
        obstacle = vmap_obstacle(self.model)
        if strategy == "vmap":
            if obstacle is not None:
                raise ValueError(f"{self.owner}: strategy='vmap' cannot run this model: {obstacle}; "
                                 "or use strategy='loop'")
            return "vmap"
        convolutional = any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules())
        if obstacle is None and (device.type == "cuda" or not convolutional):
            return "vmap"
        if (threads_ok and device.type == "cpu" and convolutional and thread_workers(2) >= 2
                and threads_obstacle(self.model) is None):
            return "threads"
        return "loop"

    def thread_learners(self, count: int, signature: tuple | None = None) -> list[Learner]:
        """``count`` functional views, each over its own copy of the module structure sharing the model's
        parameter and buffer tensors; kept while the tensors and the modes are unchanged."""
        signature = signature or self._signature()
        key, learners = self._copies
        if key != signature:
            learners = []
            self._copies = (signature, learners)
        while len(learners) < count:
            shared = {id(t): t for t in list(self.model.parameters()) + list(self.model.buffers())}
            learner = Learner(copy.deepcopy(self.model, shared))
            # trace its accelerated program here, before any worker runs: torch.fx patches module calls
            # process-wide while it traces, which would turn another worker's forward into a trace
            learner.acceleration
            learners.append(learner)
        return learners[:count]

    # ------------------------------------------------------------------ running
    def meta_loss(self, task_fn: TaskFn, meta: Any, batch: TaskBatch, strategy: str,
                  extra_leaves: list[Tensor] = ()) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean query loss, per-task losses [B] detached, query outputs [B, ...] detached)``; the mean is
        differentiable with respect to ``meta``.

        With gradients enabled and any strategy but ``"loop"`` and ``"vmap"``, the meta-gradient is computed here,
        task by task as :meth:`meta_backward` does (threads, each task's graph freed after its backward, the
        query pass backpropagated once), and the mean's backward only scales it by its incoming gradient: so
        ``meta_loss(batch)[0].backward()`` costs what ``meta_backward(batch)`` does and gives the same gradient.
        That mean cannot be differentiated twice (an error says so): ``strategy="loop"`` keeps every task's
        graph alive until the caller's backward instead."""
        signature = self._signature()
        chosen = self.resolve(strategy, threads_ok=True, signature=signature)
        if chosen == "vmap":
            losses, outputs = self._vmapped(task_fn, meta, batch, with_loss=True)
            return losses.mean(), losses.detach(), outputs.detach()
        leaves = _leaves(meta, list(extra_leaves))
        inputs_need_grad = any(t.requires_grad for t in (batch.support_x, batch.query_x))
        if strategy != "loop" and torch.is_grad_enabled() and leaves and not inputs_need_grad:
            totals, losses, outputs = self._gradients(task_fn, meta, batch, chosen, signature, leaves)
            return _MeanWithGradient.apply(losses.mean(), totals, *leaves), losses, outputs
        run = Run(self.learner)
        losses, outputs = [], []
        for i in range(batch.batch_size):
            loss, out = task_fn(meta, batch.task(i), run)
            losses.append(loss)
            outputs.append(out.detach())
        stacked = torch.stack(losses)
        return stacked.mean(), stacked.detach(), torch.stack(outputs)

    def _gradients(self, task_fn: TaskFn, meta: Any, batch: TaskBatch, chosen: str, signature: tuple,
                   leaves: list[Tensor]) -> tuple[list[Tensor | None], Tensor, Tensor]:
        """``(d mean_i(loss_i) / d leaf for each leaf, per-task losses, outputs)``, summed in the order
        :meth:`meta_backward` accumulates them (the same numbers)."""
        workers = thread_workers(batch.batch_size) if chosen == "threads" else 1
        if workers > 1:
            parts, losses, outputs = self._threaded(task_fn, meta, batch, self.thread_learners(workers, signature),
                                                    leaves)
            return _sum_parts(leaves, parts), losses, outputs
        run = Run(self.learner, backward_once=True)
        scale = 1.0 / batch.batch_size
        total: list[Tensor | None] = [None] * len(leaves)
        losses, outputs = [], []
        for i in range(batch.batch_size):
            loss, out = task_fn(meta, batch.task(i), run)
            grads = torch.autograd.grad(loss * scale, leaves, allow_unused=True)
            total = [t if g is None else (g if t is None else t + g) for t, g in zip(total, grads)]
            losses.append(loss.detach())
            outputs.append(out.detach())
        return total, torch.stack(losses), torch.stack(outputs)

    def meta_backward(self, task_fn: TaskFn, meta: Any, batch: TaskBatch, strategy: str,
                      extra_leaves: list[Tensor] = ()) -> tuple[Tensor, Tensor]:
        """Accumulate ``d mean_i(loss_i) / d meta`` into ``.grad`` (of ``meta``'s tensors and ``extra_leaves``
        that require it); return ``(per-task losses, outputs)`` detached."""
        signature = self._signature()
        chosen = self.resolve(strategy, threads_ok=True, signature=signature)
        if chosen == "vmap":
            losses, outputs = self._vmapped(task_fn, meta, batch, with_loss=True)
            losses.mean().backward()
            return losses.detach(), outputs.detach()
        workers = thread_workers(batch.batch_size) if chosen == "threads" else 1
        if workers > 1:
            leaves = _leaves(meta, list(extra_leaves))
            parts, losses, outputs = self._threaded(task_fn, meta, batch, self.thread_learners(workers, signature),
                                                    leaves)
            _accumulate(leaves, parts)  # worker order: deterministic
            return losses, outputs
        run = Run(self.learner, backward_once=True)
        scale = 1.0 / batch.batch_size
        losses, outputs = [], []
        for i in range(batch.batch_size):
            loss, out = task_fn(meta, batch.task(i), run)
            (loss * scale).backward()
            losses.append(loss.detach())
            outputs.append(out.detach())
        return torch.stack(losses), torch.stack(outputs)

    def predict(self, predict_fn: Callable[[Any, Task, Run], Tensor], meta: Any, batch: TaskBatch,
                strategy: str) -> Tensor:
        """``predict_fn`` over the tasks, stacked and detached (inner loops there are first order: their graphs
        are backpropagated once)."""
        if self.resolve(strategy, threads_ok=False) == "vmap":
            return self._vmapped(predict_fn, meta, batch, with_loss=False).detach()
        run = Run(self.learner, backward_once=True)
        return torch.stack([predict_fn(meta, batch.task(i), run).detach() for i in range(batch.batch_size)])

    def _vmapped(self, fn: Callable, meta: Any, batch: TaskBatch, with_loss: bool):
        run = Run(self.learner, use_func=True)
        ways, shots = batch.ways, batch.shots

        def one(meta, sx, sy, qx, qy):
            return fn(meta, Task(sx, sy, qx, qy, ways, shots), run)

        mapped = torch.func.vmap(one, in_dims=(None, 0, 0, 0, 0), randomness="different")
        return mapped(meta, batch.support_x, batch.support_y, batch.query_x, batch.query_y)

    def _threaded(self, task_fn: TaskFn, meta: Any, batch: TaskBatch, learners: list[Learner],
                  leaves: list[Tensor]) -> tuple[list[list[Tensor | None]], Tensor, Tensor]:
        """Each worker's sum of ``d (loss_i / B) / d leaf`` over its tasks (in worker order), the losses, the
        outputs."""
        count, workers = batch.batch_size, len(learners)
        scale = 1.0 / count
        grad_mode, autocast = torch.is_grad_enabled(), autocast_state()  # thread-local in torch: re-entered
        chunks = [range(w * count // workers, (w + 1) * count // workers) for w in range(workers)]

        def work(w: int):
            torch.set_num_threads(1)
            run = Run(learners[w], backward_once=True)
            total: list[Tensor | None] = [None] * len(leaves)
            losses, outputs = [], []
            with torch.set_grad_enabled(grad_mode), contextlib.ExitStack() as stack:
                enter_autocast(stack, autocast)
                for i in chunks[w]:
                    loss, out = task_fn(meta, batch.task(i), run)
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
        return ([r[0] for r in results], torch.stack([loss for r in results for loss in r[1]]),
                torch.stack([out for r in results for out in r[2]]))
