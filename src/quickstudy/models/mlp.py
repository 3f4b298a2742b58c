"""MLP: fully connected network with ReLUs; ``MLP()`` is MAML's sinusoid regressor 1-40-40-1
(Finn et al. 2017, section 5.1)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .._validation import check_int, check_int_sequence

__all__ = ["MLP"]


class MLP(nn.Module):
    """``MLP(in_features=1, out_features=1, hidden=(40, 40))``: Linear-ReLU per hidden layer, then a linear head.

    ``out_features=None`` drops the head (the output is the last hidden layer, an embedding).
    Input ``[n, in_features]``, output ``[n, out_features]``.
    """

    def __init__(self, in_features: int = 1, out_features: int | None = 1, hidden: Sequence[int] = (40, 40)) -> None:
        super().__init__()
        check_int("MLP", "in_features", in_features)
        if out_features is not None:
            check_int("MLP", "out_features", out_features)
        sizes = check_int_sequence("MLP", "hidden", hidden)
        self.in_features, self.hidden = in_features, sizes
        layers: list[nn.Module] = []
        width = in_features
        for size in sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.features = nn.Sequential(*layers)
        self.feature_dim = width
        self.head = nn.Linear(width, out_features) if out_features is not None else None
        self.ways = out_features  # the head's width, named as in the other backbones
        self.out_features = out_features if out_features is not None else width

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"MLP expects [batch, in_features={self.in_features}], got {tuple(x.shape)}")
        x = self.features(x)
        return self.head(x) if self.head is not None else x
