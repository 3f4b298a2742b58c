"""Learner: any ``nn.Module`` seen functionally, as (params dict, buffers dict, apply).

    learner = Learner(model)
    params = learner.params()                 # {name: Parameter} of the trainable parameters
    fast = {k: p - 0.4 * g for ...}           # any dict of tensors with (some of) those names
    out = learner(fast, x)                    # torch.func.functional_call(model, fast, (x,)), on the kernels

``learner(fast, x, backward_once=True)`` says that the graph built will be backpropagated at most once, so the
kernels may keep less for it. A module whose ``forward`` takes ``backward_once`` itself (``Conv4``, a model
passed through :func:`~quickstudy.models.accelerate`) is called with it; any other module is run through its
accelerated program (:mod:`quickstudy.models.accelerate`: the patterns of standard layers it contains on
quickstudy's kernels, same values and derivatives; a model that cannot be traced runs as it is). Pass
``accelerate(model, kernels="none")`` to run a model exactly as written.

Parameters missing from the dict, frozen parameters (``requires_grad=False``) and buffers are taken from
the module itself, so running batch-norm statistics update in place as usual.

``torch.func.functional_call`` swaps the module's tensors for the duration of the call: it is not
thread-safe on one module (each thread needs its own copy of the module structure).
"""

from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn
from torch.func import functional_call

from .accelerate import Accelerated, AccelerationReport, runs_own_kernels

__all__ = ["Learner"]


class Learner:
    """Functional view of ``module`` (a plain object: it registers nothing, owns no parameters)."""

    def __init__(self, module: nn.Module) -> None:
        if isinstance(module, Learner):
            module = module.module
        if not isinstance(module, nn.Module):
            raise TypeError(f"Learner wraps a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        #: whether ``module.forward`` takes a ``backward_once`` flag (it runs its own kernels)
        self.accepts_backward_once = runs_own_kernels(module)
        #: any other module runs through its accelerated program
        self._accelerated = None if self.accepts_backward_once else Accelerated(module)

    def params(self) -> dict[str, Tensor]:
        """The trainable parameters by name (those with ``requires_grad``)."""
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}

    def buffers(self) -> dict[str, Tensor]:
        return dict(self.module.named_buffers())

    @property
    def acceleration(self) -> AccelerationReport | None:
        """What runs on quickstudy's kernels for the module's current modes (``None``: it runs its own)."""
        return None if self._accelerated is None else self._accelerated.report

    def __call__(self, params: Mapping[str, Tensor], *args, backward_once: bool = False, **kwargs) -> Tensor:
        """Apply the module with ``params`` (a dict name -> tensor) in place of its own parameters."""
        if self._accelerated is not None:
            program = self._accelerated.program()[0]
            if program is not None:  # the program holds every parameter and buffer of the module, by name
                kwargs["backward_once"] = backward_once
                return functional_call(program, dict(params), args, kwargs, strict=False)
        elif backward_once:
            kwargs["backward_once"] = True
        return functional_call(self.module, dict(params), args, kwargs, strict=False)

    def __repr__(self) -> str:
        return f"Learner({type(self.module).__name__}, {len(self.params())} trainable tensors)"
