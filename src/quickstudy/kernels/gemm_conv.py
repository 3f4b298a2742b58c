"""A convolution with few input channels as one matrix product, giving a channels-last output on CPU.

For the first layer of an image backbone (1 channel for Omniglot, 3 for RGB) a ``k x k`` convolution is
a product with a tiny inner dimension ``K = C_in * k * k`` (9 or 27): ``out[m, :] = cols[m, :] @ W^T + b``
over the ``M = N * H_out * W_out`` output positions, where row ``m`` of ``cols`` holds the input patch
under position ``m`` (im2col). oneDNN's kernels for such layers are slow on CPU, and their output comes
back in NCHW, so a channels-last backbone pays a transposing copy forward and another one backward
(the measurement is in docs/bench/measurements.md).

The product is written with ``W^T`` materialised row-major on purpose: autograd's gradient of a
column-major right operand is ``(g^T @ cols)^T``, a [64 x 58800] by [58800 x 9] product that runs several times
slower here than the ``cols^T @ g`` it computes for a row-major one.

Every step is a differentiable torch op, so gradients of any order (MAML's second order) come from
autograd; the result equals ``F.conv2d`` up to float rounding (tested to 1e-12 in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GEMM_MAX_INNER", "conv2d_as_gemm", "gemm_applies"]

#: largest ``C_in * k * k`` for which the first layer runs as a matrix product (3-channel 3x3 = 27)
GEMM_MAX_INNER = 32


def gemm_applies(in_channels: int, kernel_size: int) -> bool:
    """Whether a square ``kernel_size`` convolution over ``in_channels`` channels is worth a matrix product."""
    return in_channels * kernel_size ** 2 <= GEMM_MAX_INNER


def conv2d_as_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` as im2col + one matrix product; the result is a
    channels-last ``[N, C_out, H_out, W_out]`` tensor."""
    n, c_in, _, _ = x.shape
    c_out, _, k, _ = weight.shape
    padded = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # [N, H + 2p, W + 2p, C_in]
    patches = padded.unfold(1, k, stride).unfold(2, k, stride)  # [N, H_out, W_out, C_in, k, k]: a view
    h_out, w_out = patches.shape[1], patches.shape[2]
    cols = patches.reshape(n * h_out * w_out, c_in * k * k)  # (c, kh, kw) order, as weight.reshape
    weight_t = weight.reshape(c_out, c_in * k * k).t().contiguous()  # row-major: see the module docstring
    out = cols @ weight_t if bias is None else torch.addmm(bias, cols, weight_t)
    return out.view(n, h_out, w_out, c_out).permute(0, 3, 1, 2)
