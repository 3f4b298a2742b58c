r"""2D navigation (Finn et al. 2017, section 5.3): a point robot must reach an unknown goal.

* state and observation: the position ``p`` in the plane, starting at the origin;
* action: a displacement; the policy acts in ``[-1, 1]^2`` (clipped) and the env moves by ``0.1 a``, i.e.
  steps are clipped to ``[-0.1, 0.1]^2`` (the authors' code wraps the env in rllab's ``normalize``);
* task: the goal ``g ~ U[-0.5, 0.5]^2``; reward ``r = -||p' - g||_2``; the episode ends when both
  coordinates are within 0.01 of the goal, or after ``horizon`` = 100 steps.

:class:`Navigation2DVecEnv` steps a whole meta-batch (``B`` goals x ``E`` episodes) as one tensor operation.
:class:`Navigation2DEnv` is the same MDP as a single gymnasium-style env (``reset(seed)``, ``step``, and
``set_task``) for users' own loops and for the per-task baseline in ``bench/rl_speed.py``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["Navigation2D", "Navigation2DVecEnv", "Navigation2DEnv"]


class Navigation2DVecEnv:
    """``B`` goals x ``E`` episodes of 2D navigation, stepped together (torch, float32)."""

    def __init__(self, goals: Tensor, episodes: int, action_scale: float = 0.1, goal_tolerance: float = 0.01):
        self.goals = torch.as_tensor(goals, dtype=torch.float32).reshape(-1, 2)
        self.num_tasks, self.episodes = self.goals.shape[0], int(episodes)
        self.action_scale, self.goal_tolerance = float(action_scale), float(goal_tolerance)
        self.position = torch.zeros(self.num_tasks, self.episodes, 2)

    def reset(self, generator: torch.Generator | None = None) -> Tensor:
        self.position = torch.zeros(self.num_tasks, self.episodes, 2)
        return self.position.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        move = actions.detach().to(torch.float32).clamp(-1.0, 1.0) * self.action_scale
        self.position = self.position + move
        offset = self.position - self.goals.unsqueeze(1)
        reward = -offset.norm(dim=-1)
        done = (offset.abs() < self.goal_tolerance).all(dim=-1)
        return self.position.clone(), reward, done, {}

    def close(self) -> None:
        pass


class Navigation2D:
    """The 2D navigation task family; tasks are goals (rows of a ``[n, 2]`` tensor)."""

    name = "navigation2d"
    obs_dim = 2
    action_dim = 2
    discrete = False

    def __init__(self, horizon: int = 100, goal_low: float = -0.5, goal_high: float = 0.5,
                 action_scale: float = 0.1) -> None:
        if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"Navigation2D: horizon must be a positive integer, got {horizon!r}")
        if not goal_low < goal_high:
            raise ValueError(f"Navigation2D: goal_low must be < goal_high, got {goal_low!r} and {goal_high!r}")
        if not action_scale > 0:
            raise ValueError(f"Navigation2D: action_scale must be > 0, got {action_scale!r}")
        self.horizon, self.goal_low, self.goal_high = horizon, float(goal_low), float(goal_high)
        self.action_scale = float(action_scale)

    def sample_tasks(self, n: int, generator: torch.Generator, split: str = "train") -> Tensor:
        return self.goal_low + (self.goal_high - self.goal_low) * torch.rand(n, 2, generator=generator)

    def make_env(self, tasks: Sequence[Any], episodes: int) -> Navigation2DVecEnv:
        goals = tasks if isinstance(tasks, Tensor) else torch.stack([torch.as_tensor(t) for t in tasks])
        return Navigation2DVecEnv(goals, episodes, self.action_scale)

    def make_single(self, task: Any | None = None) -> "Navigation2DEnv":
        return Navigation2DEnv(task, horizon=self.horizon, action_scale=self.action_scale)


try:  # a gymnasium.Env when gymnasium is installed (the rl extra); a plain class otherwise
    import gymnasium as _gym

    _EnvBase: Any = _gym.Env
except ImportError:  # pragma: no cover - gymnasium is a test dependency
    _gym = None
    _EnvBase = object


class Navigation2DEnv(_EnvBase):
    """One 2D navigation episode at a time, with the gymnasium API (numpy, float32)."""

    def __init__(self, goal: Any | None = None, horizon: int = 100, action_scale: float = 0.1) -> None:
        self.horizon, self.action_scale = horizon, action_scale
        self._goal = np.zeros(2, dtype=np.float32) if goal is None else np.asarray(goal, dtype=np.float32)
        self._pos = np.zeros(2, dtype=np.float32)
        self._t = 0
        if _gym is not None:
            self.observation_space = _gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
            self.action_space = _gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def set_task(self, goal: Any) -> None:
        self._goal = np.asarray(goal, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._pos = np.zeros(2, dtype=np.float32)
        self._t = 0
        return self._pos.copy(), {}

    def step(self, action):
        move = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0) * self.action_scale
        self._pos = self._pos + move
        self._t += 1
        offset = self._pos - self._goal
        reward = -float(np.sqrt((offset * offset).sum()))
        terminated = bool(np.all(np.abs(offset) < 0.01))
        truncated = self._t >= self.horizon
        return self._pos.copy(), reward, terminated, truncated, {}
