r"""A fused batch norm -> 2x2 max-pool -> ReLU (the tail of a Conv4 block) for graphs differentiated once.

In a MAML meta-step the query pass is backpropagated once (no ``create_graph``), yet autograd keeps
what a second derivative could need: per block, the batch-norm output (the pool's input) and the
pool's int64 indices besides the block's input. On Conv4 with 75 query images that is 28 MiB per task
(half the query graph), and with tasks on two threads two such graphs are alive at once.

:func:`bn_pool_relu` (``csrc/bn_pool_relu.cpp``) computes, per channel over the batch and spatial
dimensions, with batch statistics ``mean``, biased ``var``, ``s = 1/sqrt(var + eps)``:

    y = (x - mean) s w + b,    out = relu(maxpool_2x2(y))

without storing ``y``, and keeps only ``x``, ``out`` and the statistics. Its backward recomputes each
window's maximum and applies batch norm's gradient through the batch statistics,

    gy = dL/dout at the window's first maximum where out > 0 (else 0),
    gb = sum gy,   gw = sum gy (x - mean) s,   gx = w s (gy - gb/M - (x - mean) s gw/M),

in two passes over ``x``, which is also faster than the three native kernels (forward and backward).
The backward is ``once_differentiable``: differentiating it again raises an error instead of being
wrong. Conv4 uses it inside :func:`backward_once` (the MAML family sets it around the query pass, and
around the inner loop when first order) and without autograd (evaluation), on float32 or bfloat16
channels-last CPU tensors; elsewhere (second-order inner loops, ``torch.func``, CUDA) the composite path.
A bfloat16 ``x`` (the convolution outputs under CPU autocast) gives a bfloat16 output and input gradient;
the statistics, the weight's gradients and all arithmetic are float32, as in torch's bfloat16 batch norm,
and the output is the float result rounded once, which is what batch norm -> max-pool -> ReLU in bfloat16
give (rounding is monotone: it commutes with the maximum and the ReLU).

The kernel is compiled on first use (:mod:`quickstudy.native`, about 10 s); without a compiler the
composite path is used, with one warning.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["FUSED_BLOCKS_ON_CPU", "backward_once", "bn_pool_relu", "fused_tail_applies"]

#: set to False to run Conv4's batch norm, max-pool and ReLU as three separate (native) ops everywhere
FUSED_BLOCKS_ON_CPU = True

_STATE = threading.local()
_LOAD_LOCK = threading.Lock()
_OPS: object | None = None
_UNAVAILABLE: str | None = None


@contextlib.contextmanager
def backward_once() -> Iterator[None]:
    """Within this context (this thread), the autograd graph being built will be backpropagated at most
    once and without ``create_graph``: modules may keep less for it. A second derivative through such a
    graph raises an error."""
    previous = getattr(_STATE, "active", False)
    _STATE.active = True
    try:
        yield
    finally:
        _STATE.active = previous


def backward_once_active() -> bool:
    return getattr(_STATE, "active", False)


def _ops():
    """The compiled ops, or ``None`` (with one warning) where they cannot be built."""
    global _OPS, _UNAVAILABLE
    if _OPS is not None or _UNAVAILABLE is not None:
        return _OPS
    with _LOAD_LOCK:
        if _OPS is None and _UNAVAILABLE is None:
            from ..native import CompilerNotFoundError, build_library, source_path

            try:
                path = build_library(source_path("bn_pool_relu.cpp"), libraries=["torch_cpu", "c10"],
                                     flags=["-O3", "-march=native", "-fno-trapping-math", "-std=c++17", "-w"])
                torch.ops.load_library(str(path))
                _OPS = torch.ops.quickstudy_fused
            except (CompilerNotFoundError, RuntimeError, OSError) as error:
                _UNAVAILABLE = str(error)
                warnings.warn(f"quickstudy: fused Conv4 blocks unavailable, using the native ops: {error}",
                              RuntimeWarning, stacklevel=3)
    return _OPS


class _BnPoolRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        out, mean, var, invstd = _OPS.bn_pool_relu_forward(x, weight, bias, eps)
        if running_mean is not None:
            count = x.numel() // x.shape[1]
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (count / max(count - 1, 1)), alpha=momentum)
        ctx.save_for_backward(x, out, weight, bias, mean, invstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, out, weight, bias, mean, invstd = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x, grad_weight, grad_bias = _OPS.bn_pool_relu_backward(grad_out, x, out, weight, bias, mean, invstd)
        return grad_x, grad_weight, grad_bias, None, None, None, None


def bn_pool_relu(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None = None,
                 running_var: Tensor | None = None, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``relu(max_pool2d(F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum,
    eps), 2))`` for a float32 or bfloat16 channels-last CPU ``x``, keeping only ``x`` and the output for the backward
    (once differentiable). Raises ``RuntimeError`` where the kernel cannot be built."""
    if _ops() is None:
        raise RuntimeError(f"the fused batch norm/max-pool/ReLU kernel is unavailable: {_UNAVAILABLE}")
    if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"bn_pool_relu expects [batch, channels, H >= 2, W >= 2], got {tuple(x.shape)}")
    x = x.contiguous(memory_format=torch.channels_last)
    return _BnPoolRelu.apply(x, weight.contiguous(), bias.contiguous(), running_mean, running_var, momentum, eps)


def _is_2x2_pool(pool: nn.Module) -> bool:
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return (type(pool) is nn.MaxPool2d and pair(pool.kernel_size) == (2, 2)
            and pair(pool.stride if pool.stride is not None else pool.kernel_size) == (2, 2)
            and pair(pool.padding) == (0, 0) and pair(pool.dilation) == (1, 1)
            and not pool.ceil_mode and not pool.return_indices)


def fused_tail_applies(x: Tensor, norm: nn.Module, pool: nn.Module, relu: nn.Module) -> bool:
    """Whether ``relu(pool(norm(x)))`` may run as :func:`bn_pool_relu` here: batch statistics, an affine
    ``TaskBatchNorm2d``, a 2x2 max-pool, a float32 or bfloat16 channels-last CPU ``x`` of at least 2x2, and either no
    autograd or a graph inside :func:`backward_once`."""
    from .batchnorm import TaskBatchNorm2d, _under_functorch

    if not (FUSED_BLOCKS_ON_CPU and type(relu) is nn.ReLU and isinstance(norm, TaskBatchNorm2d) and norm.affine
            and not norm.primitive and (norm.policy == "transductive" or norm.training) and _is_2x2_pool(pool)):
        return False
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 4 and x.shape[2] >= 2
            and x.shape[3] >= 2 and x.is_contiguous(memory_format=torch.channels_last)):
        return False
    if torch.is_grad_enabled() and not backward_once_active():
        return False
    return not _under_functorch(x) and _ops() is not None
