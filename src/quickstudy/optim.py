"""The one registry of optimizers and learning-rate schedules.

Every list of choices is built from these two dicts: the Trainer's ``optimizer=`` and ``schedule=``, the
config file's ``train.optimizer`` and ``train.schedule``, Reptile's inner optimizer and the fine-tune
baseline's head optimizer. (Top level rather than under ``training``: algorithms use it and must not depend
on the training shell.)

Schedules are stepped once per meta-update, over ``steps`` updates:

==========  ======================================================  ==========================================
name        learning rate at update t                               options (default)
==========  ======================================================  ==========================================
``cosine``  ``lr * (1 + cos(pi t / steps)) / 2``                    none
``linear``  ``lr * max(0, 1 - t / steps)`` (Reptile's meta step)   none
``step``    ``lr * gamma ** floor(t / step_size)``                  ``step_size`` (steps // 3), ``gamma`` (0.5)
==========  ======================================================  ==========================================

``gamma=0.5`` is Prototypical Networks' halving (Snell et al. 2017: "cut the learning rate in half every
2000 episodes").
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch

from ._validation import check_choice, check_int, check_number

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_schedule"]

#: name -> optimizer class, called as ``cls(params, lr=lr, **kwargs)``
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


def build_optimizer(owner: str, name: str, params: Iterable[torch.Tensor], lr: float, *, strict: bool = True,
                    **kwargs: Any) -> torch.optim.Optimizer:
    """``OPTIMIZERS[name](params, lr=lr, **kwargs)``. With ``strict=False`` the keyword arguments the optimizer
    does not take are dropped (e.g. ``momentum`` for Adam), so one set of options serves every choice."""
    cls = OPTIMIZERS[check_choice(owner, "optimizer", name, OPTIMIZERS)]
    if not strict:
        accepted = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(params, lr=lr, **kwargs)


def _cosine(optimizer, steps: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)


def _linear(optimizer, steps: int):
    total = max(1, steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))


def _step(optimizer, steps: int, step_size: int | None = None, gamma: float = 0.5):
    step_size = max(1, steps // 3) if step_size is None else check_int("schedule 'step'", "step_size", step_size)
    gamma = check_number("schedule 'step'", "gamma", gamma)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


#: name -> ``factory(optimizer, steps, **options) -> LR scheduler`` (see the module docstring)
SCHEDULES: dict[str, Callable[..., Any]] = {"cosine": _cosine, "linear": _linear, "step": _step}


def build_schedule(owner: str, spec: str | Callable | None, optimizer: torch.optim.Optimizer, steps: int,
                   options: dict[str, Any] | None = None):
    """``None`` (constant rate), a name in :data:`SCHEDULES` with its ``options``, or ``spec(optimizer)``."""
    options = dict(options or {})
    if spec is None:
        if options:
            raise ValueError(f"{owner}: schedule options {sorted(options)} given without a schedule")
        return None
    if isinstance(spec, str):
        factory = SCHEDULES[check_choice(owner, "schedule", spec, SCHEDULES)]
        accepted = [n for n in inspect.signature(factory).parameters if n not in ("optimizer", "steps")]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"{owner}: schedule {spec!r} takes {accepted or 'no options'}; got {unknown}")
        return factory(optimizer, steps, **options)
    if not callable(spec):
        raise ValueError(f"{owner}: schedule must be None, one of {list(SCHEDULES)} or a callable; got {spec!r}")
    scheduler = spec(optimizer)
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError(f"{owner}: ReduceLROnPlateau needs a metric at every step and is not supported; use a "
                         "step-based schedule")
    if not callable(getattr(scheduler, "step", None)) or not callable(getattr(scheduler, "state_dict", None)):
        raise TypeError(f"{owner}: schedule(optimizer) returned a {type(scheduler).__name__}, expected an LR scheduler")
    return scheduler
