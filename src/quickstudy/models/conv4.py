"""Conv4: the four-block convolutional backbone of few-shot learning (Vinyals et al. 2016; Finn et al. 2017;
Snell et al. 2017).

Block = 3x3 conv (``hidden`` filters, padding 1) -> batch norm -> ReLU -> 2x2 max-pool, four times (run as
conv -> batch norm -> max-pool -> ReLU, which is identical), then
the flattened features (``hidden * (image_size // 16) ** 2``: 64 for 28x28 Omniglot, 1600 for 84x84
mini-ImageNet with ``hidden=64``, 800 with MAML's ``hidden=32``) and a linear head with ``ways`` outputs.

``stride_variant=True`` is MAML's Omniglot network (Finn et al.'s code): 3x3 convs with stride 2 and
padding 1, no max-pool, and the features averaged over the remaining spatial positions (``hidden``
features). ``ways=None`` drops the head: the network returns the features, an embedding for
Prototypical Networks or the fine-tune baseline.

Batch norm follows ``batch_norm`` (see :mod:`quickstudy.models.batchnorm`): ``"transductive"``
(default, MAML's setting), ``"running"`` or ``"none"``.

``pooled_blocks=2`` keeps the max-pool in the first two blocks only, so the features stay a spatial map
(``hidden x 7 x 7`` on 28x28 images; ``feature_shape`` gives it): the embedding of Relation Networks (Sung et al.
2018), whose relation module compares maps with convolutions.

``kernels`` is the model's one switch for speed (see :mod:`quickstudy.models.fast_path`): ``"auto"`` (all of
quickstudy's CPU kernels where their pattern matches), ``"none"`` (the plain layers) or a list of kernel
names. Values and derivatives are the plain layers' up to float rounding. ``forward(x, backward_once=True)``
tells the model that the graph built will be backpropagated at most once (the meta-learners pass it for
the query pass), so the fused batch norm -> max-pool -> ReLU may keep less for it.

:func:`conv4_sequential` builds the same architecture as a plain ``nn.Sequential`` of standard torch layers
(``nn.BatchNorm2d`` without running statistics): the network as a user writes it, and the one every
library runs in ``bench/``.
"""


from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn

from .._validation import check_bool, check_int
from .batchnorm import check_bn_policy, make_norm
from .fast_path import resolve_kernels, run_layers

__all__ = ["Conv4", "conv4_sequential"]


def _blocks(in_channels: int, hidden: int, stride_variant: bool, image_size: int, norm,
            relu_before_pool: bool, pooled_blocks: int = 4) -> tuple[list[nn.Module], int]:
    """The four conv blocks and the spatial size they leave (the first ``pooled_blocks`` end in a max-pool)."""
    layers: list[nn.Module] = []
    size, channels = image_size, in_channels
    for block in range(4):
        if stride_variant:
            layers += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1), norm(hidden), nn.ReLU()]
            size = (size - 1) // 2 + 1
        elif block >= pooled_blocks:
            layers += [nn.Conv2d(channels, hidden, 3, padding=1), norm(hidden), nn.ReLU()]
        else:
            conv = nn.Conv2d(channels, hidden, 3, padding=1)
            # max-pool before ReLU: they commute exactly (ReLU is monotone, ties pick the same element), and
            # pooling first quarters the ReLU's work; parameter names are the same in either order
            tail = [nn.ReLU(), nn.MaxPool2d(2)] if relu_before_pool else [nn.MaxPool2d(2), nn.ReLU()]
            layers += [conv, norm(hidden), *tail]
            size = size // 2
        channels = hidden
    if size < 1:
        raise ValueError(f"Conv4: image_size={image_size} is too small for four 2x down-samplings")
    return layers, size


