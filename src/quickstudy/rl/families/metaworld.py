"""Meta-World v3 benchmarks (Yu et al. 2019; PyPI ``metaworld``) as task families: ML1, ML10, ML45.

Meta-World's own benchmark classes define the tasks: ``metaworld.ML1(env_name)``, ``metaworld.ML10()``,
``metaworld.ML45()`` each hold ``train_classes``/``train_tasks`` and ``test_classes``/``test_tasks`` (for ML1 the
test tasks are new goal positions of the same manipulation task; for ML10/ML45 new task classes).
``sample_tasks(n, generator, split)`` draws ``n`` of the split's tasks; an environment is made per task class
and switched with ``env.set_task(task)``, as the benchmark prescribes.

Evaluation protocol (Meta-World's meta-RL protocol): an episode is a success when the env reports
``info["success"]`` at any step; the success rate after adaptation on the test tasks is the metric, reported
by ``quickstudy eval`` beside the return. Observations are 39-dimensional, actions 4-dimensional in [-1, 1],
episodes 500 steps (``max_path_length`` of v3). Needs ``pip install 'quickstudy[metaworld]'``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Sequence

import torch

from .base import missing_extra
from .gym_vec import GymVecEnv

__all__ = ["MetaWorldFamily"]


class MetaWorldFamily:
    """``benchmark`` in ``ml1`` (give ``env_name``, e.g. ``reach-v3``), ``ml10``, ``ml45``."""

    obs_dim = 39
    action_dim = 4
    discrete = False

    def __init__(self, benchmark: str = "ml1", env_name: str | None = "reach-v3", horizon: int = 500,
                 seed: int = 0) -> None:
        if importlib.util.find_spec("metaworld") is None:
            raise missing_extra("metaworld", "metaworld", f"the Meta-World {benchmark.upper()} task family")
        import metaworld

        benchmark = benchmark.lower()
        if benchmark == "ml1":
            if not env_name:
                raise ValueError("MetaWorldFamily: ML1 needs env_name, e.g. 'reach-v3', 'push-v3', 'pick-place-v3'")
            self.benchmark = metaworld.ML1(env_name, seed=seed)
        elif benchmark == "ml10":
            self.benchmark = metaworld.ML10(seed=seed)
        elif benchmark == "ml45":
            self.benchmark = metaworld.ML45(seed=seed)
        else:
            raise ValueError(f"MetaWorldFamily: benchmark must be 'ml1', 'ml10' or 'ml45', got {benchmark!r}")
        self.name = f"metaworld-{benchmark}" + (f"-{env_name}" if benchmark == "ml1" else "")
        self.horizon = int(horizon)
        self._pool: dict[str, list[Any]] = {}

    def _split(self, split: str) -> tuple[dict[str, Any], list[Any]]:
        if split == "train":
            return self.benchmark.train_classes, list(self.benchmark.train_tasks)
        if split == "test":
            return self.benchmark.test_classes, list(self.benchmark.test_tasks)
        raise ValueError(f"MetaWorldFamily: split must be 'train' or 'test', got {split!r}")

    def sample_tasks(self, n: int, generator: torch.Generator, split: str = "train") -> list[Any]:
        _, tasks = self._split(split)
        picks = torch.randint(0, len(tasks), (n,), generator=generator).tolist()
        return [(split, tasks[i]) for i in picks]

    def _env(self, split: str, env_name: str, slot: int) -> Any:
        classes, _ = self._split(split)
        pool = self._pool.setdefault(env_name, [])
        while len(pool) <= slot:
            env = classes[env_name]()
            env.max_path_length = max(getattr(env, "max_path_length", self.horizon), self.horizon)
            pool.append(env)
        return pool[slot]

    @staticmethod
    def set_task(env: Any, task: Any) -> None:
        env.set_task(task[1])

    def make_env(self, tasks: Sequence[Any], episodes: int) -> GymVecEnv:
        used: dict[str, int] = {}
        envs = []
        for split, task in tasks:
            for _ in range(episodes):
                slot = used.get(task.env_name, 0)
                used[task.env_name] = slot + 1
                envs.append(self._env(split, task.env_name, slot))
        return GymVecEnv(envs, list(tasks), episodes, self.set_task)
