r"""Run a stack of standard layers with quickstudy's kernels where a pattern of them matches.

A model opts in through one visible switch, its set of ``kernels`` (``Conv4(kernels=...)``), and tells
:func:`run_layers` at each call whether the graph being built will be backpropagated only once
(``backward_once``): nothing is read from global or thread-local state. Patterns, in the order they are tried:

===============  ================================================  =================================================
kernel           pattern                                           applies
===============  ================================================  =================================================
``gemm_conv``    ``nn.Conv2d`` with ``C_in * k * k <= 32``          always (any order of derivative)
``fused_tail``   ``TaskBatchNorm2d`` (affine, batch statistics)    no graph, or ``backward_once`` (the kernel's
                 -> 2x2 ``nn.MaxPool2d`` -> ``nn.ReLU``             backward cannot be differentiated again)
``lean_pool``    ``TaskBatchNorm`` -> 2x2 ``nn.MaxPool2d``,         graphs that may be differentiated twice
                 or a lone 2x2 ``nn.MaxPool2d``                     (second-order inner loops)
===============  ================================================  =================================================

``channels_last`` keeps the activations channels-last (max-pool and batch norm are much faster there on CPU;
the measurements behind every kernel are in docs/bench/measurements.md). Every kernel gives the values and derivatives of the layers it replaces up to float
rounding (tests compare them in float64). The fast path runs only on plain CPU tensors: inside ``torch.func``
transforms and on other devices the layers run as they are.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice
from ..kernels.fused_tail import bn_pool_relu, supports as fused_tail_supports
from ..kernels.batchnorm_grad import batch_norm_pool_train
from ..kernels.functorch import is_functorch_tensor
from ..kernels.gemm_conv import conv2d_as_gemm, gemm_applies
from ..kernels.lean_pool import fits_choices, lean_max_pool2x2
from .batchnorm import TaskBatchNorm, TaskBatchNorm2d

__all__ = ["KERNELS", "resolve_kernels", "fast_path_applies", "gemm_conv_applies", "run_layers"]

#: the kernels a model can opt into (see the module docstring)
KERNELS = ("channels_last", "gemm_conv", "fused_tail", "lean_pool")


def resolve_kernels(owner: str, spec: str | bool | Iterable[str] | None) -> frozenset[str]:
    """``"auto"``/``True``: all of :data:`KERNELS`; ``"none"``/``False``/``None``: none; or a list of names."""
    if spec is True or spec == "auto":
        return frozenset(KERNELS)
    if spec is False or spec is None or spec == "none":
        return frozenset()
    if isinstance(spec, str):
        raise ValueError(f"{owner}: kernels must be 'auto', 'none' or a list of {', '.join(KERNELS)}; got {spec!r}")
    return frozenset(check_choice(owner, "kernels", name, KERNELS) for name in spec)


def fast_path_applies(x: Tensor, kernels: frozenset[str]) -> bool:
    return bool(kernels) and x.device.type == "cpu" and not is_functorch_tensor(x)


def _pair(value) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _is_pool2x2(layer: nn.Module) -> bool:
    return (type(layer) is nn.MaxPool2d and _pair(layer.kernel_size) == (2, 2)
            and _pair(layer.stride if layer.stride is not None else layer.kernel_size) == (2, 2)
            and _pair(layer.padding) == (0, 0) and _pair(layer.dilation) == (1, 1)
            and not layer.ceil_mode and not layer.return_indices)


def gemm_conv_applies(layer: nn.Module) -> bool:
    return (type(layer) is nn.Conv2d and layer.groups == 1 and layer.dilation == (1, 1)
            and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
            and layer.kernel_size[0] == layer.kernel_size[1] and layer.stride[0] == layer.stride[1]
            and layer.padding[0] == layer.padding[1] and gemm_applies(layer.in_channels, layer.kernel_size[0]))


def _batch_stats_norm(layer: nn.Module) -> bool:
    return (isinstance(layer, TaskBatchNorm2d) and layer.affine and not layer.primitive
            and (layer.policy == "transductive" or layer.training))


def _fused_tail(x: Tensor, norm: TaskBatchNorm2d) -> Tensor:
    running = norm.policy == "running"
    return bn_pool_relu(x, norm.weight, norm.bias, norm.running_mean if running else None,
                              norm.running_var if running else None, norm.momentum, norm.eps)


def lean_norm_then_pool(x: Tensor, norm: TaskBatchNorm) -> Tensor:
    """``max_pool2d(norm(x), 2)`` keeping neither the batch-norm output nor its full-size gradient."""
    if norm.lean_train_applies(x) and fits_choices(x):
        running = norm.policy == "running"
        return batch_norm_pool_train(x, norm.weight, norm.bias, norm.running_mean if running else None,
                                     norm.running_var if running else None, norm.momentum, norm.eps)
    y = norm(x)
    return lean_max_pool2x2(y) if fits_choices(y) else nn.functional.max_pool2d(y, 2)


def run_layers(layers: Sequence[nn.Module], x: Tensor, kernels: frozenset[str], backward_once: bool = False) -> Tensor:
    """``layers`` applied in order to ``x``, matched patterns on their kernels (see the module docstring).

    ``backward_once``: the caller backpropagates the graph built here at most once, without ``create_graph``."""
    if not fast_path_applies(x, kernels):
        for layer in layers:
            x = layer(x)
        return x
    grad_on = torch.is_grad_enabled()
    once_at_most = not grad_on or backward_once  # no graph, or one backpropagated once: the fused tail may run
    channels_last = "channels_last" in kernels
    i = 0
    while i < len(layers):
        layer, rest = layers[i], len(layers) - i
        if "gemm_conv" in kernels and gemm_conv_applies(layer):
            x, step = conv2d_as_gemm(x, layer.weight, layer.bias, layer.stride[0], layer.padding[0]), 1
        elif ("fused_tail" in kernels and once_at_most and rest >= 3 and _batch_stats_norm(layer)
              and _is_pool2x2(layers[i + 1]) and type(layers[i + 2]) is nn.ReLU and fused_tail_supports(x)):
            x, step = _fused_tail(x, layer), 3
        elif "lean_pool" in kernels and grad_on and x.requires_grad and rest >= 2 and isinstance(layer, TaskBatchNorm) \
                and _is_pool2x2(layers[i + 1]) and fits_choices(x):
            x, step = lean_norm_then_pool(x, layer), 2
        elif "lean_pool" in kernels and grad_on and x.requires_grad and _is_pool2x2(layer) and fits_choices(x):
            x, step = lean_max_pool2x2(x), 1
        else:
            x, step = layer(x), 1
        if channels_last and isinstance(layer, nn.Conv2d):
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op for the GEMM conv's output
        i += step
    return x
