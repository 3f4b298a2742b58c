"""The differentiable inner loop of the MAML family (MAML, FOMAML, Meta-SGD, ANIL), as pure functions.

One inner SGD step on a task's support set (x, y), with per-tensor step sizes ``alpha`` (a float, or a
dict of tensors for Meta-SGD)::

    phi_{j+1} = phi_j - alpha * grad_phi L(f(x; phi_j), y),        phi_0 = theta

``create_graph=True`` keeps the graph of the gradient (second order: the meta-gradient differentiates
through it); ``create_graph=False`` treats the inner gradient as a constant (first order: it is computed
on a detached copy, so no graph of the inner backward is ever built).

``use_func`` selects the autodiff API: ``torch.autograd.grad`` over the whole list of tensors at once and
``torch._foreach`` updates (the per-task loop), or ``torch.func.grad`` and list updates (inside
``torch.func.vmap``, where neither ``autograd.grad`` nor the foreach kernels have batching rules).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping

import torch
from torch import Tensor

from ..precision import uncached_autocast
from .losses import LossFn

__all__ = ["inner_gradients", "sgd_step", "sgd_inner_loop"]

Params = dict[str, Tensor]


def inner_gradients(
    loss_of: Callable[[Params], Tensor], params: Params, *, create_graph: bool, use_func: bool
) -> tuple[Params, Tensor]:
    """``(d loss_of(params) / d params, loss value)``; see the module docstring for the flags."""
    if use_func:
        if not create_graph:
            params = {k: v.detach() for k, v in params.items()}
        grads, loss = torch.func.grad_and_value(loss_of)(params)  # detached params: constant gradients
        return grads, loss.detach()
    if create_graph and not all(v.requires_grad for v in params.values()):
        create_graph = False  # nothing to differentiate through (e.g. meta_loss called under no_grad)
    with torch.enable_grad(), (contextlib.nullcontext() if create_graph else uncached_autocast()):
        leaves = params if create_graph else {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = loss_of(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph, materialize_grads=True)
    return dict(zip(leaves.keys(), grads)), loss.detach()


def sgd_step(params: Params, grads: Params, lr: float | Mapping[str, Tensor], *, use_func: bool) -> Params:
    """``params - lr * grads``, tensor by tensor (``lr`` a float or a dict of tensors shaped like ``params``)."""
    keys = list(params)
    ps, gs = [params[k] for k in keys], [grads[k] for k in keys]
    if isinstance(lr, Mapping):
        rates = [lr[k] for k in keys]
        if use_func:
            new = [p - a * g for p, a, g in zip(ps, rates, gs)]
        else:
            new = torch._foreach_sub(ps, torch._foreach_mul(gs, rates))
    elif use_func:
        new = [p - lr * g for p, g in zip(ps, gs)]
    else:
        new = torch._foreach_add(ps, gs, alpha=-lr)
    return dict(zip(keys, new))


def sgd_inner_loop(
    forward: Callable[[Params, Tensor], Tensor],
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    steps: int,
    lr: float | Mapping[str, Tensor],
    *,
    create_graph: bool,
    use_func: bool,
) -> tuple[Params, list[Tensor]]:
    """``steps`` SGD steps of ``loss_fn(forward(params, x), y)``; returns the fast weights and the support loss
    before each step (detached)."""
    fast = dict(params)
    losses = []
    for _ in range(steps):
        grads, loss = inner_gradients(lambda p: loss_fn(forward(p, x), y), fast, create_graph=create_graph,
                                      use_func=use_func)
        fast = sgd_step(fast, grads, lr, use_func=use_func)
        losses.append(loss)
    return fast, losses
