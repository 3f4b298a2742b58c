"""The differentiable inner loop shared by MAML, FOMAML, Meta-SGD and ANIL, and their common shell.

One inner SGD step on a task's support set (x, y), with per-tensor step sizes ``alpha`` (a float, or a
dict of tensors for Meta-SGD)::

    phi_{j+1} = phi_j - alpha * grad_phi L(f(x; phi_j), y),        phi_0 = theta

``create_graph=True`` keeps the graph of the gradient (second order: the meta-gradient differentiates
through it); ``create_graph=False`` treats the inner gradient as a constant (first order: it is computed
on a detached copy, so no graph of the inner backward is ever built).

``use_func`` selects the autodiff API: ``torch.autograd.grad`` over the whole list of tensors at once and
``torch._foreach`` updates (the per-task loop), or ``torch.func.grad`` and list updates (inside
``torch.func.vmap``, where neither ``autograd.grad`` nor the foreach kernels have batching rules).
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_int, check_number
from ..models.fused_block import backward_once as backward_once_context
from ..models.learner import Learner
from ..tasks.batch import TaskBatch
from .base import MetaLearner, Predictor
from .losses import LossFn, resolve_loss, summarize
from .strategy import (GRADIENT_STRATEGIES, module_copies, resolve_strategy, run_meta_backward, run_meta_loss,
                       run_predict, thread_workers)

__all__ = ["inner_gradients", "sgd_step", "sgd_inner_loop", "GradientMetaLearner", "AdaptedPredictor",
           "uncached_autocast"]

Params = dict[str, Tensor]


@contextlib.contextmanager
def uncached_autocast() -> Iterator[None]:
    """Within an autocast region, stop caching casts. Autocast keeps the cast of every leaf that requires grad
    until the region ends. A first-order inner step's parameters are such leaves, made afresh each step: under
    bfloat16 the cache held every step's weights of every task of the meta-batch (a first-order 5-step
    meta-step had a peak RSS 80 MiB above float32's). Reptile's are leaves updated in place by its inner
    optimizer: the cache served the first step's cast to every later step."""
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False))
        yield


def inner_gradients(
    loss_of: Callable[[Params], Tensor], params: Params, *, create_graph: bool, use_func: bool
) -> tuple[Params, Tensor]:
    """``(d loss_of(params) / d params, loss value)``; see the module docstring for the flags."""
    if use_func:
        if not create_graph:
            params = {k: v.detach() for k, v in params.items()}
        grads, loss = torch.func.grad_and_value(loss_of)(params)  # detached params: constant gradients
        return grads, loss.detach()
    if create_graph and not all(v.requires_grad for v in params.values()):
        create_graph = False  # nothing to differentiate through (e.g. meta_loss called under no_grad)
    with torch.enable_grad(), (contextlib.nullcontext() if create_graph else uncached_autocast()):
        leaves = params if create_graph else {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = loss_of(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, materialize_grads=True)
    return dict(zip(leaves.keys(), grads)), loss.detach()


def sgd_step(params: Params, grads: Params, lr: float | Mapping[str, Tensor], *, use_func: bool) -> Params:
    """``params - lr * grads``, tensor by tensor (``lr`` a float or a dict of tensors shaped like ``params``)."""
    keys = list(params)
    ps, gs = [params[k] for k in keys], [grads[k] for k in keys]
    if isinstance(lr, Mapping):
        rates = [lr[k] for k in keys]
        if use_func:
            new = [p - a * g for p, a, g in zip(ps, rates, gs)]
        else:
            new = torch._foreach_sub(ps, torch._foreach_mul(gs, rates))
    elif use_func:
        new = [p - lr * g for p, g in zip(ps, gs)]
    else:
        new = torch._foreach_add(ps, gs, alpha=-lr)
    return dict(zip(keys, new))


def sgd_inner_loop(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    create_graph: bool,
    use_func: bool,
) -> tuple[Params, list[Tensor]]:
    """``steps`` SGD steps of ``loss_fn(forward(params, x), y)``; returns the fast weights and the support loss
    before each step (detached)."""
    fast = dict(params)
    losses = []
    for _ in range(steps):
        grads, loss = inner_gradients(lambda p: loss_fn(forward(p, x), y), fast, create_graph=create_graph,
                                      use_func=use_func)
        fast = sgd_step(fast, grads, lr, use_func=use_func)
        losses.append(loss)
    return fast, losses


def detach_tree(tree: Any) -> Any:
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, Mapping):
        return {k: detach_tree(v) for k, v in tree.items()}
    return tree


