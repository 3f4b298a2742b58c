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
wrong, so a model may call it only where its caller promises to backpropagate once (``backward_once=True``
in :meth:`quickstudy.models.Conv4.forward`, which the MAML family passes for the query pass, and for the
inner loop when first order) or where no graph is built (evaluation). It takes float32 or bfloat16
channels-last CPU tensors (:func:`supports`).
A bfloat16 ``x`` (the convolution outputs under CPU autocast) gives a bfloat16 output and input gradient;
the statistics, the weight's gradients and all arithmetic are float32, as in torch's bfloat16 batch norm,
and the output is the float result rounded once, which is what batch norm -> max-pool -> ReLU in bfloat16
give (rounding is monotone: it commutes with the maximum and the ReLU).

The kernel is compiled on first use (:mod:`quickstudy.native`, about 10 s); without a compiler the
composite path is used, with one warning.
"""

from __future__ import annotations

import threading
import warnings

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .functorch import is_functorch_tensor

__all__ = ["available", "bn_pool_relu", "supports"]

_LOAD_LOCK = threading.Lock()
_OPS: object | None = None
_UNAVAILABLE: str | None = None


def _ops():
    """The compiled ops, or ``None`` (with one warning) where they cannot be built."""
    global _OPS, _UNAVAILABLE
    if _OPS is not None or _UNAVAILABLE is not None:
        return _OPS
    with _LOAD_LOCK:
        if _OPS is None and _UNAVAILABLE is None:
            from .native import CompilerNotFoundError, build_library, source_path

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


def supports(x: Tensor) -> bool:
    """Whether :func:`bn_pool_relu` takes ``x``: a plain (not ``torch.func``-wrapped) float32 or bfloat16
    channels-last CPU tensor of at least 2 x 2, with the kernel built."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 4
            and x.shape[2] >= 2 and x.shape[3] >= 2 and x.is_contiguous(memory_format=torch.channels_last)
            and not is_functorch_tensor(x) and available())


def available() -> bool:
    """Whether the kernel is built (it is compiled on first call; without a compiler, one warning)."""
    return _ops() is not None
