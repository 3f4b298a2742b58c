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

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice
from ..models.learner import Learner
from ..tasks.batch import Task, TaskBatch
from .base import AdaptedPredictor, MetaLearner, Predictor, check_batch, check_task, detach_tree, unwrap_model
from .execution import STRATEGIES, Execution, Run
from .losses import summarize

__all__ = ["ProtoNet", "prototypes", "squared_distances"]


def prototypes(embeddings: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Class means ``[ways, D]`` of ``embeddings [n, D]`` (works under vmap: no data-dependent shapes)."""
    onehot = (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(embeddings.dtype)  # [n, N]
    return (onehot.transpose(0, 1) @ embeddings) / onehot.sum(0).unsqueeze(-1)


def squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    """``[n, N]`` squared Euclidean distances (the exact difference form, not the expanded one)."""
    return (x.unsqueeze(-2) - centres).pow(2).sum(-1)


class ProtoNet(MetaLearner):
    """``ProtoNet(model, strategy="auto")``: ``model`` maps ``[n, ...]`` inputs to ``[n, D]`` embeddings.

    ``strategy``: how the tasks of a batch run (``"auto"``, ``"loop"``, ``"vmap"``, ``"threads"``;
    :mod:`quickstudy.algorithms.execution`)."""

    task_type = "classification"
    embedding_model = True

    def __init__(self, model: nn.Module, strategy: str = "auto") -> None:
        super().__init__()
        self.model = unwrap_model("ProtoNet", model)
        self.learner = Learner(self.model)
        self.execution = Execution("ProtoNet", self.model)
        self.strategy = check_choice("ProtoNet", "strategy", strategy, STRATEGIES)

    def _embed(self, params, x: Tensor, run: Run) -> Tensor:
        z = run(params, x)
        if z.dim() != 2:
            raise ValueError(f"ProtoNet: the model must return [n, D] embeddings, got {tuple(z.shape)}")
        return z

    def logits(self, params, task: Task, run: Run) -> Tensor:
        """``-||f(query_x) - c_n||^2`` for the prototypes ``c_n`` of the task's support set."""
        protos = prototypes(self._embed(params, task.support_x, run), task.support_y, task.ways)
        return -squared_distances(self._embed(params, task.query_x, run), protos)

    def task_loss(self, params, task: Task, run: Run) -> tuple[Tensor, Tensor]:
        logits = self.logits(params, task, run)
        return F.cross_entropy(logits, task.query_y), logits

    def _check_batch(self, batch: TaskBatch) -> TaskBatch:
        batch = check_batch("ProtoNet", batch, "classification")
        if batch.ways is None:  # a hand-made batch: the labels say how many classes
            batch = replace(batch, ways=int(batch.support_y.max()) + 1)
        return batch

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        batch = self._check_batch(batch)
        extra = [p for p in self.parameters() if p.requires_grad]
        loss, losses, outputs = self.execution.meta_loss(self.task_loss, self.learner.params(), batch, self.strategy,
                                                         extra)
        return loss, summarize(losses, outputs, batch.query_y)

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        batch = self._check_batch(batch)
        extra = [p for p in self.parameters() if p.requires_grad]
        losses, outputs = self.execution.meta_backward(self.task_loss, self.learner.params(), batch, self.strategy,
                                                       extra)
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
        run = Run(self.learner)
        with torch.no_grad():
            protos = prototypes(self._embed(params, support_x, run), support_y, ways)
        return AdaptedPredictor(lambda x: -squared_distances(self._embed(params, x, run), protos))

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        batch = self._check_batch(batch)
        params = detach_tree(self.learner.params())
        with torch.no_grad():
            return self.execution.predict(self.logits, params, batch, self.strategy)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}"
