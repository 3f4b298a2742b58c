"""RL experiment configuration (``kind: rl``): one YAML file per experiment, validated before anything runs.

Unknown keys and wrong types fail naming the dotted key, as :mod:`quickstudy.config` does for the
supervised configs (its override syntax and error format are reused). Example
(``configs/rl/maml-trpo-navigation2d.yaml``)::

    kind: rl
    name: maml-trpo-navigation2d
    env: {name: navigation2d, horizon: 100}
    policy: {hidden: [100, 100], activation: relu, init_std: 1.0}
    algorithm: {outer: trpo, inner_lr: 0.1, inner_steps: 1, max_kl: 0.01}
    train: {iterations: 500, meta_batch: 20, episodes_per_task: 20}
    eval: {tasks: 40, episodes_per_task: 20, max_steps: 3, seed: 1234}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from ..config import _Strict, load_validated

__all__ = ["RLConfig", "load_rl_config", "is_rl_config"]


class RLReference(_Strict):
    source: str
    metric: Literal["return", "success_rate"] = "return"
    value: float | list[float]
    note: str | None = None


class EnvConfig(_Strict):
    """The task family (``navigation2d``, ``halfcheetah-vel``, ``halfcheetah-dir``, ``metaworld-ml1`` ...) and
    its keyword arguments (e.g. ``horizon``, ``env_name`` for ML1)."""

    model_config = ConfigDict(extra="allow")
    name: str = "navigation2d"

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PolicyConfig(_Strict):
    hidden: list[int] = Field(default_factory=lambda: [100, 100], min_length=1)
    activation: Literal["relu", "tanh"] = "relu"
    init_std: float = Field(1.0, gt=0)


class AlgorithmConfig(_Strict):
    name: Literal["maml-rl"] = "maml-rl"
    outer: Literal["trpo", "ppo"] = "trpo"
    inner_lr: float = Field(0.1, gt=0)
    inner_steps: int = Field(1, ge=1)
    first_order: bool = False
    inner_objective: Literal["reinforce", "lvc"] = "reinforce"
    gamma: float = Field(0.99, gt=0, le=1)
    gae_lambda: float = Field(1.0, ge=0, le=1)
    normalize_advantages: bool = True
    max_kl: float = Field(0.01, gt=0)
    cg_iters: int = Field(10, ge=1)
    cg_damping: float = Field(1e-5, ge=0)
    ls_ratio: float = Field(0.8, gt=0, lt=1)
    ls_max_steps: int = Field(15, ge=1)
    ppo_clip: float = Field(0.2, gt=0)
    ppo_epochs: int = Field(5, ge=1)
    ppo_lr: float = Field(1e-3, gt=0)
    strategy: Literal["vmap", "loop"] = "loop"


class TrainConfig(_Strict):
    iterations: int = Field(500, ge=1)
    meta_batch: int = Field(20, ge=1)
    episodes_per_task: int = Field(20, ge=1)
    time_limit: float | None = Field(None, gt=0)  # minutes of training; stops early and checkpoints
    checkpoint_every: int = Field(10, ge=1)
    log_every: int = Field(1, ge=1)


class EvalConfig(_Strict):
    tasks: int = Field(40, ge=2)
    episodes_per_task: int = Field(20, ge=1)
    max_steps: int = Field(3, ge=0)
    # step size of each evaluation step (a list: step k uses item min(k, len - 1)); default: algorithm.inner_lr
    inner_lr: float | list[float] | None = None
    seed: int = 1234


    @field_validator("inner_lr")
    @classmethod
    def _positive(cls, value):
        values = value if isinstance(value, list) else [] if value is None else [value]
        if (isinstance(value, list) and not value) or any(v <= 0 for v in values):
            raise ValueError("must be a positive number or a non-empty list of positive numbers")
        return value


class RLConfig(_Strict):
    kind: Literal["rl"] = "rl"
    name: str = "rl-experiment"
    description: str | None = None
    reference: RLReference | list[RLReference] | None = None
    protocol: str | None = None
    seed: int = 0
    env: EnvConfig = EnvConfig()
    policy: PolicyConfig = PolicyConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()


def is_rl_config(path: str | Path | None) -> bool:
    """Whether ``path`` is an RL config (a YAML mapping with ``kind: rl``) or a run folder holding one."""
    from ..tasks.kinds import kind_of

    try:
        return path is not None and kind_of(path).name == "rl"
    except ValueError:  # an unknown kind: not RL
        return False


def load_rl_config(path: str | Path | None = None, overrides: list[str] | None = None,
                   raw: dict | None = None) -> tuple[RLConfig, dict]:
    """Read, override and validate; returns the config and the resolved raw dict (to write back)."""
    return load_validated(RLConfig, path, overrides, raw, default={"kind": "rl"})
