"""ResNet-12, the few-shot backbone of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019).

Four residual blocks of widths ``channels`` (64, 160, 320, 640). Block: three 3x3 convs, each followed by
batch norm, with LeakyReLU(0.1) after the first two; a 1x1 conv + batch norm shortcut; sum; LeakyReLU(0.1);
2x2 max-pool. The features are averaged over space (``channels[-1]`` features, 640 by default), then a
linear head with ``ways`` outputs (none when ``ways=None``). DropBlock is not included.
Batch norm follows ``batch_norm`` (see :mod:`quickstudy.models.batchnorm`).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .._validation import check_int, check_int_sequence
from .batchnorm import check_bn_policy, make_norm

__all__ = ["ResNet12"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, batch_norm: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), make_norm(batch_norm, cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), make_norm(batch_norm, cout)
        self.conv3, self.bn3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), make_norm(batch_norm, cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), make_norm(batch_norm, cout))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.shortcut(x)))


class ResNet12(nn.Module):
    """``ResNet12(in_channels=3, ways=5, channels=(64, 160, 320, 640), batch_norm="transductive")``.

    Input ``[n, in_channels, H, W]`` with H, W >= 16; output ``[n, ways]`` or ``[n, channels[-1]]``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ways: int | None = 5,
        channels: Sequence[int] = (64, 160, 320, 640),
        batch_norm: str = "transductive",
    ) -> None:
        super().__init__()
        check_int("ResNet12", "in_channels", in_channels)
        if ways is not None:
            check_int("ResNet12", "ways", ways)
        widths = check_int_sequence("ResNet12", "channels", channels)
        if len(widths) != 4:
            raise ValueError(f"ResNet12: channels must list 4 widths, got {channels!r}")
        check_bn_policy("ResNet12", batch_norm)
        self.in_channels, self.ways, self.channels, self.batch_norm = in_channels, ways, widths, batch_norm
        blocks, cin = [], in_channels
        for cout in widths:
            blocks.append(_Block(cin, cout, batch_norm))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.feature_dim = widths[-1]
        self.head = nn.Linear(self.feature_dim, ways) if ways is not None else None
        self.out_features = ways if ways is not None else self.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] < 16 or x.shape[3] < 16:
            raise ValueError(
                f"ResNet12 expects images [batch, in_channels={self.in_channels}, H>=16, W>=16], got {tuple(x.shape)}"
            )
        x = self.features(x).mean(dim=(2, 3))
        return self.head(x) if self.head is not None else x
