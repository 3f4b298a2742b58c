"""Learner: any ``nn.Module`` seen functionally, as (params dict, buffers dict, apply).

    learner = Learner(model)
    params = learner.params()                 # {name: Parameter} of the trainable parameters
    fast = {k: p - 0.4 * g for ...}           # any dict of tensors with (some of) those names
    out = learner(fast, x)                    # torch.func.functional_call(model, fast, (x,))

``learner(fast, x, backward_once=True)`` passes ``backward_once=True`` on to a module whose ``forward`` takes
it (``Conv4``: the graph will be backpropagated at most once, so its kernels may keep less) and is the plain
call for any other module.

Parameters missing from the dict, frozen parameters (``requires_grad=False``) and buffers are taken from
the module itself, so running batch-norm statistics update in place as usual.

``torch.func.functional_call`` swaps the module's tensors for the duration of the call: it is not
thread-safe on one module (each thread needs its own copy of the module structure).
"""

from __future__ import annotations

import inspect
from typing import Mapping

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["Learner"]


class Learner:
    """Functional view of ``module`` (a plain object: it registers nothing, owns no parameters)."""

    def __init__(self, module: nn.Module) -> None:
        if isinstance(module, Learner):
            module = module.module
        if not isinstance(module, nn.Module):
            raise TypeError(f"Learner wraps a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        #: whether ``module.forward`` takes a ``backward_once`` flag (see the module docstring)
        self.accepts_backward_once = "backward_once" in inspect.signature(type(module).forward).parameters

    def params(self) -> dict[str, Tensor]:
        """The trainable parameters by name (those with ``requires_grad``)."""
        return {name: p for name, p in self.module.named_parameters() if p.requires_grad}

    def buffers(self) -> dict[str, Tensor]:
        return dict(self.module.named_buffers())

    def __call__(self, params: Mapping[str, Tensor], *args, backward_once: bool = False, **kwargs) -> Tensor:
        """Apply the module with ``params`` (a dict name -> tensor) in place of its own parameters."""
        if backward_once and self.accepts_backward_once:
            kwargs["backward_once"] = True
        return functional_call(self.module, dict(params), args, kwargs, strict=False)

    def __repr__(self) -> str:
        return f"Learner({type(self.module).__name__}, {len(self.params())} trainable tensors)"
