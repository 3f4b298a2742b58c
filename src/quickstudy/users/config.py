"""Recommendation-for-new-users configuration (``kind: users``), validated before anything runs.

Unknown keys and wrong types fail naming the dotted key, with the override syntax and error format of
:mod:`quickstudy.config`. Example (``configs/users/melu-movietweetings.yaml``)::

    kind: users
    name: melu-movietweetings
    data: {source: movietweetings}
    split: {kind: random, min_ratings: 15, val_fraction: 0.1, test_fraction: 0.3, seed: 0}
    task: {shots: [5, 10], queries: 20, meta_batch: 32}
    model: {name: melu, embedding_dim: 32, hidden: [64, 64]}
    algorithm: {name: anil, head: decision, inner_lr: 0.05, inner_steps: 1}
    train: {steps: 3000, lr: 0.001, val_every: 250, time_limit: 10}
    eval: {shots: [5, 10], baselines: [global, item, user, mf, knn]}

``data.source: files`` reads your own ``data.ratings`` (``user,item,rating[,timestamp]`` CSV or the ``::``
format) and, optionally, ``data.items`` (titles, genres, years).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..config import ComponentConfig, Reference, TrainConfig, _Strict, load_validated

__all__ = ["UsersConfig", "load_users_config", "NAME"]

NAME = "users"


class UsersDataConfig(_Strict):
    source: Literal["movietweetings", "files"] = "movietweetings"
    ratings: str | None = None    # files: user,item,rating[,timestamp] (CSV or '::')
    items: str | None = None      # files: item catalogue (optional)
    root: str | None = None       # movietweetings: the folder holding ratings.dat and movies.dat
    scale: tuple[float, float] = (0.0, 10.0)
    download: bool = True

    @model_validator(mode="after")
    def _files_need_ratings(self):
        if self.source == "files" and not self.ratings:
            raise ValueError("data.source 'files' needs data.ratings: the path of your ratings file")
        if not 0 <= self.scale[0] < self.scale[1]:
            raise ValueError(f"data.scale must be [low, high] with 0 <= low < high, got {list(self.scale)}")
        return self


class SplitConfig(_Strict):
    kind: Literal["random", "time"] = "random"
    min_ratings: int = Field(15, ge=2)       # users evaluated (validation and test) have at least this many
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.3, gt=0, lt=1)  # random split only
    cutoff: str | int | None = None           # time split: test users arrive at or after it ('2013-05-01')
    seed: int = 0

    @field_validator("cutoff", mode="before")
    @classmethod
    def _dates_as_text(cls, value):
        return value.isoformat() if hasattr(value, "isoformat") else value  # YAML reads 2013-05-01 as a date

    @model_validator(mode="after")
    def _time_needs_cutoff(self):
        if self.kind == "time" and self.cutoff is None:
            raise ValueError("split.kind 'time' needs split.cutoff (an ISO date like '2013-05-01' or Unix seconds)")
        return self


class FeaturesConfig(_Strict):
    item_shrink: float = Field(5.0, ge=0)    # lambda of the item bias fed to the network
    genre_profile: bool = True               # per-genre residuals of the support set in the user profile


class UsersTaskConfig(_Strict):
    shots: int | tuple[int, int] = (5, 10)   # training support sizes: one K per meta-batch, drawn from the range
    queries: int = Field(20, ge=1)           # query ratings per training task
    meta_batch: int = Field(32, ge=1)


class UsersTrainConfig(TrainConfig):
    val_episodes: int | None = Field(None, ge=1)  # validation users (None: all of them)


class UsersEvalConfig(_Strict):
    shots: list[int] = Field(default_factory=lambda: [5, 10], min_length=1)
    support: Literal["random", "first"] | None = None   # default: random (random split), first by time (time split)
    seed: int = 1234
    users: int | None = Field(None, ge=1)    # test users scored (None: all)
    inner_steps: int | None = Field(None, ge=0)
    baselines: list[str] = Field(default_factory=lambda: ["global", "item", "user", "mf", "knn"])
    clip: bool = True                         # predictions clipped to data.scale, for every method alike

    @field_validator("shots")
    @classmethod
    def _positive(cls, value):
        if any(k < 1 for k in value):
            raise ValueError("every support size must be a positive integer")
        return value

    @field_validator("baselines")
    @classmethod
    def _known(cls, value):
        from .baselines import BASELINES

        unknown = [v for v in value if v not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
        return value


class UsersConfig(_Strict):
    kind: Literal["users"] = "users"
    name: str = "users-experiment"
    label: str | None = None                 # the meta-learner's name in tables (default: algorithm.name)
    description: str | None = None
    reference: Reference | list[Reference] | None = None
    protocol: str | None = None
    seed: int = 0
    device: str = "cpu"
    data: UsersDataConfig = UsersDataConfig()
    split: SplitConfig = SplitConfig()
    features: FeaturesConfig = FeaturesConfig()
    task: UsersTaskConfig = UsersTaskConfig()
    model: ComponentConfig = ComponentConfig(name="melu")
    algorithm: ComponentConfig = ComponentConfig(name="anil", head="decision")
    train: UsersTrainConfig = UsersTrainConfig()
    eval: UsersEvalConfig = UsersEvalConfig()
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict)  # keyword arguments per baseline name

    @field_validator("baselines")
    @classmethod
    def _known_names(cls, value):
        from .baselines import BASELINES

        unknown = [k for k in value if k not in BASELINES]
        if unknown:
            raise ValueError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
        return value


def load_users_config(path: str | Path | None = None, overrides: list[str] | None = None,
                      raw: dict | None = None) -> tuple[UsersConfig, dict]:
    """Read, override and validate; returns the config and the resolved raw dict (to write back)."""
    return load_validated(UsersConfig, path, overrides, raw, default={"kind": NAME})
