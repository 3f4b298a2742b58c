"""Score meta-learners and baselines on the same evaluated users: per-user metrics, means with 95% CIs, and
paired differences against the best baseline.

A meta-learner adapts to each user through the shared interface (``learner.predict`` of a one-user
TaskBatch, no meta-gradient); a baseline through ``predict(support_items, support_ratings, query_items)``.
Predictions are clipped to the rating scale for every method alike (a recommender shows no 11/10).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from ..training.evaluate import eval_mode
from .metrics import METRICS, paired_difference, summarize, user_metrics
from .tasks import UserEpisodes

__all__ = ["predict_user", "score_methods", "compare"]


def predict_user(method: Any, episodes: UserEpisodes, j: int, steps: int | None = None) -> np.ndarray:
    """Predicted ratings of user ``j``'s query items by a meta-learner (an ``nn.Module``) or a baseline."""
    if isinstance(method, nn.Module):
        return method.predict(episodes[j], steps=steps)[0, :, 0].detach().cpu().numpy().astype(np.float64)
    e = episodes.episode(j)
    return np.asarray(method.predict(e.support_items, e.support_ratings, e.query_items), dtype=np.float64)


def score_methods(methods: dict[str, Any], episodes: UserEpisodes, *, users: int | None = None,
                  scale: tuple[float, float] | None = None, steps: int | None = None,
                  progress: bool = False, desc: str = "users") -> dict[str, dict[str, np.ndarray]]:
    """``{method: {metric: per-user values}}`` over the first ``users`` episodes (all when ``None``)."""
    from tqdm.auto import tqdm

    count = len(episodes) if users is None else min(users, len(episodes))
    per_user = {name: {metric: np.empty(count) for metric in METRICS} for name in methods}
    learners = [m for m in methods.values() if isinstance(m, nn.Module)]
    with torch.random.fork_rng(devices=[]), _all_eval(learners):
        torch.manual_seed(0)  # randomness inside an adaptation (Reptile's mini-batches) is the same every time
        for j in tqdm(range(count), desc=desc, unit="user", disable=not progress, file=sys.stderr, leave=False):
            truth = episodes.episode(j).query_ratings
            for name, method in methods.items():
                predicted = predict_user(method, episodes, j, steps if isinstance(method, nn.Module) else None)
                if scale is not None:
                    predicted = np.clip(predicted, scale[0], scale[1])
                for metric, value in user_metrics(truth, predicted).items():
                    per_user[name][metric][j] = value
    return per_user


class _all_eval:
    """Every learner in eval mode for the block, each submodule's own mode restored after."""

    def __init__(self, learners: list[nn.Module]) -> None:
        self.contexts = [eval_mode(m) for m in learners]

    def __enter__(self):
        for c in self.contexts:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.contexts):
            c.__exit__(*exc)
        return False


def compare(per_user: dict[str, dict[str, np.ndarray]], learner: str, baselines: list[str]) -> dict[str, Any]:
    """Summaries of every method, and the learner's paired differences against each baseline and against the
    best baseline (lowest mean MAE on these users: the strictest comparison)."""
    out: dict[str, Any] = {"methods": {name: summarize(values) for name, values in per_user.items()}}
    if learner in per_user and baselines:
        best = min(baselines, key=lambda b: float(per_user[b]["mae"].mean()))
        out["best_baseline"] = best
        out["paired"] = {b: {metric: paired_difference(per_user[learner][metric], per_user[b][metric])
                             for metric in METRICS} for b in baselines}
    return out
