r"""Linear feature baseline (Duan et al. 2016, "Benchmarking Deep RL for Continuous Control", rllab).

A per-task ridge regression of the discounted return on hand-made features of the state and the time::

    phi(s, t) = [s, s^2, t/100, (t/100)^2, (t/100)^3, 1]     (s clipped to [-10, 10])
    w = argmin_w sum_{valid t} (phi_t . w - R_t)^2 + c ||w||^2,   V(s, t) = phi(s, t) . w

It is refitted on every batch of episodes of a task before the advantages are computed. All the tasks
of a meta-batch are solved at once (batched ``torch.linalg.solve`` in float64); ``c`` starts at 1e-5 and
grows x10 while the solution is not finite.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["baseline_features", "fit_linear_baseline"]


def baseline_features(obs: Tensor) -> Tensor:
    """``obs [..., H, d] -> features [..., H, 2d + 4]``."""
    o = obs.clamp(-10, 10)
    horizon = obs.shape[-2]
    t = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0).view(-1, 1).expand(*obs.shape[:-1], 1)
    return torch.cat([o, o * o, t, t * t, t * t * t, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(obs: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """Values ``V [B, E, H]`` of the per-task least-squares fit to ``returns [B, E, H]`` from ``obs [B, E, H, d]``
    (the E episodes of task b share one weight vector)."""
    feats = baseline_features(obs.to(torch.float64))  # [B, E, H, F]
    b = feats.shape[0]
    x = feats.reshape(b, -1, feats.shape[-1])
    m = mask.to(torch.float64).reshape(b, -1, 1)
    y = returns.to(torch.float64).reshape(b, -1, 1)
    xtx = (x * m).transpose(1, 2) @ x
    xty = (x * m).transpose(1, 2) @ y
    eye = torch.eye(x.shape[-1], dtype=torch.float64, device=x.device)
    coeffs = None
    for _ in range(6):
        try:
            coeffs = torch.linalg.solve(xtx + reg * eye, xty)
        except RuntimeError:  # singular even with the ridge term
            coeffs = None
        if coeffs is not None and bool(torch.isfinite(coeffs).all()):
            break
        reg *= 10
    if coeffs is None or not bool(torch.isfinite(coeffs).all()):
        coeffs = torch.zeros_like(xty)
    values = (x @ coeffs).reshape(returns.shape)
    return values.to(returns.dtype) * mask
