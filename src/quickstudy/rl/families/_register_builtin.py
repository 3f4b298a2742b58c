"""Registers the built-in families (the MuJoCo and Meta-World modules import their packages lazily)."""

from .base import FAMILIES
from .navigation import Navigation2D


def _halfcheetah_vel(**kwargs):
    from .mujoco import HalfCheetahVel

    return HalfCheetahVel(**kwargs)


def _halfcheetah_dir(**kwargs):
    from .mujoco import HalfCheetahDir

    return HalfCheetahDir(**kwargs)


def _metaworld(benchmark: str):
    def factory(**kwargs):
        from .metaworld import MetaWorldFamily

        return MetaWorldFamily(benchmark=benchmark, **kwargs)

    return factory


FAMILIES.setdefault("navigation2d", Navigation2D)
FAMILIES.setdefault("halfcheetah-vel", _halfcheetah_vel)
FAMILIES.setdefault("halfcheetah-dir", _halfcheetah_dir)
for _name in ("ml1", "ml10", "ml45"):
    FAMILIES.setdefault(f"metaworld-{_name}", _metaworld(_name))
