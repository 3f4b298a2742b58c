"""TaskBatch: a meta-batch of few-shot tasks as one tensor per field.

Every task family in quickstudy (image episodes, sinusoids, users of a recommender) produces the same
structure, so an algorithm can walk the tasks one by one (``batch.task(i)``) or map over the leading
dimension with ``torch.func.vmap``.

Shapes (B tasks, N ways, K shots, Q queries per class):

==============  =============================  ==========================================
field           classification                 regression
==============  =============================  ==========================================
support_x       [B, N*K, *x_shape]             [B, K, *x_shape]
support_y       [B, N*K] int64 in 0..N-1       [B, K, *y_shape] floating
query_x         [B, N*Q, *x_shape]             [B, Q, *x_shape]
query_y         [B, N*Q] int64 in 0..N-1       [B, Q, *y_shape] floating
classes         [B, N] original class ids      None
episode_ids     [B] int64                      [B] int64
==============  =============================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Iterator

import torch
from torch import Tensor

from .._validation import check_int

__all__ = ["TaskBatch", "Task"]


@dataclass(frozen=True)
class Task:
    """One task of a :class:`TaskBatch` (the leading batch dimension removed), with the batch's ``ways`` and
    ``shots``."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int | None = None
    shots: int | None = None


@dataclass(frozen=True)
class TaskBatch:
    """A batch of B few-shot tasks, one tensor per field (see the module docstring for shapes).

    ``ways`` and ``shots`` are ``None`` for regression tasks. ``classes`` holds the dataset's class
    ids of each episode (row b, column n is the class whose label is n in episode b).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    ways: int | None = None
    shots: int | None = None
    classes: Tensor | None = None
    episode_ids: Tensor | None = None
    _tensor_fields: tuple[str, ...] = field(
        default=("support_x", "support_y", "query_x", "query_y", "classes", "episode_ids"),
        init=False,
        repr=False,
        compare=False,
    )

    def __post_init__(self) -> None:
        for name in ("support_x", "support_y", "query_x", "query_y"):
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"TaskBatch.{name} must be a torch.Tensor, got {type(value).__name__}")
        sx, sy, qx, qy = self.support_x, self.support_y, self.query_x, self.query_y
        if sx.dim() < 2 or qx.dim() < 2:
            raise ValueError(
                "TaskBatch.support_x and query_x must be [B, examples, ...]; "
                f"got support_x {tuple(sx.shape)} and query_x {tuple(qx.shape)}"
            )
        batch_size = sx.shape[0]
        for name, value in (("support_y", sy), ("query_x", qx), ("query_y", qy)):
            if value.dim() < 2 or value.shape[0] != batch_size:
                raise ValueError(
                    f"TaskBatch.{name} has shape {tuple(value.shape)}: expected [B={batch_size}, examples, ...] "
                    "with the same B as support_x"
                )
        if sy.shape[1] != sx.shape[1]:
            raise ValueError(
                f"TaskBatch.support_y has {sy.shape[1]} examples per task but support_x has {sx.shape[1]}"
            )
        if qy.shape[1] != qx.shape[1]:
            raise ValueError(f"TaskBatch.query_y has {qy.shape[1]} examples per task but query_x has {qx.shape[1]}")
        if sx.shape[2:] != qx.shape[2:]:
            raise ValueError(
                f"TaskBatch.support_x examples have shape {tuple(sx.shape[2:])} but query_x examples "
                f"have shape {tuple(qx.shape[2:])}: they must match"
            )
        if sy.dtype != qy.dtype:
            raise ValueError(f"TaskBatch.support_y is {sy.dtype} but query_y is {qy.dtype}: they must match")
        if self.is_classification:
            if sy.dim() != 2 or qy.dim() != 2:
                raise ValueError(
                    "TaskBatch labels for classification must be [B, examples] integers; "
                    f"got support_y {tuple(sy.shape)}, query_y {tuple(qy.shape)}"
                )
            if self.ways is not None:
                check_int("TaskBatch", "ways", self.ways)
                for name, labels in (("support_y", sy), ("query_y", qy)):
                    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.ways):
                        raise ValueError(
                            f"TaskBatch.{name} holds labels in [{int(labels.min())}, {int(labels.max())}]: "
                            f"expected 0..{self.ways - 1} for ways={self.ways}"
                        )
        elif not sy.is_floating_point():
            raise ValueError(f"TaskBatch labels must be int64 (classification) or floating (regression); got {sy.dtype}")
        if self.shots is not None:
            check_int("TaskBatch", "shots", self.shots)
        if self.classes is not None and tuple(self.classes.shape[:1]) != (batch_size,):
            raise ValueError(f"TaskBatch.classes has shape {tuple(self.classes.shape)}: expected [B={batch_size}, N]")
        if self.episode_ids is not None and tuple(self.episode_ids.shape) != (batch_size,):
            raise ValueError(
                f"TaskBatch.episode_ids has shape {tuple(self.episode_ids.shape)}: expected [B={batch_size}]"
            )

    # ------------------------------------------------------------------ views
    @property
    def is_classification(self) -> bool:
        return not self.support_y.is_floating_point()

    @property
    def batch_size(self) -> int:
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    def task(self, index: int) -> Task:
        """The ``index``-th task, without the batch dimension."""
        return Task(self.support_x[index], self.support_y[index], self.query_x[index], self.query_y[index], self.ways,
                    self.shots)

    def __iter__(self) -> Iterator[Task]:
        return (self.task(i) for i in range(self.batch_size))

    def _map(self, fn) -> "TaskBatch":
        """The same batch with ``fn`` applied to every tensor. Shapes, dtypes and labels are unchanged, so the
        result is not validated again (that would read the labels back: host syncs on every move to a GPU)."""
        mapped = object.__new__(TaskBatch)
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self._tensor_fields and value is not None:
                value = fn(value)
            object.__setattr__(mapped, f.name, value)
        return mapped

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TaskBatch":
        """Move every tensor to ``device`` (``non_blocking`` pays off from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "TaskBatch":
        """Page-locked copies, for fast asynchronous host-to-GPU transfer."""
        return self._map(lambda t: t.pin_memory())

    def slice(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start:stop`` as a smaller TaskBatch."""
        return self._map(lambda t: t[start:stop])

    def inputs_to(self, dtype: torch.dtype) -> "TaskBatch":
        """Cast support_x/query_x (and regression targets) to ``dtype``, e.g. ``torch.float64`` for exact tests."""
        changes = {"support_x": self.support_x.to(dtype), "query_x": self.query_x.to(dtype)}
        if not self.is_classification:
            changes.update(support_y=self.support_y.to(dtype), query_y=self.query_y.to(dtype))
        return replace(self, **changes)

    def __repr__(self) -> str:
        parts = [f"{f.name}={tuple(getattr(self, f.name).shape)}" for f in fields(self)
                 if f.name in ("support_x", "support_y", "query_x", "query_y")]
        return f"TaskBatch(B={self.batch_size}, ways={self.ways}, shots={self.shots}, " + ", ".join(parts) + ")"

