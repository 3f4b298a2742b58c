"""Sinusoid regression tasks (Finn et al. 2017, Sec. 5.1).

Each task is ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``, phase ``phi ~ U[0, pi]`` and
inputs ``x ~ U[-5, 5]``; a task gives K support and K query points (the paper's K-shot regression).
"""

from __future__ import annotations

import math
import torch

from .batch import TaskBatch
from .._validation import check_int
from .sampler import IndexedTasks, batch_generator

__all__ = ["Sinusoid"]


class Sinusoid(IndexedTasks):
    """Batches of sinusoid regression tasks; ``sine[i]`` is a pure function of ``(seed, i)``.

    Returns TaskBatches with ``support_x, support_y`` of shape ``[B, shots, 1]`` and
    ``query_x, query_y`` of shape ``[B, queries, 1]`` (float32). The task parameters of batch ``i``
    are available from :meth:`parameters_of`.
    """

    def __init__(self, shots: int = 10, queries: int = 10, batch_size: int = 25, seed: int = 0,
                 amplitude: tuple[float, float] = (0.1, 5.0), phase: tuple[float, float] = (0.0, math.pi),
                 x_range: tuple[float, float] = (-5.0, 5.0), num_batches: int | None = None):
        check_int("Sinusoid", "shots", shots)
        check_int("Sinusoid", "queries", queries)
        check_int("Sinusoid", "batch_size", batch_size)
        for name, (low, high) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not low <= high:
                raise ValueError(f"{name} must be a (low, high) pair with low <= high, got {(low, high)!r}")
        self.shots, self.queries, self.batch_size, self.seed = shots, queries, batch_size, seed
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self.num_batches = num_batches
        self.name = "sinusoid"

    def __repr__(self) -> str:
        return f"Sinusoid(shots={self.shots}, queries={self.queries}, batch_size={self.batch_size}, seed={self.seed})"

    def _uniform(self, bounds, shape, gen) -> torch.Tensor:
        low, high = bounds
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low

    def parameters_of(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Amplitudes and phases ``[B]`` of batch ``index``."""
        gen = batch_generator(self.seed, index)
        amplitude = self._uniform(self.amplitude, (self.batch_size,), gen)
        phase = self._uniform(self.phase, (self.batch_size,), gen)
        return amplitude, phase

    def batch(self, index: int) -> TaskBatch:
        gen = batch_generator(self.seed, index)
        amplitude = self._uniform(self.amplitude, (self.batch_size,), gen)
        phase = self._uniform(self.phase, (self.batch_size,), gen)
        x = self._uniform(self.x_range, (self.batch_size, self.shots + self.queries, 1), gen)
        y = amplitude[:, None, None] * torch.sin(x - phase[:, None, None])
        x, y = x.float(), y.float()
        return TaskBatch(support_x=x[:, :self.shots], support_y=y[:, :self.shots],
                         query_x=x[:, self.shots:], query_y=y[:, self.shots:],
                         episode_ids=torch.arange(index * self.batch_size, (index + 1) * self.batch_size))
