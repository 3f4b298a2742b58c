r"""Training-mode batch norm with the native kernels forward and backward and a lean double backward.

Second-order MAML differentiates the inner-loop gradient, so it runs batch norm's *double backward*.
torch 2.13 computes it with a generic composite of about twenty full-size tensor ops; on Conv4 with 5-way
5-shot support sets it was a quarter of a meta-step on CPU (docs/bench/measurements.md).
Here it is written out per channel, so that it costs a handful of full-size passes and three reductions.

Notation, per channel, over the ``M`` values of the batch and spatial dimensions: ``s = 1/sqrt(var + eps)``,
``x^ = (x - mean) s``, weight ``w``. The backward (the native kernel) maps ``gy`` to

    gb = sum gy,    gw = sum gy x^,    gx = w s (gy - gb/M - x^ gw/M).

Given the gradients ``(ux, uw, ub)`` of a loss ``L`` with respect to ``(gx, gw, gb)``, with
``Su = sum ux``, ``Sux = sum ux x^``, ``Sug = sum ux gy``, ``c1 = uw - w s Sux/M``, ``c2 = -w s gw/M``:

    dL/dgy = w s ux + c1 x^ + (ub - w s Su/M)
    dL/dw  = s (Sug - gb Su/M - gw Sux/M)
    dL/dx  = s (h - H/M - x^ Hx/M) - A s^2 x^/M,   h = c1 gy + c2 ux,
             H = sum h = c1 gb + c2 Su,  Hx = sum h x^ = c1 gw + c2 Sux,  A = w (Sug - gb Su/M - gw Sux/M)

(``dL/dx`` goes through ``x^`` and through ``s``: ``dx^_i/dx_j = s (d_ij - 1/M - x^_i x^_j / M)``,
``ds/dx_j = -s^2 x^_j / M``). Tests check it against the native double backward in float64. A third
derivative is refused with an error rather than silently wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lean_pool import gather_at_choices, input_layout, max_pool2x2_with_choices, scatter_to_choices

__all__ = ["batch_norm_pool_train", "batch_norm_train"]


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    return v.view((1, -1) + (1,) * (like.dim() - 2))


def _refuse_third_derivative(tensors: tuple[Tensor | None, ...]) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "quickstudy's batch norm gives exact first and second derivatives; a third derivative "
            "(create_graph=True through a second-order gradient) is not implemented: set primitive=True "
            "on the TaskBatchNorm layers")


def _channel_dots(u: Tensor, v: Tensor, mean: Tensor, invstd: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum u (v - mean) invstd, sum u)`` per channel, by batch norm's backward kernel: no full-size temporary."""
    _, dot, total = torch.ops.aten.native_batch_norm_backward(
        u, v, None, None, None, mean, invstd, True, 0.0, [False, True, True])
    return dot, total


def _double_backward(gy, x, weight, mean, invstd, gw, gb, ux, uw, ub) -> tuple[Tensor, Tensor, Tensor]:
    """``(dL/dgy, dL/dx, dL/dw)`` of the module docstring, given ``(ux, uw, ub)``. The terms in ``x^`` are written
    in ``x`` (``x^ = s x - s mean``), so that the two full-size results are the only full-size tensors made."""
    m = x.numel() // x.shape[1]
    ws = weight * invstd
    sux, su = _channel_dots(ux, x, mean, invstd)
    sug, _ = _channel_dots(ux, gy, torch.zeros_like(mean), torch.ones_like(invstd))
    c1 = uw - ws * sux / m
    c2 = -ws * gw / m
    # dL/dgy = w s ux + c1 x^ + (ub - w s Su/M)
    g_gy = torch.addcmul(_per_channel(ub - ws * su / m - c1 * invstd * mean, x), ux, _per_channel(ws, x))
    g_gy.addcmul_(x, _per_channel(c1 * invstd, x))
    inner = sug - gb * su / m - gw * sux / m
    g_w = invstd * inner
    big_h, big_hx = c1 * gb + c2 * su, c1 * gw + c2 * sux
    xhat_coef = -invstd * big_hx / m - weight * inner * invstd.square() / m
    # dL/dx = s c1 gy + s c2 ux + xhat_coef x^ - s H/M
    g_x = torch.addcmul(_per_channel(-invstd * big_h / m - xhat_coef * invstd * mean, x), gy,
                        _per_channel(invstd * c1, x))
    g_x.addcmul_(ux, _per_channel(invstd * c2, x)).addcmul_(x, _per_channel(xhat_coef * invstd, x))
    return g_gy, g_x, g_w