class Conv4(nn.Module):
    """``Conv4(in_channels=1, ways=5, hidden=64, stride_variant=False, image_size=28, batch_norm="transductive",
    kernels="auto", pooled_blocks=4)``.

    Input ``[n, in_channels, image_size, image_size]``; output ``[n, ways]`` logits, or
    ``[n, feature_dim]`` features when ``ways=None``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        ways: int | None = 5,
        hidden: int = 64,
        stride_variant: bool = False,
        image_size: int = 28,
        batch_norm: str = "transductive",
        kernels: str | Iterable[str] = "auto",
        pooled_blocks: int = 4,
    ) -> None:
        super().__init__()
        check_int("Conv4", "in_channels", in_channels)
        check_int("Conv4", "pooled_blocks", pooled_blocks, minimum=0)
        if pooled_blocks > 4 or (stride_variant and pooled_blocks != 4):
            raise ValueError(f"Conv4: pooled_blocks must be in 0..4 (and 4 with stride_variant=True), "
                             f"got {pooled_blocks!r}")
        if ways is not None:
            check_int("Conv4", "ways", ways)
        check_int("Conv4", "hidden", hidden)
        check_bool("Conv4", "stride_variant", stride_variant)
        check_int("Conv4", "image_size", image_size)
        check_bn_policy("Conv4", batch_norm)
        self.in_channels, self.ways, self.hidden = in_channels, ways, hidden
        self.stride_variant, self.image_size, self.batch_norm = stride_variant, image_size, batch_norm
        #: the kernels this model runs where their pattern matches (quickstudy.models.fast_path)
        self.kernels = resolve_kernels("Conv4", kernels)
        self.pooled_blocks = pooled_blocks
        layers, size = _blocks(in_channels, hidden, stride_variant, image_size,
                               lambda width: make_norm(batch_norm, width), relu_before_pool=False,
                               pooled_blocks=pooled_blocks)
        self.features = nn.Sequential(*layers)
        #: the features before flattening: ``(hidden, size, size)``, or ``(hidden,)`` for the stride variant
        self.feature_shape = (hidden,) if stride_variant else (hidden, size, size)
        #: size of the features the head sees (and of the output when ``ways=None``)
        self.feature_dim = hidden if stride_variant else hidden * size * size
        self.head = nn.Linear(self.feature_dim, ways) if ways is not None else None
        self.out_features = ways if ways is not None else self.feature_dim

    def forward(self, x: Tensor, backward_once: bool = False) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4 expects images [batch, in_channels={self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        x = run_layers(self.features, x, self.kernels, backward_once)
        x = x.mean(dim=(2, 3)) if self.stride_variant else x.flatten(1)
        if x.shape[1] != self.feature_dim:
            raise ValueError(
                f"Conv4 built for image_size={self.image_size} ({self.feature_dim} features) got images that give "
                f"{x.shape[1]} features: pass image_size=<your image side>"
            )
        return self.head(x) if self.head is not None else x


def conv4_sequential(in_channels: int = 1, ways: int | None = 5, hidden: int = 64, stride_variant: bool = False,
                     image_size: int = 28) -> nn.Sequential:
    """Conv4 as a user writes it: ``nn.Sequential`` of ``Conv2d``, ``BatchNorm2d(track_running_stats=False)``
    (batch statistics in training and evaluation, as ``Conv4``'s transductive default), ``ReLU``, ``MaxPool2d``
    (or the stride-2 variant with a global average pool), ``Flatten`` and a ``Linear`` head (none for
    ``ways=None``)."""
    check_int("conv4_sequential", "in_channels", in_channels)
    check_int("conv4_sequential", "hidden", hidden)
    layers, size = _blocks(in_channels, hidden, stride_variant, image_size,
                           lambda width: nn.BatchNorm2d(width, track_running_stats=False), relu_before_pool=True)
    if stride_variant:
        layers.append(nn.AdaptiveAvgPool2d(1))
    layers.append(nn.Flatten())
    if ways is not None:
        features = hidden if stride_variant else hidden * size * size
        layers.append(nn.Linear(features, check_int("conv4_sequential", "ways", ways)))
    return nn.Sequential(*layers)
