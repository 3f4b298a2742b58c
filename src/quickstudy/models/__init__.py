"""Backbones and the functional Learner view.

Every backbone is a plain ``nn.Module`` with constructor arguments that are plain scalars, strings or
lists (so the CLI builds them from YAML through :data:`MODELS`), a ``head`` (the last ``nn.Linear``,
``None`` when ``ways``/``out_features`` is ``None``), ``feature_dim`` (the width the head sees) and
``out_features`` (the output width).
"""

from __future__ import annotations

from torch import nn

from .accelerate import Accelerated, AccelerationReport, accelerate, acceleration_report
from .batchnorm import BN_POLICIES, TaskBatchNorm, TaskBatchNorm2d, make_norm
from .conv4 import Conv4, conv4_sequential
from .learner import Learner
from .melu import MeLU
from .mlp import MLP
from .resnet12 import ResNet12

__all__ = [
    "Accelerated",
    "AccelerationReport",
    "accelerate",
    "acceleration_report",
    "BN_POLICIES",
    "Conv4",
    "conv4_sequential",
    "Learner",
    "MLP",
    "MeLU",
    "MODELS",
    "ResNet12",
    "TaskBatchNorm",
    "TaskBatchNorm2d",
    "build_model",
    "make_norm",
]

#: name -> class, for configuration files: ``MODELS[name](**kwargs)``.
MODELS: dict[str, type[nn.Module]] = {"conv4": Conv4, "mlp": MLP, "resnet12": ResNet12, "melu": MeLU}


def build_model(name: str, **kwargs) -> nn.Module:
    """``MODELS[name](**kwargs)`` with a clear error for an unknown name."""
    if name not in MODELS:
        raise ValueError(f"build_model: name must be one of {', '.join(repr(n) for n in MODELS)}; got {name!r}")
    return MODELS[name](**kwargs)
