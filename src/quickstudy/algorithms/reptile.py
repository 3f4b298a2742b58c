r"""Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999).

For each task i of the batch, starting from theta:

    inner loop:    phi_i = k steps of SGD (or Adam) on L(f(B_i^j.x; phi), B_i^j.y),   phi_i^0 = theta
                   (D_i = the support set, or support + query with inner_data="support+query";
                    B_i^j = D_i, or with inner_batch=b the j-th mini-batch of b examples drawn from
                    D_i without replacement, reshuffled when exhausted, as in the paper's code)
    outer update:  theta <- theta + epsilon * 1/B * sum_i (phi_i - theta)

The outer update is not the gradient of any loss, so there is no ``meta_loss`` (it raises). Instead
``meta_backward`` writes the *Reptile direction* into ``.grad``::

    theta.grad += theta - mean_i(phi_i)

so that ``torch.optim.SGD(reptile.parameters(), lr=epsilon).step()`` performs exactly the update above
(Adam or a schedule on the outer step also work, as in the paper's experiments); :class:`quickstudy.Trainer`
does the zero_grad, meta_backward and step.

Inner loop as implemented: a fresh optimizer per task (the paper's Adam, beta1 = 0 by default here, as in
its few-shot runs); each step sees the whole inner data set unless ``inner_batch`` is set (the authors'
Omniglot commands make the k steps one pass over the inner set, e.g. 12 batches of 5 from 5-way x 12-shot).
Evaluation adapts for ``eval_steps`` steps (default ``inner_steps``; the authors used 50-100) on mini-batches
of ``eval_batch`` support examples (default: the whole support set).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_number
from ..models.learner import Learner
from ..optim import OPTIMIZERS, build_optimizer
from ..precision import uncached_autocast
from ..tasks.batch import TaskBatch
from .base import AdaptedPredictor, MetaLearner, Predictor, all_finite, check_batch, check_task, unwrap_model
from .losses import resolve_loss, summarize

__all__ = ["Reptile"]

INNER_DATA = ("support", "support+query")


class Reptile(MetaLearner):
    """``Reptile(model, inner_lr=0.001, inner_steps=5, inner_optimizer="adam", eval_steps=None,
    loss="cross_entropy", inner_data="support", adam_beta1=0.0, adam_beta2=0.999, inner_batch=None,
    eval_batch=None)``."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.001,
        inner_steps: int = 5,
        inner_optimizer: str = "adam",
        eval_steps: int | None = None,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        inner_data: str = "support",
        adam_beta1: float = 0.0,
        adam_beta2: float = 0.999,
        task_type: str | None = None,
        inner_batch: int | None = None,
        eval_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.model = unwrap_model("Reptile", model)
        self.learner = Learner(self.model)
        self.inner_lr = check_number("Reptile", "inner_lr", inner_lr)
        self.inner_steps = check_int("Reptile", "inner_steps", inner_steps, minimum=1)
        self.eval_steps = check_int("Reptile", "eval_steps", eval_steps, minimum=0, allow_none=True)
        self.inner_optimizer = check_choice("Reptile", "inner_optimizer", inner_optimizer, OPTIMIZERS)
        self.inner_data = check_choice("Reptile", "inner_data", inner_data, INNER_DATA)
        for name, beta in (("adam_beta1", adam_beta1), ("adam_beta2", adam_beta2)):
            if check_number("Reptile", name, beta, allow_zero=True) >= 1:
                raise ValueError(f"Reptile: {name} must be in [0, 1), got {beta!r}")
        self.betas = (float(adam_beta1), float(adam_beta2))
        self.inner_batch = check_int("Reptile", "inner_batch", inner_batch, allow_none=True)
        self.eval_batch = check_int("Reptile", "eval_batch", eval_batch, allow_none=True)
        self.loss = loss
        self.loss_fn, self.task_type = resolve_loss("Reptile", loss, task_type)

    # ------------------------------------------------------------------ the maths
    def _inner(self, x: Tensor, y: Tensor, steps: int, batch_size: int | None = None) -> tuple[dict[str, Tensor], list[Tensor]]:
        """phi after ``steps`` optimizer steps from theta on (x, y) (mini-batches of ``batch_size``), detached;
        and the loss before each step."""
        phi = {k: v.detach().clone().requires_grad_(True) for k, v in self.learner.params().items()}
        tensors = list(phi.values())
        opt = build_optimizer("Reptile", self.inner_optimizer, tensors, self.inner_lr, strict=False, betas=self.betas)
        losses = []
        batches = _mini_batches(len(x), batch_size, steps)
        # uncached: autocast would serve phi's first cast to every later step (phi is updated in place)
        with torch.enable_grad(), uncached_autocast():
            for index in batches:
                xb, yb = (x, y) if index is None else (x[index.to(x.device)], y[index.to(y.device)])
                # each step's graph is backpropagated once: the model's kernels may keep less for it
                loss = self.loss_fn(self.learner(phi, xb, backward_once=True), yb)
                for t, g in zip(tensors, torch.autograd.grad(loss, tensors, materialize_grads=True)):
                    t.grad = g
                opt.step()
                losses.append(loss.detach())
        return {k: v.detach() for k, v in phi.items()}, losses

    def meta_loss(self, batch: TaskBatch):
        raise NotImplementedError(
            "Reptile has no meta-loss: its outer update theta += eps * mean(phi - theta) is not the gradient of "
            "a loss. Use meta_backward(batch) (writes theta - mean(phi) into .grad) then optimizer.step(), "
            "(quickstudy.Trainer does both)."
        )

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        """``.grad += theta - mean_i(phi_i)``; metrics are the query loss/accuracy of the adapted phi_i."""
        self._check_batch(batch)
        params = self.learner.params()
        total = [torch.zeros_like(p, memory_format=torch.preserve_format).detach() for p in params.values()]
        losses, outputs = [], []
        for task in batch:
            if self.inner_data == "support":
                x, y = task.support_x, task.support_y
            else:
                x = torch.cat([task.support_x, task.query_x])
                y = torch.cat([task.support_y, task.query_y])
            phi, _ = self._inner(x, y, self.inner_steps, self.inner_batch)
            torch._foreach_add_(total, [phi[k] for k in params])
            with torch.no_grad():
                out = self.learner(phi, task.query_x)
                losses.append(self.loss_fn(out, task.query_y))
                outputs.append(out)
        with torch.no_grad():
            scale = 1.0 / batch.batch_size
            for p, s in zip(params.values(), total):
                direction = p.detach() - s * scale
                if p.grad is None:
                    p.grad = direction
                else:
                    p.grad.add_(direction)
        return summarize(torch.stack(losses), torch.stack(outputs), batch.query_y)

    def meta_step(self, batch: TaskBatch, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Deprecated: ``optimizer.zero_grad(); meta_backward(batch); optimizer.step()`` (what the Trainer does)."""
        warnings.warn("Reptile.meta_step is deprecated: call meta_backward(batch) then optimizer.step(), or train "
                      "with quickstudy.Trainer", DeprecationWarning, stacklevel=2)
        optimizer.zero_grad()
        metrics = self.meta_backward(batch)
        optimizer.step()
        return metrics

    # ------------------------------------------------------------------ the shared interface
    def _check_batch(self, batch: TaskBatch) -> TaskBatch:
        return check_batch("Reptile", batch, self.task_type, self.loss)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        check_task("Reptile", support_x, support_y)
        if steps is None:
            steps = self.inner_steps if self.eval_steps is None else self.eval_steps
        else:
            check_int("Reptile.adapt", "steps", steps, minimum=0)
        phi, losses = self._inner(support_x, support_y, steps, self.eval_batch)
        if not all_finite(losses + list(phi.values())):
            raise FloatingPointError(
                f"Reptile.adapt: the support loss or the adapted weights became non-finite during {steps} steps "
                f"(losses {[float(v) for v in losses]}); lower inner_lr={self.inner_lr} or check the inputs"
            )
        return AdaptedPredictor(lambda x: self.learner(phi, x), [float(v) for v in losses])

    def extra_repr(self) -> str:
        return (f"inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, inner_optimizer={self.inner_optimizer!r}, "
                f"inner_data={self.inner_data!r}, inner_batch={self.inner_batch}, eval_batch={self.eval_batch}, "
                f"loss={self.loss!r}")


def _mini_batches(n: int, batch_size: int | None, count: int) -> list[Tensor | None]:
    """``count`` index batches of ``batch_size`` over ``n`` examples: consecutive slices of a stream of random
    permutations (so every example is seen once per epoch); ``None`` (the whole set) when the batch covers it."""
    if batch_size is None or batch_size >= n:
        return [None] * count
    epochs = -(-batch_size * count // n)
    stream = torch.cat([torch.randperm(n) for _ in range(epochs)])
    return list(stream[: batch_size * count].view(count, batch_size))
