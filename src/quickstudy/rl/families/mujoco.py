r"""HalfCheetah-Vel and HalfCheetah-Dir (Finn et al. 2017, section 5.3) on gymnasium's MuJoCo ``HalfCheetah-v5``.

* **Vel**: a target velocity ``v* ~ U[0, 2]``; reward ``r = -|v_x - v*| - 0.05 ||a||^2``.
* **Dir**: a direction ``d = +1`` (forward) or ``-1`` (backward) with probability 1/2;
  reward ``r = d v_x - 0.05 ||a||^2``.

``v_x`` is the forward velocity gymnasium reports (``info["x_velocity"]``); the control cost
``0.5 * 0.1 ||a||^2`` is the one of the paper's environments. Horizon 200. Needs the ``mujoco`` package:
``pip install 'quickstudy[mujoco]'``.

Episodes are reset by gymnasium (its seeding and reset noise) but stepped by :class:`MujocoVecEnv`, which
calls ``mujoco.mj_step`` on each episode's ``MjData`` directly (the same call gymnasium's ``step`` makes, so
the trajectories are identical) and computes observations and task rewards for the whole batch at once.
``mj_step`` releases the GIL, so the episodes are split over ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import missing_extra, seeds_from
from .gym_vec import GymVecEnv

__all__ = ["HalfCheetahVel", "HalfCheetahDir", "MujocoVecEnv"]

CTRL_COST = 0.05


def _require_mujoco(what: str) -> None:
    if importlib.util.find_spec("mujoco") is None:
        raise missing_extra("mujoco", "mujoco", what)
    if importlib.util.find_spec("gymnasium") is None:
        raise missing_extra("gymnasium", "mujoco", what)


class MujocoVecEnv:
    """``envs[b * E + e]`` (gymnasium MuJoCo envs sharing one model) run episode ``e`` of task ``b``.

    ``reward_fn(tasks [B, 1], x_velocity [B, E], actions [B, E, A]) -> reward [B, E]`` is the task reward, in
    torch, for the whole batch. Observations are ``qpos[1:]`` and ``qvel`` (gymnasium's HalfCheetah default).
    """

    def __init__(self, envs: Sequence[Any], tasks: Sequence[float], episodes: int,
                 reward_fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> None:
        import mujoco

        self._mj_step = mujoco.mj_step
        self.envs, self.num_tasks, self.episodes = list(envs), len(tasks), int(episodes)
        if len(self.envs) != self.num_tasks * self.episodes:
            raise ValueError(f"MujocoVecEnv: need {self.num_tasks * self.episodes} envs, got {len(self.envs)}")
        self.tasks = torch.tensor([float(t) for t in tasks], dtype=torch.float64).view(-1, 1)
        self.reward_fn = reward_fn
        self.model = self.envs[0].model
        self.frame_skip = self.envs[0].frame_skip
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        space = self.envs[0].action_space
        self._low, self._high = space.low, space.high
        self._datas = [env.data for env in self.envs]
        workers = max(1, min(torch.get_num_threads(), len(self.envs) // 16))  # >= 16 episodes per thread
        bounds = np.linspace(0, len(self.envs), workers + 1).astype(int)
        self._chunks = [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        self._pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self._actions = np.zeros((len(self.envs), self.model.nu))

    def _observe(self) -> Tensor:
        obs = np.stack([np.concatenate((d.qpos[1:], d.qvel)) for d in self._datas]).astype(np.float32)
        return torch.from_numpy(obs).view(self.num_tasks, self.episodes, -1)

    def reset(self, generator: torch.Generator) -> Tensor:
        for env, seed in zip(self.envs, seeds_from(generator, len(self.envs))):
            env.reset(seed=seed)
        return self._observe()

    def _step_chunk(self, bounds: tuple[int, int]) -> None:
        model, step, frames = self.model, self._mj_step, self.frame_skip
        for index in range(*bounds):
            data = self._datas[index]
            data.ctrl[:] = self._actions[index]
            step(model, data, nstep=frames)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        self._actions = np.clip(actions.detach().cpu().numpy().reshape(len(self.envs), -1), self._low, self._high)
        x_before = np.fromiter((d.qpos[0] for d in self._datas), np.float64, len(self._datas))
        if self._pool is None:
            self._step_chunk(self._chunks[0])
        else:
            list(self._pool.map(self._step_chunk, self._chunks))
        x_after = np.fromiter((d.qpos[0] for d in self._datas), np.float64, len(self._datas))
        shape = (self.num_tasks, self.episodes)
        velocity = torch.from_numpy((x_after - x_before) / self.dt).view(shape)
        applied = torch.from_numpy(self._actions).view(*shape, -1)
        reward = self.reward_fn(self.tasks, velocity, applied).to(torch.float32)
        return self._observe(), reward, torch.zeros(shape, dtype=torch.bool), {}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


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

    def make_env(self, tasks: Sequence[Any], episodes: int) -> MujocoVecEnv:
        tasks = [float(t) for t in (tasks.tolist() if isinstance(tasks, Tensor) else tasks)]
        return MujocoVecEnv(self._envs(len(tasks) * episodes), tasks, episodes, self.batch_reward)

    def make_gym_env(self, tasks: Sequence[Any], episodes: int) -> GymVecEnv:
        """The same episodes stepped through gymnasium's ``step`` one env at a time (the reference)."""
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

    @staticmethod
    def batch_reward(tasks: Tensor, velocity: Tensor, actions: Tensor) -> Tensor:
        return -(velocity - tasks).abs() - CTRL_COST * actions.square().sum(-1)


class HalfCheetahDir(_HalfCheetahFamily):
    """Tasks are directions, +1 (forward) or -1 (backward)."""

    name = "halfcheetah-dir"

    def sample_tasks(self, n: int, generator: torch.Generator, split: str = "train") -> Tensor:
        return torch.randint(0, 2, (n,), generator=generator).float() * 2 - 1

    @staticmethod
    def reward(task: float, obs: np.ndarray, action: np.ndarray, reward: float, info: dict) -> float:
        return task * float(info["x_velocity"]) - CTRL_COST * float(np.square(action).sum())

    @staticmethod
    def batch_reward(tasks: Tensor, velocity: Tensor, actions: Tensor) -> Tensor:
        return tasks * velocity - CTRL_COST * actions.square().sum(-1)
