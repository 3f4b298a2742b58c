r"""The pieces of a trust-region step (Schulman et al. 2015, "Trust Region Policy Optimization", App. C).

To maximise a surrogate ``L(theta)`` subject to ``KL(theta_old, theta) <= delta``:

1. ``g = grad L(theta_old)`` and the Fisher-vector product ``F v = grad_theta (grad_theta KL . v)`` (the KL's
   Hessian at ``theta_old``, where its gradient vanishes), plus a small damping ``c v``;
2. :func:`conjugate_gradient` solves ``F x = g`` with ``k`` matrix-vector products (no matrix is formed);
3. the largest step along ``x`` that satisfies the quadratic model of the constraint is
   ``s = sqrt(2 delta / (x^T F x)) x``;
4. :func:`backtracking_line_search` tries ``theta_old + beta^j s`` for ``j = 0, 1, ...`` and accepts the first
   point whose exact KL is within ``delta`` and whose surrogate improved; if none does, ``theta_old`` stays.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "backtracking_line_search", "flatten", "unflatten"]


def flatten(tensors: dict[str, Tensor] | list[Tensor]) -> Tensor:
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values])


def unflatten(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out, start = {}, 0
    for key, ref in like.items():
        out[key] = vector[start:start + ref.numel()].view_as(ref)
        start += ref.numel()
    return out


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       tol: float = 1e-10) -> Tensor:
    """Approximate ``A^{-1} b`` for a symmetric positive-definite ``A`` given only ``v -> A v``
    (Hestenes & Stiefel 1952); stops early when the squared residual falls below ``tol``."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if float(rr) < tol:
            break
        ap = matvec(p)
        alpha = rr / p.dot(ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def backtracking_line_search(evaluate: Callable[[Tensor], tuple[float, float]], x0: Tensor, step: Tensor,
                             surrogate0: float, max_kl: float, ratio: float = 0.8,
                             max_steps: int = 15) -> tuple[Tensor, int, float, float]:
    """Try ``x0 + ratio^j step`` (``j < max_steps``); ``evaluate(x) -> (surrogate, kl)``.

    Returns ``(x, j, surrogate, kl)`` for the first accepted point, or ``(x0, -1, surrogate0, 0.0)`` when no
    point improved the surrogate within the KL bound."""
    for j in range(max_steps):
        candidate = x0 + (ratio ** j) * step
        surrogate, kl = evaluate(candidate)
        if math.isfinite(surrogate) and math.isfinite(kl) and kl <= max_kl and surrogate > surrogate0:
            return candidate, j, surrogate, kl
    return x0, -1, surrogate0, 0.0
