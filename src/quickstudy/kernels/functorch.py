"""Whether a tensor is inside a ``torch.func`` transform (vmap, grad), where kernels step aside."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_functorch_tensor"]


def is_functorch_tensor(x: Tensor) -> bool:
    """True for a tensor wrapped by ``torch.func`` (inside vmap / grad). Custom autograd kernels have no
    batching rules, and the native batch norm's double backward is wrong under vmap: both step aside there."""
    check = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    return True if check is None else bool(check(x))
