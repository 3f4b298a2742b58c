r"""A 2x2 max-pool that keeps only its window choices for the backward, differentiable any number of times.

torch's ``max_pool2d`` saves its whole input (only its shape is needed) and int64 indices for the backward.
In a second-order MAML inner loop Conv4's pool input is the batch-norm output, which nothing else keeps:
on 5-shot tasks with 5 inner steps that is 32 MiB of float32 inputs and 16 MiB of int64 indices per task
graph, a quarter of what the graph keeps, and the threads strategy has two graphs alive.

With ``i(p)`` the input position of the first maximum of output position ``p``'s window, the pool and its
derivatives are the linear maps

    out[p] = x[i(p)],    scatter:  dL/dx = S g,  (S g)[i(p)] = g[p] (0 elsewhere),    gather:  S^T h = h[i(.)]

so the backward is ``S`` and the backward of ``S`` is ``S^T`` (and of ``S^T``, ``S``): all of them need
only ``i``, which is kept as int16 positions in the ``H x W`` plane (8 bytes -> 2). Values, the window chosen
on ties (the first, row-major) and all derivatives are torch's: the forward and ``S`` are torch's own
kernels (``max_pool2d_with_indices`` and its backward).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fits_choices", "gather_at_choices", "input_layout", "lean_max_pool2x2", "max_pool2x2_with_choices",
           "scatter_to_choices"]

_INT16_MAX = 32767


def fits_choices(x: Tensor) -> bool:
    """Whether ``x`` is a 4-D CPU tensor whose ``H x W`` plane (at least 2 x 2) int16 positions can index."""
    return x.device.type == "cpu" and x.dim() == 4 and x.shape[2] >= 2 and x.shape[3] >= 2 \
        and x.shape[2] * x.shape[3] <= _INT16_MAX


def lean_max_pool2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` for a 4-D CPU ``x`` whose graph keeps int16 window choices instead of ``x``."""
    return _MaxPool.apply(x)


def max_pool2x2_with_choices(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(F.max_pool2d(x, 2), int16 position in the H x W plane of each window's first maximum)``, no autograd."""
    out, indices = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
    return out, indices.to(torch.int16)


def scatter_to_choices(grad_out: Tensor, choices: Tensor, input_shape: torch.Size,
                       layout: torch.memory_format) -> Tensor:
    """``S g``: the max-pool's input gradient, each of ``grad_out``'s values at its window's chosen position."""
    # torch's kernel reads only the shape and layout of its `self` argument: an uninitialised one will do
    like = torch.empty(input_shape, dtype=grad_out.dtype, memory_format=layout)
    return torch.ops.aten.max_pool2d_with_indices_backward(grad_out, like, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                           choices.long())


def gather_at_choices(h: Tensor, choices: Tensor, layout: torch.memory_format) -> Tensor:
    """``S^T h``: the value of ``h`` (input-shaped) at each window's chosen position (output-shaped)."""
    picked = h.flatten(2).gather(2, choices.long().flatten(2)).view(choices.shape)
    return picked.contiguous(memory_format=layout)


def input_layout(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a channels-last ``x`` (that is not also contiguous), else contiguous."""
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
        else torch.contiguous_format


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        out, choices = max_pool2x2_with_choices(x)
        ctx.save_for_backward(choices)
        ctx.input_shape, ctx.input_layout = x.shape, input_layout(x)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:
        (choices,) = ctx.saved_tensors
        return _ChoiceMap.apply(grad_out, choices, ctx.input_shape, ctx.input_layout, False)


class _ChoiceMap(torch.autograd.Function):
    """``S g`` (each output gradient sent to its window's chosen input position) or, ``transpose``, ``S^T h``
    (the value of ``h`` at each window's chosen position). Linear: the derivative of one is the other."""

    @staticmethod
    def forward(ctx, v: Tensor, choices: Tensor, input_shape: torch.Size, layout: torch.memory_format,
                transpose: bool) -> Tensor:
        ctx.save_for_backward(choices)
        ctx.input_shape, ctx.input_layout, ctx.transpose = input_shape, layout, transpose
        if transpose:
            return gather_at_choices(v, choices, layout)
        return scatter_to_choices(v, choices, input_shape, layout)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (choices,) = ctx.saved_tensors
        return (_ChoiceMap.apply(grad, choices, ctx.input_shape, ctx.input_layout, not ctx.transpose),
                None, None, None, None)
