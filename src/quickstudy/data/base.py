"""The in-memory class -> examples store that every few-shot data set is.

A :class:`FewShotDataset` keeps all examples of all its classes in one tensor, sorted by class, with
CSR-style offsets: the examples of class ``c`` are ``examples[class_starts[c]:class_starts[c+1]]``.
The :class:`~quickstudy.EpisodeSampler` draws whole meta-batches with a handful of tensor-indexing
operations on this store: no per-image Python work while training.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["FewShotDataset", "ArrayDataset", "rotate_classes"]


class FewShotDataset:
    """Examples grouped by class, in memory.

    Args:
        examples: ``[M, *example_shape]`` tensor, sorted so that each class is one contiguous run.
            ``uint8`` images are scaled to ``[0, 1]`` float32 when sampled; floating data is kept.
        class_starts: ``[C + 1]`` int64 offsets into ``examples`` (``class_starts[0] == 0``,
            ``class_starts[-1] == M``, non-decreasing, every class non-empty).
        classes: ``C`` class names (strings), e.g. ``"Greek/character01/rot090"``.
        name: a short name for messages.
    """

    def __init__(self, examples: Tensor, class_starts: Tensor, classes: Sequence[str], name: str = "dataset"):
        if not isinstance(examples, Tensor):
            raise TypeError(f"{name}: examples must be a torch.Tensor, got {type(examples).__name__}")
        class_starts = torch.as_tensor(class_starts, dtype=torch.int64)
        classes = [str(c) for c in classes]
        if len(classes) == 0:
            raise ValueError(f"{name}: the data set has no classes; expected at least one class with examples")
        if class_starts.dim() != 1 or class_starts.numel() != len(classes) + 1:
            raise ValueError(
                f"{name}: class_starts must have len(classes) + 1 = {len(classes) + 1} entries, "
                f"got shape {tuple(class_starts.shape)}"
            )
        counts = class_starts[1:] - class_starts[:-1]
        if int(class_starts[0]) != 0 or int(class_starts[-1]) != examples.shape[0]:
            raise ValueError(
                f"{name}: class_starts must run from 0 to the number of examples ({examples.shape[0]}), "
                f"got {int(class_starts[0])}..{int(class_starts[-1])}"
            )
        if bool((counts <= 0).any()):
            empty = classes[int(torch.nonzero(counts <= 0)[0])]
            raise ValueError(f"{name}: class {empty!r} has no examples; every class needs at least one")
        if len(set(classes)) != len(classes):
            raise ValueError(f"{name}: class names must be unique")
        self.examples = examples
        self.class_starts = class_starts
        self.classes = classes
        self.name = name
        self.counts = counts

    def __len__(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, classes={len(self.classes)}, "
                f"examples={self.examples.shape[0]}, example_shape={tuple(self.example_shape)})")

    @property
    def example_shape(self) -> torch.Size:
        return self.examples.shape[1:]

    @property
    def min_examples_per_class(self) -> int:
        return int(self.counts.min())

    def examples_of(self, class_index: int) -> Tensor:
        """All stored examples of one class (raw dtype)."""
        start, stop = int(self.class_starts[class_index]), int(self.class_starts[class_index + 1])
        return self.examples[start:stop]

    def to_float(self, raw: Tensor) -> Tensor:
        """Stored examples as model inputs: uint8 -> float32 in [0, 1]; floating data unchanged."""
        if raw.dtype == torch.uint8:
            return raw.to(torch.float32).div_(255.0)
        return raw

    def subset(self, class_indices: Sequence[int], name: str | None = None) -> "FewShotDataset":
        """A new data set holding only the given classes (in that order)."""
        index = torch.as_tensor(list(class_indices), dtype=torch.int64)
        starts, stops = self.class_starts[index], self.class_starts[index + 1]
        rows = torch.cat([torch.arange(int(a), int(b)) for a, b in zip(starts, stops)])
        counts = stops - starts
        new_starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        return FewShotDataset(self.examples[rows], new_starts, [self.classes[int(i)] for i in index],
                              name=name or self.name)


class ArrayDataset(FewShotDataset):
    """A few-shot data set from in-memory arrays: ``x[i]`` is an example of class ``y[i]``.

    ``x`` may be uint8 images ``[M, C, H, W]`` (or ``[M, H, W]``, given a channel) or any float
    features ``[M, ...]``. Classes are named by ``class_names[label]`` when given, else ``str(label)``.
    """

    def __init__(self, x: Tensor | np.ndarray, y: Tensor | np.ndarray | Sequence[int],
                 class_names: Sequence[str] | None = None, name: str = "arrays"):
        x = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
        y = torch.as_tensor(np.asarray(y)) if not isinstance(y, Tensor) else y
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: y must be a 1-D array with one label per row of x ({x.shape[0]}), "
                             f"got shape {tuple(y.shape)}")
        if x.dtype == torch.uint8 and x.dim() == 3:
            x = x.unsqueeze(1)
        labels, inverse = torch.unique(y, return_inverse=True)
        order = torch.argsort(inverse, stable=True)
        counts = torch.bincount(inverse, minlength=labels.numel())
        starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        if class_names is not None:
            names = [str(class_names[int(label)]) for label in labels]
        else:
            names = [str(label.item()) for label in labels]
        super().__init__(x[order].contiguous(), starts, names, name=name)


def rotate_classes(dataset: FewShotDataset, degrees: Sequence[int] = (0, 90, 180, 270)) -> FewShotDataset:
    """Class augmentation by rotation: every (class, angle) pair becomes a new class named
    ``"<class>/rotDDD"`` (Santoro et al. 2016; the Omniglot protocol of Vinyals et al. 2016).
    Rotations are counter-clockwise, by multiples of 90 degrees, over the last two dimensions."""
    parts, names, counts = [], [], []
    for angle in degrees:
        if angle % 90 != 0:
            raise ValueError(f"rotate_classes: degrees must be multiples of 90, got {angle}")
    for c, name in enumerate(dataset.classes):
        block = dataset.examples_of(c)
        for angle in degrees:
            parts.append(torch.rot90(block, k=(angle // 90) % 4, dims=(-2, -1)))
            names.append(f"{name}/rot{angle:03d}")
            counts.append(block.shape[0])
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), torch.tensor(counts).cumsum(0)])
    return FewShotDataset(torch.cat(parts).contiguous(), starts, names, name=dataset.name)
