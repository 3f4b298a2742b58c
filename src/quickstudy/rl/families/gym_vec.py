"""A :class:`~quickstudy.rl.families.base.VecEnv` over a pool of single gymnasium environments.

For families whose simulator is not batched (MuJoCo, Meta-World): ``B x E`` environments are stepped one
after another on numpy arrays and their results stacked into tensors. Environments are created once per
family and reused across meta-iterations (the family's ``set_task`` switches their task), since creating
a MuJoCo env costs milliseconds.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import seeds_from

__all__ = ["GymVecEnv"]


class GymVecEnv:
    """``envs[b * E + e]`` runs episode ``e`` of task ``b``; ``reward_fn(task, obs, action, reward, info)`` may
    replace the env's reward (task-dependent rewards); ``info["success"]`` is collected when present."""

    def __init__(self, envs: Sequence[Any], tasks: Sequence[Any], episodes: int,
                 set_task: Callable[[Any, Any], None],
                 reward_fn: Callable[[Any, np.ndarray, np.ndarray, float, dict], float] | None = None) -> None:
        self.envs, self.tasks = list(envs), list(tasks)
        self.num_tasks, self.episodes = len(self.tasks), int(episodes)
        if len(self.envs) != self.num_tasks * self.episodes:
            raise ValueError(f"GymVecEnv: need {self.num_tasks * self.episodes} envs, got {len(self.envs)}")
        self.set_task, self.reward_fn = set_task, reward_fn
        space = self.envs[0].action_space
        self._low = getattr(space, "low", None)
        self._high = getattr(space, "high", None)

    def _task_of(self, index: int) -> Any:
        return self.tasks[index // self.episodes]

    def reset(self, generator: torch.Generator) -> Tensor:
        observations = []
        for index, (env, seed) in enumerate(zip(self.envs, seeds_from(generator, len(self.envs)))):
            self.set_task(env, self._task_of(index))
            obs, _ = env.reset(seed=seed)
            observations.append(np.asarray(obs, dtype=np.float32))
        return torch.from_numpy(np.stack(observations)).view(self.num_tasks, self.episodes, -1)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        acts = actions.detach().cpu().numpy().reshape(len(self.envs), -1)
        if self._low is not None:
            acts = np.clip(acts, self._low, self._high)
        observations, rewards, dones, successes = [], [], [], []
        for index, (env, action) in enumerate(zip(self.envs, acts)):
            obs, reward, terminated, truncated, info = env.step(action)
            if self.reward_fn is not None:
                reward = self.reward_fn(self._task_of(index), obs, action, reward, info)
            observations.append(np.asarray(obs, dtype=np.float32))
            rewards.append(float(reward))
            dones.append(bool(terminated))
            if "success" in info:
                successes.append(float(info["success"]))
        shape = (self.num_tasks, self.episodes)
        out_info = {}
        if len(successes) == len(self.envs):
            out_info["success"] = torch.tensor(successes).view(shape)
        return (torch.from_numpy(np.stack(observations)).view(*shape, -1), torch.tensor(rewards).view(shape),
                torch.tensor(dones).view(shape), out_info)

    def close(self) -> None:  # the envs belong to the family's pool
        pass
