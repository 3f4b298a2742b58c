"""The shell of the meta-learners whose adaptation is a function of the support embeddings, with no inner loop
(Matching Networks, Relation Networks, MetaOptNet; ProtoNet predates it and has its own copy).

A subclass writes the maths of ONE task as a function of its meta-parameters ``meta`` (a dict of tensors, by
default ``{"embed": the model's parameters}``; a subclass adds its own learned parts) and a
:class:`~.execution.Run` (``run(meta["embed"], x)`` embeds a batch of examples):

* :meth:`task_outputs` ``(meta, task, run) -> [N*Q, N]`` query outputs (logits, log-probabilities or scores),
* :meth:`output_loss` ``(outputs, query_y) -> scalar`` (default: cross-entropy),

and inherits ``meta_loss``, ``meta_backward``, ``adapt`` and ``predict``, executed task by task by
:mod:`.execution` (loop, ``torch.func.vmap`` or worker threads). The task's number of classes is ``task.ways``:
a static int, so the maths has no data-dependent shapes and runs under vmap.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice
from ..models.learner import Learner
from ..tasks.batch import Task, TaskBatch
from .base import AdaptedPredictor, MetaLearner, Predictor, check_batch, check_task, detach_tree, unwrap_model
from .execution import STRATEGIES, Execution, Run
from .losses import summarize

__all__ = ["MetricMetaLearner", "embed", "class_onehot", "check_labels"]


def embed(owner: str, run: Run, params: Any, x: Tensor) -> Tensor:
    """``run(params, x)``, checked to be ``[n, D]`` embeddings."""
    z = run(params, x)
    if z.dim() != 2:
        raise ValueError(f"{owner}: the model must return [n, D] embeddings, got {tuple(z.shape)}")
    return z


def class_onehot(labels: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """``[n, ways]`` one-hot rows of ``labels`` (no data-dependent shapes: works under vmap)."""
    return (labels.unsqueeze(-1) == torch.arange(ways, device=labels.device)).to(dtype)


def check_labels(owner: str, support_y: Tensor) -> int:
    """The number of classes of one task's integer labels, which must cover 0..N-1 with no gaps."""
    if support_y.is_floating_point() or support_y.dim() != 1:
        raise ValueError(f"{owner}.adapt: support_y must be [n] integer labels, got {support_y.dtype} "
                         f"{tuple(support_y.shape)}")
    ways = int(support_y.max()) + 1
    missing = sorted(set(range(ways)) - set(support_y.tolist()))
    if int(support_y.min()) < 0 or missing:
        raise ValueError(f"{owner}.adapt: labels must cover 0..{ways - 1} with no gaps; missing {missing}")
    return ways


class MetricMetaLearner(MetaLearner):
    """Shell for metric meta-learners (see the module docstring). ``model`` maps ``[n, ...]`` to ``[n, D]``."""

    task_type = "classification"
    embedding_model = True

    def __init__(self, model: nn.Module, strategy: str = "auto") -> None:
        super().__init__()
        owner = type(self).__name__
        self.model = unwrap_model(owner, model)
        self.learner = Learner(self.model)  # a plain object: registers nothing
        self.execution = Execution(owner, self.model)
        self.strategy = check_choice(owner, "strategy", strategy, STRATEGIES)

    # ----------------------------------------------------------------- the maths (subclasses)
    def meta_parameters(self) -> dict[str, Any]:
        return {"embed": self.learner.params()}

    def task_outputs(self, meta, task: Task, run: Run) -> Tensor:
        raise NotImplementedError

    def output_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)

    def task_loss(self, meta, task: Task, run: Run) -> tuple[Tensor, Tensor]:
        outputs = self.task_outputs(meta, task, run)
        return self.output_loss(outputs, task.query_y), outputs

    # ----------------------------------------------------------------- the shared interface
    def _check_batch(self, batch: TaskBatch) -> TaskBatch:
        batch = check_batch(type(self).__name__, batch, "classification")
        if batch.ways is None:  # a hand-made batch: the labels say how many classes
            batch = replace(batch, ways=int(batch.support_y.max()) + 1)
        return batch

    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        batch = self._check_batch(batch)
        extra = [p for p in self.parameters() if p.requires_grad]
        loss, losses, outputs = self.execution.meta_loss(self.task_loss, self.meta_parameters(), batch, self.strategy,
                                                         extra)
        return loss, summarize(losses, outputs, batch.query_y)

    def meta_backward(self, batch: TaskBatch) -> dict[str, float]:
        batch = self._check_batch(batch)
        extra = [p for p in self.parameters() if p.requires_grad]
        losses, outputs = self.execution.meta_backward(self.task_loss, self.meta_parameters(), batch, self.strategy,
                                                       extra)
        return summarize(losses, outputs, batch.query_y)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """The support set's classifier; ``steps`` is ignored (there is no inner loop)."""
        owner = type(self).__name__
        check_task(owner, support_x, support_y)
        ways = check_labels(owner, support_y)
        meta = detach_tree(self.meta_parameters())
        run = Run(self.learner)

        def predict(x: Tensor) -> Tensor:
            dummy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the maths never reads query_y
            return self.task_outputs(meta, Task(support_x, support_y, x, dummy, ways), run)

        return AdaptedPredictor(predict)

    def predict(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        batch = self._check_batch(batch)
        meta = detach_tree(self.meta_parameters())
        with torch.no_grad():
            return self.execution.predict(self.task_outputs, meta, batch, self.strategy)

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}"
