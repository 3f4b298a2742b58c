"""N-way K-shot episodes drawn from a class -> examples store with tensor indexing only.

Batch ``i`` of a sampler is a pure function of ``(seed, i)``: its random generator is seeded from
both, so ``sampler[i]`` returns the same tensors whatever was drawn before, in any order. Training
resumes exactly from a step number, and a list of evaluation episodes is just a list of indices
(or, to survive a change of code, the saved example indices: :class:`FixedEpisodes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .._atomic import atomic_write
from .._validation import check_int, check_int_range
from .batch import TaskBatch

__all__ = ["EpisodeSampler", "EpisodeIndices", "FixedEpisodes", "IndexedTasks", "batch_generator"]

IntOrRange = int | tuple[int, int]


def batch_generator(seed: int, index: int) -> torch.Generator:
    """A torch generator keyed by ``(seed, index)``; well mixed, so neighbouring indices are unrelated."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class EpisodeIndices:
    """What one batch of episodes is made of: ``classes [B, N]`` (dataset class ids, label n of
    episode b is ``classes[b, n]``) and ``examples [B, N, K+Q]`` (rows of ``dataset.examples``; the
    first K of each class are the support set)."""

    classes: Tensor
    examples: Tensor
    shots: int

    @property
    def ways(self) -> int:
        return self.classes.shape[1]

    @property
    def queries(self) -> int:
        return self.examples.shape[2] - self.shots


