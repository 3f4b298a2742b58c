r"""Discounted returns and generalized advantage estimation over a batch of fixed-horizon episodes.

Episodes are tensors ``[..., H]`` with a ``mask`` that is 1 while the episode runs and 0 after it ended
(rewards after the end must be 0). With ``V`` the baseline's values and ``V_H = 0`` (rllab's convention:
truncated episodes are not bootstrapped)::

    R_t     = sum_{l >= 0} gamma^l r_{t+l}                                  (discounted return)
    delta_t = r_t + gamma V_{t+1} m_{t+1} - V_t
    A_t     = sum_{l >= 0} (gamma lambda)^l delta_{t+l}                      (GAE, Schulman et al. 2016)

``lambda = 1`` gives ``A_t = R_t - V_t`` (the REINFORCE advantage with a baseline); ``lambda = 0`` the one-step
TD error. Both sums are one matrix product with the upper-triangular discount matrix, not a Python loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["discount_matrix", "discounted_returns", "gae", "normalize_advantages"]


def discount_matrix(horizon: int, factor: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Tensor:
    """``D [H, H]`` with ``D[j, t] = factor^(j - t)`` for ``j >= t`` and 0 otherwise, so ``x @ D`` sums the
    discounted future of ``x`` along its last axis."""
    steps = torch.arange(horizon, device=device, dtype=torch.float64)
    power = steps.view(-1, 1) - steps.view(1, -1)
    base = torch.tensor(float(factor), dtype=torch.float64, device=device)
    matrix = torch.where(power >= 0, base.pow(power.clamp(min=0)), torch.zeros((), dtype=torch.float64, device=device))
    return matrix.to(dtype)


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``R_t`` for rewards ``[..., H]`` (zeroed where ``mask`` is 0)."""
    r = rewards * mask
    return r @ discount_matrix(r.shape[-1], gamma, r.dtype, r.device)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Advantages ``A_t`` (zero where ``mask`` is 0); see the module docstring."""
    r, v = rewards * mask, values * mask
    next_v = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], dim=-1)
    delta = (r + gamma * next_v - v) * mask
    return delta @ discount_matrix(r.shape[-1], gamma * lam, r.dtype, r.device)


def normalize_advantages(adv: Tensor, mask: Tensor, dims: tuple[int, ...], eps: float = 1e-8) -> Tensor:
    """``(A - mean) / (std + eps)`` over the valid steps of ``dims`` (per task when ``dims`` excludes the task axis)."""
    count = mask.sum(dim=dims, keepdim=True).clamp(min=1)
    mean = (adv * mask).sum(dim=dims, keepdim=True) / count
    var = ((adv - mean).pow(2) * mask).sum(dim=dims, keepdim=True) / count
    return (adv - mean) / (var.sqrt() + eps) * mask