def _all_finite(tensors: list[Tensor]) -> bool:
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


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


def check_task(owner: str, support_x: Tensor, support_y: Tensor, model: nn.Module | None = None) -> None:
    """One unbatched task: ``support_x [n, ...]`` and ``support_y [n, ...]`` with n >= 1."""
    if not isinstance(support_x, Tensor) or not isinstance(support_y, Tensor):
        raise TypeError(f"{owner}.adapt: support_x and support_y must be tensors")
    if support_x.dim() < 1 or support_y.dim() < 1 or support_x.shape[0] != support_y.shape[0] or support_x.shape[0] == 0:
        raise ValueError(
            f"{owner}.adapt takes one task: support_x [n, ...] and support_y [n, ...] with the same n >= 1; got "
            f"{tuple(support_x.shape)} and {tuple(support_y.shape)} (for a TaskBatch use predict)"
        )


class GradientMetaLearner(MetaLearner):
    """Shell for meta-learners whose adaptation is a differentiable inner loop (MAML and relatives).

    A subclass defines the maths of one task:

    * :meth:`meta_parameters` -> the meta-parameters as a dict (pytree) of tensors,
    * :meth:`inner_adapt` ``(meta, support_x, support_y, steps, create_graph, use_func) -> (fast, losses)``,
    * :meth:`forward_adapted` ``(meta, fast, x) -> outputs``,

    and inherits ``meta_loss``, ``meta_backward``, ``adapt`` and ``predict`` run by the strategy of
    :mod:`quickstudy.algorithms.strategy`. Adaptation at evaluation (``adapt``/``predict`` with
    ``steps=None``) uses ``eval_steps`` (default: ``inner_steps``), always first order.
    """

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
        if isinstance(model, Learner):
            model = model.module
        if not isinstance(model, nn.Module):
            raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.learner = Learner(model)  # a plain object: registers nothing
        self.inner_lr = check_number(owner, "inner_lr", inner_lr)
        self.inner_steps = check_int(owner, "inner_steps", inner_steps, minimum=0)
        self.eval_steps = None if eval_steps is None else check_int(owner, "eval_steps", eval_steps, minimum=0)
        self.first_order = check_bool(owner, "first_order", first_order)
        self.strategy = check_choice(owner, "strategy", strategy, GRADIENT_STRATEGIES)
        self.loss = loss
        self.loss_fn, self.task_type = resolve_loss(owner, loss, task_type)
        if not self.learner.params():
            raise ValueError(f"{owner}: the model has no trainable parameters")

    # ----------------------------------------------------------------- the maths (subclasses)
    def meta_parameters(self) -> dict[str, Any]:
        return {"params": self.learner.params()}

    def inner_adapt(self, meta, support_x, support_y, steps: int, create_graph: bool, use_func: bool):
        raise NotImplementedError

    def forward_adapted(self, meta, fast, x: Tensor) -> Tensor:
        raise NotImplementedError

    def task_loss(self, meta, support_x, support_y, query_x, query_y, use_func: bool,
                  backward_once: bool = False) -> tuple[Tensor, Tensor]:
        """Outer loss of one task: ``L(f(query_x; adapt(theta, support)), query_y)`` and the query outputs.

        ``backward_once``: the caller backpropagates the loss once, without ``create_graph`` (meta_backward),
        so the query pass, and a first-order inner loop, may keep less for it (models/fused_block.py)."""
        once = backward_once_context if backward_once else contextlib.nullcontext
        with once() if self.first_order else contextlib.nullcontext():
            fast, _ = self.inner_adapt(meta, support_x, support_y, self.inner_steps, not self.first_order, use_func)
        with once():
            outputs = self.forward_adapted(meta, fast, query_x)
        return self.loss_fn(outputs, query_y), outputs

    # ----------------------------------------------------------------- the shared interface
    def _check_batch(self, batch: TaskBatch) -> None:
        owner = type(self).__name__
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"{owner}: expected a TaskBatch, got {type(batch).__name__}")
        if (self.task_type == "classification") != batch.is_classification:
            kind = "classification" if batch.is_classification else "regression"
            raise ValueError(
                f"{owner} is set up for {self.task_type} (loss={self.loss!r}) but got a {kind} batch"
            )
        ways = getattr(self.model, "ways", None)
        if batch.is_classification and batch.ways is not None and isinstance(ways, int) and batch.ways > ways:
            raise ValueError(f"{owner}: the model's head has {ways} outputs but the batch is {batch.ways}-way")

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.inner_steps if self.eval_steps is None else self.eval_steps
        return check_int(f"{type(self).__name__}.adapt", "steps", steps, minimum=0)

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        self._check_batch(batch)
        strategy = resolve_strategy(type(self).__name__, self.strategy, self.model)
        loss, losses, outputs = run_meta_loss(self.task_loss, self.meta_parameters(), batch, strategy)
        return loss, summarize(losses, outputs, batch.query_y)

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        self._check_batch(batch)
        strategy = resolve_strategy(type(self).__name__, self.strategy, self.model, threads_ok=True)
        workers = None
        if strategy == "threads":
            workers = [partial(w.task_loss, backward_once=True)
                       for w in self._thread_clones(thread_workers(batch.batch_size))]
        losses, outputs = run_meta_backward(partial(self.task_loss, backward_once=True), self.meta_parameters(),
                                            batch, strategy, workers, [p for p in self.parameters() if p.requires_grad])
        return summarize(losses, outputs, batch.query_y)

    def _thread_clones(self, count: int) -> list["GradientMetaLearner"]:
        """``count`` shallow copies of this meta-learner for worker threads, each with its own copy of the
        model's module structure over the SAME parameter and buffer tensors (:func:`~.strategy.module_copies`).
        Cached while the tensors and modes are unchanged."""
        cache = self.__dict__.setdefault("_thread_cache", {})
        models = module_copies(self.model, count, cache)  # clears the cache when the tensors or modes changed
        clones = cache.setdefault("clones", {})
        result = []
        for model in models:
            if id(model) not in clones:
                mapping = {id(a): b for a, b in zip(self.model.modules(), model.modules())}
                clone = object.__new__(type(self))
                state = {k: v for k, v in self.__dict__.items() if k != "_thread_cache"}
                state["_modules"] = dict(self._modules)
                for k, v in list(state["_modules"].items()):
                    if v is not None and id(v) in mapping:
                        state["_modules"][k] = mapping[id(v)]
                for k, v in list(state.items()):
                    if isinstance(v, nn.Module) and id(v) in mapping:  # e.g. ANIL's view of its head module
                        state[k] = mapping[id(v)]
                state["learner"] = Learner(model)
                clone.__dict__.update(state)
                clones[id(model)] = clone
            result.append(clones[id(model)])
        return result

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        owner = type(self).__name__
        check_task(owner, support_x, support_y)
        steps = self._steps(steps)
        meta = detach_tree(self.meta_parameters())
        with torch.no_grad():
            fast, losses = self.inner_adapt(meta, support_x, support_y, steps, False, False)
        if not _all_finite(losses + [t for t in _leaves(fast)]):
            values = [float(v) for v in losses]
            raise FloatingPointError(
                f"{owner}.adapt: the support loss or the adapted weights became non-finite during {steps} inner "
                f"steps (support losses before each step: {values}); lower inner_lr={self.inner_lr} or check the inputs"
            )
        return AdaptedPredictor(lambda x: self.forward_adapted(meta, fast, x), [float(v) for v in losses])

    def _predict_task(self, meta, support_x, support_y, query_x, use_func: bool, steps: int = 0) -> Tensor:
        fast, _ = self.inner_adapt(meta, support_x, support_y, steps, False, use_func)
        return self.forward_adapted(meta, fast, query_x)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        self._check_batch(batch)
        steps = self._steps(steps)
        strategy = resolve_strategy(type(self).__name__, self.strategy, self.model)
        meta = detach_tree(self.meta_parameters())
        with torch.no_grad():
            return run_predict(lambda *a, use_func: self._predict_task(*a, use_func=use_func, steps=steps),
                               meta, batch, strategy)

    def extra_repr(self) -> str:
        return (f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, first_order={self.first_order}, "
                f"loss={self.loss!r}, strategy={self.strategy!r}")


def _leaves(tree: Any) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, Mapping):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return []