class _BatchNormBackward(torch.autograd.Function):
    """``(gy, x, w, mean, invstd) -> (gx, gw, gb)``: the native batch-norm backward, with the closed-form
    double backward of the module docstring."""

    @staticmethod
    def forward(ctx, gy, x, weight, mean, invstd, eps):
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, weight, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.save_for_backward(gy, x, weight, mean, invstd, gw, gb)
        return gx, gw, gb

    @staticmethod
    def backward(ctx, ux, uw, ub):
        _refuse_third_derivative(ctx.saved_tensors + (ux, uw, ub))
        gy, x, weight, mean, invstd, gw, gb = ctx.saved_tensors
        with torch.no_grad():
            return _double_backward(gy, x, weight, mean, invstd, gw, gb, ux, uw, ub) + (None, None, None)


class _BatchNormTrain(torch.autograd.Function):
    """Batch norm with batch statistics (native kernels); its backward is :class:`_BatchNormBackward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                           momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, mean, invstd = ctx.saved_tensors
        gx, gw, gb = _BatchNormBackward.apply(gy, x, weight, mean, invstd, ctx.eps)
        return gx, gw, gb, None, None, None, None


def batch_norm_train(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None = None,
                     running_var: Tensor | None = None, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum, eps)`` (batch
    statistics; running statistics updated when given), with the lean double backward. Plain tensors only
    (not inside ``torch.func`` transforms), affine."""
    return _BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)


class _BatchNormPoolBackward(torch.autograd.Function):
    """``(g, x, w, mean, invstd) -> (gx, gw, gb)`` for batch norm followed by a 2x2 max-pool: ``gy = S g``, then
    the batch-norm backward. It keeps the pool-sized ``g`` and the window choices instead of ``gy``, and its
    double backward recomputes ``gy`` and returns ``dL/dg = S^T dL/dgy``."""

    @staticmethod
    def forward(ctx, g, x, weight, mean, invstd, choices, eps):
        layout = input_layout(x)
        gy = scatter_to_choices(g, choices, x.shape, layout)
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            gy, x, weight, None, None, mean, invstd, True, eps, [True, True, True])
        ctx.save_for_backward(g, x, weight, mean, invstd, gw, gb, choices)
        ctx.layout = layout
        return gx, gw, gb

    @staticmethod
    def backward(ctx, ux, uw, ub):
        _refuse_third_derivative(ctx.saved_tensors + (ux, uw, ub))
        g, x, weight, mean, invstd, gw, gb, choices = ctx.saved_tensors
        with torch.no_grad():
            gy = scatter_to_choices(g, choices, x.shape, ctx.layout)
            g_gy, g_x, g_w = _double_backward(gy, x, weight, mean, invstd, gw, gb, ux, uw, ub)
            return gather_at_choices(g_gy, choices, ctx.layout), g_x, g_w, None, None, None, None


class _BatchNormPoolTrain(torch.autograd.Function):
    """Batch norm with batch statistics, then a 2x2 max-pool (native kernels). It keeps ``x``, the statistics
    and int16 window choices; not the batch-norm output, nor int64 indices."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, mean, invstd = torch.ops.aten.native_batch_norm(x, weight, bias, running_mean, running_var, True,
                                                           momentum, eps)
        out, choices = max_pool2x2_with_choices(y)
        ctx.save_for_backward(x, weight, mean, invstd, choices)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, invstd, choices = ctx.saved_tensors
        gx, gw, gb = _BatchNormPoolBackward.apply(g, x, weight, mean, invstd, choices, ctx.eps)
        return gx, gw, gb, None, None, None, None


def batch_norm_pool_train(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None = None,
                          running_var: Tensor | None = None, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """``F.max_pool2d(batch_norm_train(x, ...), 2)`` for a 4-D CPU ``x`` whose ``H x W`` plane is at least 2 x 2
    and has at most 32767 positions: the same values and first and second derivatives, for less memory.

    Under second-order MAML the pool would keep the batch-norm output (its input) and int64 indices, and the
    batch-norm backward the full-size ``gy``, three quarters of whose entries are the pool's zeros. This
    keeps int16 window choices and the pool-sized gradient instead (``gy = S g``; ``dL/dg = S^T dL/dgy``,
    :mod:`quickstudy.models.lean_pool`): with the lone lean pool elsewhere, one Conv4 task's ``meta_loss`` graph
    at 5 shots and 5 inner steps keeps 93 MiB instead of 186."""
    return _BatchNormPoolTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)
