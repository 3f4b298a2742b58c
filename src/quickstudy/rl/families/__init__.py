"""Task families of meta-RL environments: the :class:`TaskFamily` interface, 2D navigation (batched,
torch), HalfCheetah-Vel/Dir (gymnasium MuJoCo) and Meta-World ML1/ML10/ML45 adapters (optional extras)."""

from .base import TaskFamily, VecEnv, missing_extra
from .registry import FAMILIES, make_family, register_family
from .navigation import Navigation2D, Navigation2DEnv, Navigation2DVecEnv

__all__ = ["TaskFamily", "VecEnv", "FAMILIES", "register_family", "make_family", "missing_extra",
           "Navigation2D", "Navigation2DEnv", "Navigation2DVecEnv"]
