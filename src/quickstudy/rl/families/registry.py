"""The registry of task families: ``env.name`` in an RL config -> a factory of the family.

A registry module of its own: it imports the families' modules on first use (the MuJoCo and Meta-World ones
need optional extras), and none of them imports it, so registering a family never makes an import cycle.
"""

from __future__ import annotations

from typing import Any, Callable

from .base import TaskFamily

__all__ = ["FAMILIES", "register_family", "make_family"]


def _navigation2d(**kwargs: Any) -> TaskFamily:
    from .navigation import Navigation2D

    return Navigation2D(**kwargs)


def _mujoco(name: str) -> Callable[..., TaskFamily]:
    def factory(**kwargs: Any) -> TaskFamily:
        from . import mujoco

        return getattr(mujoco, name)(**kwargs)

    return factory


def _metaworld(benchmark: str) -> Callable[..., TaskFamily]:
    def factory(**kwargs: Any) -> TaskFamily:
        from .metaworld import MetaWorldFamily

        return MetaWorldFamily(benchmark=benchmark, **kwargs)

    return factory


#: name -> ``factory(**kwargs) -> TaskFamily``
FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "navigation2d": _navigation2d,
    "halfcheetah-vel": _mujoco("HalfCheetahVel"),
    "halfcheetah-dir": _mujoco("HalfCheetahDir"),
    "metaworld-ml1": _metaworld("ml1"),
    "metaworld-ml10": _metaworld("ml10"),
    "metaworld-ml45": _metaworld("ml45"),
}


def register_family(name: str, factory: Callable[..., TaskFamily]) -> None:
    """Make ``factory(**kwargs)`` available as ``env.name: <name>`` in RL configs."""
    FAMILIES[name] = factory


def make_family(name: str, **kwargs: Any) -> TaskFamily:
    """The task family registered as ``name`` (``navigation2d``, ``halfcheetah-vel``, ``halfcheetah-dir``,
    ``metaworld-ml1``, ``metaworld-ml10``, ``metaworld-ml45`` or one you registered)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; expected one of: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name](**kwargs)
