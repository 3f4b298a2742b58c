r"""Run patterns of standard layers on quickstudy's kernels: the built-in Conv4's layer stack, and any model a user
brings (:mod:`quickstudy.models.accelerate` finds the patterns in its traced graph and calls the ops below).

A model opts in through one visible switch, its set of ``kernels`` (``Conv4(kernels=...)``; for any other
model the meta-learners use ``"auto"``), and each call says whether the graph being built will be
backpropagated only once (``backward_once``): nothing is read from global or thread-local state. Patterns,
in the order they are tried:

===============  ================================================  =================================================
kernel           pattern                                           applies
===============  ================================================  =================================================
``gemm_conv``    ``nn.Conv2d`` with ``C_in * k * k <= 32``          always (any order of derivative)
``fused_tail``   batch norm (affine, batch statistics)             no graph, or ``backward_once`` (the kernel's
                 -> 2x2 max-pool -> ReLU, or -> ReLU -> 2x2 pool    backward cannot be differentiated again)
``lean_pool``    batch norm -> 2x2 max-pool, or a lone 2x2 pool     graphs that may be differentiated twice
                                                                   (second-order inner loops)
``batch_norm``   batch norm (affine, batch statistics) alone       plain autograd: its closed-form double backward
===============  ================================================  =================================================

"Batch norm" is :class:`~quickstudy.models.TaskBatchNorm2d` or ``nn.BatchNorm2d`` wherever it normalises with
the batch's statistics (training mode, or ``track_running_stats=False``); running statistics are updated as
torch does. ReLU -> 2x2 max-pool equals 2x2 max-pool -> ReLU exactly (ReLU is monotone; ties pick the same
element), so both orders take the fused tail. ``channels_last`` keeps the activations channels-last after every
convolution (max-pool and batch norm are much faster there on CPU; a layout, not a value, changes; the
measurements behind every kernel are in docs/bench/measurements.md). Every kernel gives the values and
derivatives of the layers it replaces up to float rounding (tests compare them in float64). The fast path runs
only on plain CPU tensors: inside ``torch.func`` transforms and on other devices the layers run as they are.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice
from ..kernels.batchnorm_grad import batch_norm_pool_train, batch_norm_train
from ..kernels.functorch import is_functorch_tensor
from ..kernels.fused_tail import bn_pool_relu, supports as fused_tail_supports
from ..kernels.gemm_conv import conv2d_as_gemm, gemm_applies
from ..kernels.lean_pool import fits_choices, lean_max_pool2x2
from .batchnorm import TaskBatchNorm, TaskBatchNorm2d

__all__ = ["KERNELS", "resolve_kernels", "fast_path_applies", "gemm_conv_applies", "is_pool2x2", "norm_refusal",
           "conv_op", "norm_op", "norm_pool_op", "norm_pool_relu_op", "pool_op", "run_layers"]

#: the kernels a model can opt into (see the module docstring)
KERNELS = ("channels_last", "gemm_conv", "fused_tail", "lean_pool", "batch_norm")
#: dtypes of the batch-norm kernels (bfloat16: the convolution outputs under autocast)
_NORM_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def resolve_kernels(owner: str, spec: str | bool | Iterable[str] | None) -> frozenset[str]:
    """``"auto"``/``True``: all of :data:`KERNELS`; ``"none"``/``False``/``None``: none; or a list of names."""
    if spec is True or spec == "auto":
        return frozenset(KERNELS)
    if spec is False or spec is None or spec == "none":
        return frozenset()
    if isinstance(spec, str):
        raise ValueError(f"{owner}: kernels must be 'auto', 'none' or a list of {', '.join(KERNELS)}; got {spec!r}")
    return frozenset(check_choice(owner, "kernels", name, KERNELS) for name in spec)


def fast_path_applies(x: Tensor, kernels: frozenset[str] | bool = True) -> bool:
    return bool(kernels) and x.device.type == "cpu" and not is_functorch_tensor(x)


def _pair(value) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def is_pool2x2(layer: nn.Module) -> bool:
    """A plain 2x2 max-pool with stride 2 (the only window the kernels serve)."""
    return (type(layer) is nn.MaxPool2d and _pair(layer.kernel_size) == (2, 2)
            and _pair(layer.stride if layer.stride is not None else layer.kernel_size) == (2, 2)
            and _pair(layer.padding) == (0, 0) and _pair(layer.dilation) == (1, 1)
            and not layer.ceil_mode and not layer.return_indices)


def gemm_conv_applies(layer: nn.Module) -> bool:
    return (type(layer) is nn.Conv2d and layer.groups == 1 and layer.dilation == (1, 1)
            and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
            and layer.kernel_size[0] == layer.kernel_size[1] and layer.stride[0] == layer.stride[1]
            and layer.padding[0] == layer.padding[1] and gemm_applies(layer.in_channels, layer.kernel_size[0]))


def norm_refusal(layer: nn.Module) -> str | None:
    """Why the batch-norm kernels do not serve ``layer`` in its current mode, or ``None`` when they do."""
    if isinstance(layer, TaskBatchNorm):
        if not layer.affine:
            return "no affine weight and bias"
        if layer.primitive:
            return "primitive=True asks for the primitive-op form"
        if layer.policy == "running" and not layer.training:
            return "evaluation mode with running statistics (an affine map: torch's kernel)"
        return None
    if type(layer) is nn.BatchNorm2d:
        if not layer.affine:
            return "no affine weight and bias"
        if not layer.training and layer.track_running_stats:
            return "evaluation mode with running statistics (an affine map: torch's kernel)"
        return None
    return f"{type(layer).__name__} is not nn.BatchNorm2d or quickstudy's TaskBatchNorm"


def _norm_args(norm: nn.Module) -> tuple:
    """``(weight, bias, running_mean, running_var, momentum, eps)`` for the kernels, as ``norm``'s own forward
    would use them (an ``nn.BatchNorm2d`` in training mode counts the batch, as torch does)."""
    if isinstance(norm, TaskBatchNorm):
        running = norm.policy == "running"
        return (norm.weight, norm.bias, norm.running_mean if running else None,
                norm.running_var if running else None, norm.momentum, norm.eps)
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    tracked = norm.training and norm.track_running_stats
    return (norm.weight, norm.bias, norm.running_mean if tracked else None, norm.running_var if tracked else None,
            momentum, norm.eps)


def _norm_kernel_fits(x: Tensor, norm: nn.Module) -> bool:
    return fast_path_applies(x) and x.dtype in _NORM_DTYPES and norm_refusal(norm) is None


# ----------------------------------------------------------------------------- the ops (one pattern each)

def conv_op(x: Tensor, conv: nn.Module, gemm: bool, channels_last: bool) -> Tensor:
    """``conv(x)``: a few-input-channel convolution as one matrix product; the output channels-last."""
    if not fast_path_applies(x):
        return conv(x)
    y = conv2d_as_gemm(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0]) \
        if gemm and gemm_conv_applies(conv) else conv(x)
    return y.contiguous(memory_format=torch.channels_last) if channels_last and y.dim() == 4 else y


def norm_op(x: Tensor, norm: nn.Module) -> Tensor:
    """``norm(x)``; with a graph, batch statistics on the closed-form double backward (:func:`batch_norm_train`)."""
    if torch.is_grad_enabled() and _norm_kernel_fits(x, norm) and x.dim() >= 2:
        return batch_norm_train(x, *_norm_args(norm))
    return norm(x)


def norm_pool_op(x: Tensor, norm: nn.Module, pool: nn.Module | None = None, lean: bool = True) -> Tensor:
    """``max_pool2d(norm(x), 2)`` keeping neither the batch-norm output nor its full-size gradient (where a
    graph is built and the kernel fits), else the layers (``pool``: the 2x2 pool module, or the functional one)."""
    if lean and torch.is_grad_enabled() and x.requires_grad and _norm_kernel_fits(x, norm) and fits_choices(x):
        return batch_norm_pool_train(x, *_norm_args(norm))
    return pool_op(norm_op(x, norm), pool, lean)


def norm_pool_relu_op(x: Tensor, norm: nn.Module, pool: nn.Module | None, backward_once: bool, fused: bool,
                      lean: bool) -> Tensor:
    """``relu(max_pool2d(norm(x), 2))`` (= ``max_pool2d(relu(norm(x)), 2)``): the fused tail where no graph is
    built or it is backpropagated once, else the lean batch norm -> pool, then ReLU."""
    once_at_most = not torch.is_grad_enabled() or backward_once
    if fused and once_at_most and _norm_kernel_fits(x, norm) and fused_tail_supports(x):
        return bn_pool_relu(x, *_norm_args(norm))
    return torch.relu(norm_pool_op(x, norm, pool, lean))


def pool_op(x: Tensor, pool: nn.Module | None, lean: bool = True) -> Tensor:
    """A 2x2 max-pool keeping int16 window choices instead of its input, where a graph is built."""
    if lean and torch.is_grad_enabled() and x.requires_grad and fast_path_applies(x) and fits_choices(x):
        return lean_max_pool2x2(x)
    return pool(x) if pool is not None else nn.functional.max_pool2d(x, 2)


def lean_norm_then_pool(x: Tensor, norm: nn.Module) -> Tensor:
    """``max_pool2d(norm(x), 2)`` keeping neither the batch-norm output nor its full-size gradient."""
    return norm_pool_op(x, norm)


def _is_norm(layer: nn.Module) -> bool:
    return isinstance(layer, TaskBatchNorm2d) or type(layer) is nn.BatchNorm2d


def run_layers(layers: Sequence[nn.Module], x: Tensor, kernels: frozenset[str], backward_once: bool = False) -> Tensor:
    """``layers`` applied in order to ``x``, matched patterns on their kernels (see the module docstring).

    ``backward_once``: the caller backpropagates the graph built here at most once, without ``create_graph``."""
    if not fast_path_applies(x, kernels):
        for layer in layers:
            x = layer(x)
        return x
    fused, lean = "fused_tail" in kernels, "lean_pool" in kernels
    i = 0
    while i < len(layers):
        layer, rest = layers[i], len(layers) - i
        if isinstance(layer, nn.Conv2d):
            x, step = conv_op(x, layer, "gemm_conv" in kernels, "channels_last" in kernels), 1
        elif (fused or lean) and rest >= 3 and _is_norm(layer) and norm_refusal(layer) is None \
                and is_pool2x2(layers[i + 1]) and type(layers[i + 2]) is nn.ReLU:
            x, step = norm_pool_relu_op(x, layer, layers[i + 1], backward_once, fused, lean), 3
        elif lean and rest >= 2 and isinstance(layer, TaskBatchNorm) and is_pool2x2(layers[i + 1]):
            x, step = norm_pool_op(x, layer, layers[i + 1]), 2
        elif is_pool2x2(layer):
            x, step = pool_op(x, layer, lean), 1
        else:
            x, step = layer(x), 1
        i += step
    return x
