r"""HalfCheetah-Vel and HalfCheetah-Dir (Finn et al. 2017, section 5.3) on gymnasium's MuJoCo ``HalfCheetah-v5``.

* **Vel**: a target velocity ``v* ~ U[0, 2]``; reward ``r = -|v_x - v*| - 0.05 ||a||^2``.
* **Dir**: a direction ``d = +1`` (forward) or ``-1`` (backward) with probability 1/2;
  reward ``r = d v_x - 0.05 ||a||^2``.

``v_x`` is the forward velocity gymnasium reports (``info["x_velocity"]``); the control cost
``0.5 * 0.1 ||a||^2`` is the one of the paper's environments. Horizon 200. Needs the ``mujoco`` package:
``pip install 'quickstudy[mujoco]'``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import missing_extra
from .gym_vec import GymVecEnv

__all__ = ["HalfCheetahVel", "HalfCheetahDir"]

CTRL_COST = 0.05


def _require_mujoco(what: str) -> None:
    if importlib.util.find_spec("mujoco") is None:
        raise missing_extra("mujoco", "mujoco", what)
    if importlib.util.find_spec("gymnasium") is None:
        raise missing_extra("gymnasium", "mujoco", what)


class _HalfCheetahFamily:
    obs_dim = 17
    action_dim = 6
    discrete = False
    env_id = "HalfCheetah-v5"

    def __init__(self, horizon: int = 200) -> None:
        _require_mujoco(type(self).__name__)
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"{type(self).__name__}: horizon must be a positive integer, got {horizon!r}")
        self.horizon = horizon
        self._pool: list[Any] = []

    def _envs(self, count: int) -> list[Any]:
        import gymnasium

        while len(self._pool) < count:
            # the episode length is ours (horizon); gymnasium's own 1000-step limit never triggers first
            self._pool.append(gymnasium.make(self.env_id, max_episode_steps=max(self.horizon, 1000)).unwrapped)
        return self._pool[:count]

    @staticmethod
    def set_task(env: Any, task: Any) -> None:
        env._quickstudy_task = float(task)

    def make_env(self, tasks: Sequence[Any], episodes: int) -> GymVecEnv:
        tasks = [float(t) for t in (tasks.tolist() if isinstance(tasks, Tensor) else tasks)]
        return GymVecEnv(self._envs(len(tasks) * episodes), tasks, episodes, self.set_task, self.reward)

    def make_single(self, task: Any) -> Any:
        env = self._envs(1)[0]
        self.set_task(env, task)
        return env


class HalfCheetahVel(_HalfCheetahFamily):
    """Tasks are target velocities ``U[low, high]`` (default ``[0, 2]``)."""

    name = "halfcheetah-vel"

    def __init__(self, horizon: int = 200, low: float = 0.0, high: float = 2.0) -> None:
        super().__init__(horizon)
        self.low, self.high = float(low), float(high)

    def sample_tasks(self, n: int, generator: torch.Generator, split: str = "train") -> Tensor:
        return self.low + (self.high - self.low) * torch.rand(n, generator=generator)

    @staticmethod
    def reward(task: float, obs: np.ndarray, action: np.ndarray, reward: float, info: dict) -> float:
        return -abs(float(info["x_velocity"]) - task) - CTRL_COST * float(np.square(action).sum())


class HalfCheetahDir(_HalfCheetahFamily):
    """Tasks are directions, +1 (forward) or -1 (backward)."""

    name = "halfcheetah-dir"

    def sample_tasks(self, n: int, generator: torch.Generator, split: str = "train") -> Tensor:
        return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1

    @staticmethod
    def reward(task: float, obs: np.ndarray, action: np.ndarray, reward: float, info: dict) -> float:
        return task * float(info["x_velocity"]) - CTRL_COST * float(np.square(action).sum())