class IndexedTasks:
    """Random access ``source[i] -> TaskBatch`` (a pure function of ``(seed, i)``), finite when
    ``num_batches`` is set, infinite otherwise. Subclasses implement :meth:`batch`."""

    num_batches: int | None = None

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"this {type(self).__name__} is infinite: pass num_batches=... to give it a length")
        return self.num_batches

    def __iter__(self) -> Iterator[TaskBatch]:
        index = 0
        while self.num_batches is None or index < self.num_batches:
            yield self[index]
            index += 1

    def __getitem__(self, index: int) -> TaskBatch:
        self._check_index(index)
        return self.batch(index)

    def batch(self, index: int) -> TaskBatch:
        raise NotImplementedError

    def batch_slice(self, index: int, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop`` of batch ``index``: the same tensors as ``self[index].slice(start, stop)`` (one
        process's share of a meta-batch in a data-parallel run; subclasses may build only that share)."""
        return self[index].slice(start, stop)

    def _check_index(self, index: object) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise IndexError(f"batch index must be a non-negative integer, got {index!r}")
        if self.num_batches is not None and index >= self.num_batches:
            raise IndexError(f"batch index {index} out of range for num_batches={self.num_batches}")


class EpisodeSampler(IndexedTasks):
    """Class-disjoint N-way K-shot Q-query episodes from a :class:`~quickstudy.data.FewShotDataset`.

    Each episode picks ``ways`` distinct classes in a random order (that order is the label:
    class ``classes[b, n]`` gets label ``n``), then ``shots + queries`` distinct examples of each,
    the first ``shots`` for the support set, the rest for the query set. Support and query are
    class-major: ``support_y = [0]*K + [1]*K + ...``.

    Args:
        dataset: a FewShotDataset (Omniglot, Glyphs, ImageFolder, ArrayDataset, ...).
        ways, shots: an integer, or an inclusive ``(low, high)`` range for variable-way /
            variable-shot training; the value is drawn per batch (one tensor per field needs every
            episode of a batch to share N and K).
        queries: query examples per class.
        batch_size: episodes per batch (B).
        seed: with the batch index, determines every batch.
        num_batches: length for iteration (``None``: iterate forever).
    """

    def __init__(self, dataset, ways: IntOrRange = 5, shots: IntOrRange = 1, queries: int = 15,
                 batch_size: int = 1, seed: int = 0, num_batches: int | None = None):
        self.dataset = dataset
        self.ways_range = check_int_range("EpisodeSampler", "ways", ways)
        self.shots_range = check_int_range("EpisodeSampler", "shots", shots)
        check_int("EpisodeSampler", "queries", queries)
        check_int("EpisodeSampler", "batch_size", batch_size)
        if num_batches is not None:
            check_int(type(self).__name__, "num_batches", num_batches)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.queries, self.batch_size, self.seed, self.num_batches = int(queries), int(batch_size), int(seed), num_batches

        num_classes = len(dataset.classes)
        max_ways = self.ways_range[1]
        if max_ways > num_classes:
            raise ValueError(
                f"ways={ways} is larger than the {num_classes} classes available in {dataset.name!r}; "
                f"expected ways <= {num_classes}"
            )
        needed = self.shots_range[1] + self.queries
        counts = dataset.counts
        if int(counts.min()) < needed:
            small = int(torch.argmin(counts))
            raise ValueError(
                f"shots + queries = {self.shots_range[1]} + {self.queries} = {needed} is larger than the "
                f"{int(counts[small])} examples of class {dataset.classes[small]!r} in {dataset.name!r}; "
                f"expected shots + queries <= {int(counts.min())}"
            )
        self._counts = counts
        self._starts = dataset.class_starts[:-1]
        self._uniform = bool((counts == counts[0]).all())
        self._max_count = int(counts.max())

    @property
    def ways(self) -> int:
        """N when fixed (the low end of a variable range otherwise)."""
        return self.ways_range[0]

    @property
    def shots(self) -> int:
        return self.shots_range[0]

    def __repr__(self) -> str:
        return (f"EpisodeSampler({self.dataset.name!r}, ways={self.ways_range}, shots={self.shots_range}, "
                f"queries={self.queries}, batch_size={self.batch_size}, seed={self.seed})")

    def batch(self, index: int) -> TaskBatch:
        return self.gather(self.sample_indices(index), index)

    def batch_slice(self, index: int, start: int, stop: int) -> TaskBatch:
        # the whole batch's indices are drawn (they are cheap), but only the share's images are read
        indices = self.sample_indices(index)
        share = EpisodeIndices(indices.classes[start:stop], indices.examples[start:stop], indices.shots)
        return gather_episodes(self.dataset, share, first_episode_id=index * self.batch_size + start)

    # ------------------------------------------------------------------ the two halves
    def sample_indices(self, index: int) -> EpisodeIndices:
        """Which classes and examples make batch ``index`` (no image data touched)."""
        self._check_index(index)
        gen = batch_generator(self.seed, index)
        ways = self._draw(self.ways_range, gen)
        shots = self._draw(self.shots_range, gen)
        per_class = shots + self.queries
        num_classes = self._counts.numel()
        batch = self.batch_size
        # N distinct classes per episode, in random order (the order is the label): the N largest
        # of i.i.d. uniform keys, which topk finds in linear time (a full argsort sorts all of them).
        classes = torch.rand(batch, num_classes, generator=gen).topk(ways, dim=1).indices
        # K+Q distinct examples per class: random keys, classes with fewer examples mask the tail.
        keys = torch.rand(batch, ways, self._max_count, generator=gen)
        if not self._uniform:
            positions = torch.arange(self._max_count)
            keys = keys.masked_fill(positions >= self._counts[classes].unsqueeze(-1), 2.0)
        chosen = keys.argsort(dim=-1)[..., :per_class]
        examples = self._starts[classes].unsqueeze(-1) + chosen
        return EpisodeIndices(classes=classes, examples=examples, shots=shots)

    def gather(self, indices: EpisodeIndices, index: int = 0) -> TaskBatch:
        """The TaskBatch for the given indices: one indexing op on the store, then views."""
        return gather_episodes(self.dataset, indices, first_episode_id=index * self.batch_size)

    def fixed(self, num_batches: int, start: int = 0) -> "FixedEpisodes":
        """Batches ``start .. start+num_batches-1`` frozen as indices (save them with ``.save``)."""
        check_int(type(self).__name__, "num_batches", num_batches)
        return FixedEpisodes(self.dataset, [self.sample_indices(start + i) for i in range(num_batches)],
                             batch_size=self.batch_size)

    @staticmethod
    def _draw(bounds: tuple[int, int], gen: torch.Generator) -> int:
        low, high = bounds
        return low if low == high else int(torch.randint(low, high + 1, (1,), generator=gen))


def gather_episodes(dataset, indices: EpisodeIndices, first_episode_id: int = 0) -> TaskBatch:
    batch, ways, per_class = indices.examples.shape
    shots = indices.shots
    raw = dataset.examples[indices.examples.reshape(-1)]
    data = dataset.to_float(raw).reshape(batch, ways, per_class, *raw.shape[1:])
    support_x = data[:, :, :shots].reshape(batch, ways * shots, *raw.shape[1:])
    query_x = data[:, :, shots:].reshape(batch, ways * (per_class - shots), *raw.shape[1:])
    labels = torch.arange(ways)
    support_y = labels.repeat_interleave(shots).expand(batch, -1).contiguous()
    query_y = labels.repeat_interleave(per_class - shots).expand(batch, -1).contiguous()
    return TaskBatch(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y,
                     ways=ways, shots=shots, classes=indices.classes.clone(),
                     episode_ids=torch.arange(first_episode_id, first_episode_id + batch))


class FixedEpisodes:
    """A frozen list of episode batches (e.g. the 600 test episodes of a run), saved as example
    indices plus the data set's class names, so a reload checks it is applied to the same data."""

    def __init__(self, dataset, batches: Sequence[EpisodeIndices], batch_size: int):
        self.dataset = dataset
        self.batches = list(batches)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> TaskBatch:
        if not 0 <= index < len(self.batches):
            raise IndexError(f"batch index {index} out of range for {len(self.batches)} fixed batches")
        return gather_episodes(self.dataset, self.batches[index], first_episode_id=index * self.batch_size)

    def __iter__(self) -> Iterator[TaskBatch]:
        return (self[i] for i in range(len(self)))

    def save(self, path: str | os.PathLike, key: dict | None = None) -> None:
        """Write atomically (temp file + rename); loadable with ``weights_only=True``. ``key``: plain values saying
        what the episodes were drawn for (data set, split, ways, ...); :meth:`load` then checks them."""
        payload = {
            "format": "quickstudy.FixedEpisodes/1",
            "batch_size": self.batch_size,
            "classes": [b.classes for b in self.batches],
            "examples": [b.examples for b in self.batches],
            "shots": [b.shots for b in self.batches],
            "class_names": list(self.dataset.classes),
            "key": dict(key) if key is not None else None,
        }
        with atomic_write(path) as handle:
            torch.save(payload, handle)

    @classmethod
    def load(cls, path: str | os.PathLike, dataset, key: dict | None = None) -> "FixedEpisodes":
        """The episodes saved at ``path``, on ``dataset``; ``ValueError`` when they were made for a data set with
        other classes or, given ``key``, for other settings (or saved without any)."""
        try:
            payload = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # corrupt or not ours
            raise ValueError(f"cannot read episode list {os.fspath(path)!r}: {error}") from error
        if not isinstance(payload, dict) or payload.get("format") != "quickstudy.FixedEpisodes/1":
            raise ValueError(f"{os.fspath(path)!r} is not a quickstudy episode list")
        if payload["class_names"] != list(dataset.classes):
            raise ValueError(
                f"episode list {os.fspath(path)!r} was made for a data set with different classes than "
                f"{dataset.name!r} ({len(payload['class_names'])} vs {len(dataset.classes)} classes)"
            )
        if key is not None and payload.get("key") != dict(key):
            saved = payload.get("key") or {}
            changed = sorted(k for k in set(saved) | set(key) if saved.get(k) != key.get(k))
            raise ValueError(f"episode list {os.fspath(path)!r} was drawn for other settings "
                             f"({', '.join(changed) if saved else 'none recorded'})")
        batches = [EpisodeIndices(classes=c, examples=e, shots=int(s))
                   for c, e, s in zip(payload["classes"], payload["examples"], payload["shots"])]
        return cls(dataset, batches, batch_size=int(payload["batch_size"]))
