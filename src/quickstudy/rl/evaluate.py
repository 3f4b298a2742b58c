r"""Evaluation of fast adaptation: the return after 0, 1, 2, ... policy-gradient steps on held-out tasks.

Protocol (Finn et al. 2017, section 5.3 and App. C): for each of ``n`` held-out tasks, sample ``K`` episodes
with the meta-learned ``theta`` (step 0), take one VPG step on them, sample ``K`` new episodes with the adapted
weights (step 1), adapt again from those, ... up to ``max_steps``. The score of a task at step ``k`` is the mean
undiscounted return of its ``K`` episodes; we report the mean over tasks with a 95% confidence interval
(``1.96 s / sqrt(n)``). For Meta-World the success rate (an episode succeeds when the env reports success at
any step) is reported the same way. All tasks are adapted at once (per-task fast weights, batched rollouts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..training.metrics import mean_ci95
from .families.base import TaskFamily
from .maml_rl import MAMLRL, adapt_params
from .rollout import process_episodes, rollout

__all__ = ["AdaptationResult", "evaluate_adaptation"]


@dataclass
class AdaptationResult:
    """Return (and success rate, where defined) after ``steps`` adaptation steps, over ``tasks`` tasks."""

    steps: int
    mean: float
    ci95: float
    tasks: int
    success: float | None = None
    success_ci95: float | None = None
    per_task: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"mean": self.mean, "ci95": self.ci95}
        if self.success is not None:
            out.update(success=self.success, success_ci95=self.success_ci95)
        return out


def evaluate_adaptation(learner: MAMLRL, family: TaskFamily, tasks: Sequence[Any], *, episodes: int, max_steps: int,
                        generator: torch.Generator, gamma: float, gae_lambda: float, normalize: bool = True,
                        inner_lr: float | Sequence[float] | None = None,
                        progress: bool = False) -> list[AdaptationResult]:
    """Scores after 0..``max_steps`` adaptation steps (see the module docstring). ``inner_lr``: the step size
    (default the learner's), or one per step (step ``k`` uses ``inner_lr[min(k, len - 1)]``)."""
    lrs = [learner.inner_lr] if inner_lr is None else list(inner_lr) if isinstance(inner_lr, Sequence) else [inner_lr]
    policy = learner.policy
    params = {k: v.detach() for k, v in learner.params().items()}
    results = []
    bar = tqdm(total=max_steps + 1, desc="eval (adaptation steps)", disable=not progress, leave=False)
    for step in range(max_steps + 1):
        batch = rollout(family, tasks, policy, params, episodes, generator, per_task=step > 0,
                        strategy=learner.strategy)
        per_task = batch.task_returns()
        mean, ci = mean_ci95(per_task)
        success = success_ci = None
        if batch.success is not None:
            success, success_ci = mean_ci95(batch.success.mean(-1))
        results.append(AdaptationResult(step, mean, ci, len(per_task), success, success_ci,
                                        [float(v) for v in per_task]))
        bar.update(1)
        if step < max_steps:
            processed = process_episodes(batch, gamma, gae_lambda, normalize)
            lr = lrs[min(step, len(lrs) - 1)]
            fast = adapt_params(policy, params, [processed], lr, create_graph=False,
                                objective=learner.inner_objective, strategy=learner.strategy)
            params = {k: v.detach() for k, v in fast.items()}
    bar.close()
    return results
