"""Tiny float64 problems shared by the algorithm tests: Gaussian blobs, one per class, and a small MLP."""

import torch

from quickstudy.models import MLP
from quickstudy.tasks.batch import TaskBatch


def class_batch(B=2, N=3, K=2, Q=2, seed=0):
    """B tasks of N classes: class n's 2-d points are centred at (n, n)."""
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).repeat(B, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(B, 1)
    sx = torch.randn(B, N * K, 2, generator=g, dtype=torch.float64) + sy.unsqueeze(-1)
    qx = torch.randn(B, N * Q, 2, generator=g, dtype=torch.float64) + qy.unsqueeze(-1)
    return TaskBatch(sx, sy, qx, qy, ways=N)


def tiny_mlp(seed=0, hidden=(5,)):
    torch.manual_seed(seed)
    return MLP(in_features=2, out_features=3, hidden=list(hidden)).double()
