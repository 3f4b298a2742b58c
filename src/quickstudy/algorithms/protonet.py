r"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017, arXiv:1703.05175).

An embedding f_theta (e.g. ``Conv4(ways=None)``) maps examples to vectors. For each task:

    prototypes:   c_n = 1/|S_n| * sum_{(x, y) in S, y = n} f_theta(x)           (n = 0..N-1)
    logits:       logit_n(x) = -|| f_theta(x) - c_n ||^2                         (squared Euclidean)
    outer loss:   L_meta(theta) = 1/B * sum_i CE(logits(Q_i.x), Q_i.y)

There is no inner loop: adaptation is computing the prototypes. Support and query sets are embedded
in separate forward passes (so with transductive batch norm each set is normalised by its own
statistics, at training and at test time alike).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice
from ..models.fused_block import backward_once as backward_once_context
from ..models.learner import Learner
from ..tasks.batch import TaskBatch
from .base import MetaLearner, Predictor
from .inner_loop import AdaptedPredictor, check_task, detach_tree
from .losses import summarize
from .strategy import (GRADIENT_STRATEGIES, module_copies, resolve_strategy, run_meta_backward, run_meta_loss,
                       run_predict, thread_workers)

__all__ = ["ProtoNet", "prototypes", "squared_distances"]


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means ``[ways, D]`` of ``embeddings [n, D]`` (works under vmap: no data-dependent shapes)."""
    onehot = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(embeddings.dtype)  # [n, N]
    return (onehot.transpose(0, 1) @ embeddings) / onehot.sum(0).unsqueeze(-1)


def squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    """``[n, N]`` squared Euclidean distances (the exact difference form, not the expanded one)."""
    return (x.unsqueeze(-2) - centres).pow(2).sum(-1)


class ProtoNet(MetaLearner):
    """``ProtoNet(model, strategy="auto")``: ``model`` maps ``[n, ...]`` inputs to ``[n, D]`` embeddings."""

    task_type = "classification"

    def __init__(self, model: nn.Module, strategy: str = "auto") -> None:
        super().__init__()
        if isinstance(model, Learner):
            model = model.module
        if not isinstance(model, nn.Module):
            raise TypeError(f"ProtoNet: model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.learner = Learner(model)
        self.strategy = check_choice("ProtoNet", "strategy", strategy, GRADIENT_STRATEGIES)

    def _embed(self, params, x: Tensor, learner: Learner | None = None) -> Tensor:
        z = (learner or self.learner)(params, x)
        if z.dim() != 2:
            raise ValueError(f"ProtoNet: the model must return [n, D] embeddings, got {tuple(z.shape)}")
        return z

    def logits(self, params, support_x: Tensor, support_y: Tensor, query_x: Tensor, ways: int,
               learner: Learner | None = None) -> Tensor:
        protos = prototypes(self._embed(params, support_x, learner), support_y, ways)
        return -squared_distances(self._embed(params, query_x, learner), protos)

    def _ways(self, batch: TaskBatch) -> int:
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"ProtoNet: expected a TaskBatch, got {type(batch).__name__}")
        if not batch.is_classification:
            raise ValueError("ProtoNet is for classification; got a regression batch (floating labels)")
        return batch.ways if batch.ways is not None else int(batch.support_y.max()) + 1

    def _task_fn(self, ways: int, backward_once: bool = False, learner: Learner | None = None):
        # backward_once: meta_backward backpropagates each task once, so Conv4 may keep less (fused_block.py);
        # learner: a worker thread's own module structure (strategy "threads")
        once = backward_once_context if backward_once else contextlib.nullcontext

        def task_fn(meta, sx, sy, qx, qy, use_func):
            with once():
                logits = self.logits(meta, sx, sy, qx, ways, learner)
            return F.cross_entropy(logits, qy), logits
        return task_fn

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        ways = self._ways(batch)
        strategy = resolve_strategy("ProtoNet", self.strategy, self.model)
        loss, losses, outputs = run_meta_loss(self._task_fn(ways), self.learner.params(), batch, strategy)
        return loss, summarize(losses, outputs, batch.query_y)

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        ways = self._ways(batch)
        strategy = resolve_strategy("ProtoNet", self.strategy, self.model, threads_ok=True)
        workers = None
        if strategy == "threads":  # tasks split over worker threads, each on its own module structure
            cache = self.__dict__.setdefault("_thread_cache", {})
            workers = [self._task_fn(ways, backward_once=True, learner=Learner(model))
                       for model in module_copies(self.model, thread_workers(batch.batch_size), cache)]
        losses, outputs = run_meta_backward(self._task_fn(ways, backward_once=True), self.learner.params(), batch,
                                            strategy, workers, [p for p in self.parameters() if p.requires_grad])
        return summarize(losses, outputs, batch.query_y)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """Prototypes of the support set; ``steps`` is ignored (there is no inner loop)."""
        check_task("ProtoNet", support_x, support_y)
        if support_y.is_floating_point() or support_y.dim() != 1:
            raise ValueError(f"ProtoNet.adapt: support_y must be [n] integer labels, got {support_y.dtype} {tuple(support_y.shape)}")
        ways = int(support_y.max()) + 1
        missing = sorted(set(range(ways)) - set(support_y.tolist()))
        if int(support_y.min()) < 0 or missing:
            raise ValueError(f"ProtoNet.adapt: labels must cover 0..{ways - 1} with no gaps; missing {missing}")
        params = detach_tree(self.learner.params())
        with torch.no_grad():
            protos = prototypes(self._embed(params, support_x), support_y, ways)
        return AdaptedPredictor(lambda x: -squared_distances(self._embed(params, x), protos))

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        ways = self._ways(batch)
        strategy = resolve_strategy("ProtoNet", self.strategy, self.model)
        params = detach_tree(self.learner.params())
        with torch.no_grad():
            return run_predict(lambda m, sx, sy, qx, use_func: self.logits(m, sx, sy, qx, ways), params, batch, strategy)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}"
