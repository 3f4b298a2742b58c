r"""Sampling episodes of a meta-batch with one batched policy call per time step.

:func:`rollout` runs ``E`` episodes of each of ``B`` tasks in a :class:`~quickstudy.rl.families.VecEnv`: at every
step the policy is evaluated once on all ``B x E`` observations (shared parameters: one call; per-task
fast weights: one vmapped call), actions are sampled with the given ``torch.Generator`` and the env steps
all episodes as one array operation. :func:`process_episodes` then fits the linear baseline per task and
computes GAE advantages (normalized per task), which the policy-gradient losses use as constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .baseline import fit_linear_baseline
from .families.base import TaskFamily, VecEnv
from .policies import policy_outputs
from .returns import discounted_returns, gae, normalize_advantages

__all__ = ["Episodes", "rollout", "process_episodes"]


@dataclass
class Episodes:
    """A batch of fixed-horizon episodes: ``B`` tasks x ``E`` episodes x ``H`` steps.

    ``mask`` is 1 for the steps that happened (an episode that terminates keeps its last step and
    masks the rest); ``logp`` the behaviour policy's log-probabilities (detached); ``advantages`` is
    filled by :func:`process_episodes`; ``success`` ``[B, E]`` (0/1) where the env reports it.
    """

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    logp: Tensor
    advantages: Tensor | None = None
    success: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return self.obs.shape[0]

    def episode_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[B, E]``."""
        return (self.rewards * self.mask).sum(-1)

    def task_returns(self) -> Tensor:
        """Mean undiscounted return per task, ``[B]``."""
        return self.episode_returns().mean(-1)

    def env_steps(self) -> int:
        return int(self.mask.sum())

    def task(self, index: int) -> "Episodes":
        """Task ``index`` alone (keeps a leading axis of size 1)."""
        pick = lambda t: None if t is None else t[index:index + 1]  # noqa: E731
        return replace(self, obs=pick(self.obs), actions=pick(self.actions), rewards=pick(self.rewards),
                       mask=pick(self.mask), logp=pick(self.logp), advantages=pick(self.advantages),
                       success=pick(self.success))


@torch.no_grad()
def rollout(family: TaskFamily, tasks: Sequence[Any] | VecEnv, policy: nn.Module, params: dict[str, Tensor],
            episodes: int, generator: torch.Generator, *, per_task: bool, strategy: str = "vmap",
            env: VecEnv | None = None) -> Episodes:
    """Sample ``episodes`` episodes of every task with ``params`` (shared, or stacked per task)."""
    own_env = env is None
    env = family.make_env(tasks, episodes) if own_env else env
    try:
        obs = env.reset(generator)
        b, e = obs.shape[:2]
        horizon = family.horizon
        observations, actions, rewards, masks, logps = [], [], [], [], []
        alive = torch.ones(b, e, dtype=torch.bool)
        success = None
        for _ in range(horizon):
            out = policy_outputs(policy, params, obs, per_task=per_task, strategy=strategy)
            action = policy.sample(out, generator)
            logps.append(policy.log_prob(out, action))
            observations.append(obs)
            actions.append(action)
            masks.append(alive.clone())
            obs, reward, done, info = env.step(action)
            rewards.append(torch.where(alive, reward.to(torch.float32), torch.zeros(())))
            if "success" in info:
                hit = info["success"].bool() & alive
                success = hit if success is None else success | hit
            alive = alive & ~done.bool()
        mask = torch.stack(masks, dim=2).to(torch.float32)
        return Episodes(obs=torch.stack(observations, dim=2), actions=torch.stack(actions, dim=2),
                        rewards=torch.stack(rewards, dim=2), mask=mask, logp=torch.stack(logps, dim=2) * mask,
                        success=None if success is None else success.to(torch.float32))
    finally:
        if own_env:
            env.close()


def process_episodes(batch: Episodes, gamma: float, gae_lambda: float, normalize: bool = True) -> Episodes:
    """``batch`` with ``advantages``: per-task linear baseline (Duan et al. 2016) + GAE, normalized per task."""
    returns = discounted_returns(batch.rewards, batch.mask, gamma)
    values = fit_linear_baseline(batch.obs, returns, batch.mask)
    adv = gae(batch.rewards, values, batch.mask, gamma, gae_lambda)
    if normalize:
        adv = normalize_advantages(adv, batch.mask, dims=(1, 2))
    return replace(batch, advantages=adv.detach())
