"""The task-family interface of meta-RL: sample tasks with a seed, set a task, make vectorized envs.

A **task family** (:class:`TaskFamily`) is a distribution over MDPs that share observation and action
spaces: goals of a point robot, target velocities of a cheetah, Meta-World manipulation tasks. A
**vectorized env** (:class:`VecEnv`) steps ``E`` episodes of each of ``B`` tasks as one batch: observations
``[B, E, obs_dim]``, actions ``[B, E, action_dim]`` (``[B, E]`` integers for discrete actions), rewards and
``done`` flags ``[B, E]``. Every episode has the family's fixed ``horizon``; an episode that ends early is
masked by the rollout (its later rewards are ignored).

To add a family, implement the four members below (a plain class is enough: this is a ``Protocol``) and
register a factory with :func:`quickstudy.rl.register_family` (:mod:`.registry`) so configs can name it.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

__all__ = ["TaskFamily", "VecEnv", "missing_extra", "seeds_from"]


@runtime_checkable
class VecEnv(Protocol):
    """``B`` tasks x ``E`` episodes stepped together (see the module docstring)."""

    num_tasks: int
    episodes: int

    def reset(self, generator: torch.Generator) -> Tensor:
        """Start every episode; returns observations ``[B, E, obs_dim]`` (float32)."""

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """``(obs [B, E, obs_dim], reward [B, E], done [B, E] bool, info)``; ``info["success"]`` ``[B, E]`` where
        the family defines success (Meta-World)."""

    def close(self) -> None: ...


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution of tasks with a common observation/action space and horizon."""

    name: str
    obs_dim: int
    action_dim: int  # number of actions when discrete
    discrete: bool
    horizon: int

    def sample_tasks(self, n: int, generator: torch.Generator, split: str = "train") -> Sequence[Any]:
        """``n`` tasks drawn with ``generator`` (``split="test"``: held-out tasks where the family has them)."""

    def make_env(self, tasks: Sequence[Any], episodes: int) -> VecEnv:
        """A vectorized env running ``episodes`` episodes of each task in ``tasks``."""


def missing_extra(package: str, extra: str, what: str) -> ImportError:
    """The ImportError raised when an optional dependency is absent: it says what to install."""
    return ImportError(
        f"{what} needs the '{package}' package, which is not installed. Install the optional extra: "
        f"pip install 'quickstudy[{extra}]'"
    )


def seeds_from(generator: torch.Generator, n: int) -> list[int]:
    """``n`` integer seeds drawn from ``generator`` (for numpy/gymnasium environments)."""
    return [int(s) for s in torch.randint(0, 2**31 - 1, (n,), generator=generator)]
