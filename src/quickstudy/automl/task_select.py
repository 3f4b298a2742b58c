"""Pick among meta-trained models or adaptation settings per few-shot task, from the episode itself.

A new episode is described by :func:`~quickstudy.automl.metafeatures.episode_features` of its support
set embeddings (:func:`embed_support`: the features a backbone's head sees). :class:`EpisodeSelector`
remembers, for past episodes, those features and the query accuracy each *candidate* reached (a
meta-trained model, an inner learning rate, a number of adaptation steps, ...), and for a new episode
picks the candidate with the best mean accuracy over its ``k`` nearest past episodes (Euclidean
distance on standardised features). Only the support set is used to choose; the query set is for
scoring the choice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .metafeatures import EPISODE_FEATURES

__all__ = ["embed_support", "EpisodeSelector"]


def embed_support(model, support_x) -> np.ndarray:
    """``[n, feature_dim]`` embeddings of ``support_x`` [n, ...] by ``model``: the input of its ``head``
    (the last linear layer), or the output when the model has no head (a ProtoNet backbone)."""
    import torch

    head = getattr(model, "head", None)
    captured: list = []
    hook = head.register_forward_pre_hook(lambda module, args: captured.append(args[0])) if head is not None else None
    try:
        with torch.no_grad():
            out = model(support_x)
    finally:
        if hook is not None:
            hook.remove()
    z = captured[0] if captured else out
    return z.detach().reshape(len(z), -1).double().cpu().numpy()


class EpisodeSelector:
    """k nearest past episodes on standardised episode features -> the candidate that did best on them."""

    def __init__(self, k: int = 10, features: Sequence[str] = EPISODE_FEATURES):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.features = k, tuple(features)

    def _matrix(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        missing = [name for name in self.features if name not in rows[0]]
        if missing:
            raise ValueError(f"episode features lack {missing}; use quickstudy.automl.metafeatures.episode_features")
        return np.array([[row[name] for name in self.features] for row in rows], dtype=float)

    def fit(self, rows: Sequence[dict[str, float]], scores) -> "EpisodeSelector":
        """``rows``: features of past episodes; ``scores``: [episodes, candidates] query accuracy of each candidate."""
        scores = np.asarray(scores, dtype=float)
        if scores.ndim != 2 or len(scores) != len(rows) or len(rows) == 0:
            raise ValueError(f"scores must be [episodes, candidates] with one row per episode ({len(rows)}), "
                             f"got shape {scores.shape}")
        x = self._matrix(rows)
        self.mean_, self.std_ = x.mean(0), x.std(0)
        self.std_[self.std_ == 0] = 1.0
        self.x_, self.scores_ = (x - self.mean_) / self.std_, scores
        return self

    def expected(self, row: dict[str, float]) -> np.ndarray:
        """Mean score of every candidate over the ``k`` nearest past episodes."""
        x = (self._matrix([row])[0] - self.mean_) / self.std_
        nearest = np.argsort(np.linalg.norm(self.x_ - x, axis=1), kind="stable")[: self.k]
        return self.scores_[nearest].mean(0)

    def choose(self, row: dict[str, float]) -> int:
        """Index of the candidate to use for this episode."""
        return int(np.argmax(self.expected(row)))
