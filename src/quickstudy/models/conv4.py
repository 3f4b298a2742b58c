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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_int
from .batchnorm import TaskBatchNorm, _under_functorch, check_bn_policy, make_norm
from .fused_block import bn_pool_relu, fused_tail_applies
from .gemm_conv import conv2d_as_gemm, gemm_conv_applies
from .lean_pool import lean_max_pool2x2, lean_pool_applies

__all__ = ["Conv4"]


#: set to False to keep Conv4's activations in the default (NCHW) layout on CPU
CHANNELS_LAST_ON_CPU = True


def _use_channels_last(x: Tensor) -> bool:
    # plain CPU tensors only: inside torch.func transforms (vmap over tasks) the layout is left alone
    return CHANNELS_LAST_ON_CPU and x.device.type == "cpu" and not _under_functorch(x)


def fused_tail(x: Tensor, norm: nn.Module) -> Tensor:
    running = norm.policy == "running"
    return bn_pool_relu(x, norm.weight, norm.bias, norm.running_mean if running else None,
                        norm.running_var if running else None, norm.momentum, norm.eps)


class Conv4(nn.Module):
    """``Conv4(in_channels=1, ways=5, hidden=64, stride_variant=False, image_size=28, batch_norm="transductive")``.

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
    ) -> None:
        super().__init__()
        check_int("Conv4", "in_channels", in_channels)
        if ways is not None:
            check_int("Conv4", "ways", ways)
        check_int("Conv4", "hidden", hidden)
        check_bool("Conv4", "stride_variant", stride_variant)
        check_int("Conv4", "image_size", image_size)
        check_bn_policy("Conv4", batch_norm)
        self.in_channels, self.ways, self.hidden = in_channels, ways, hidden
        self.stride_variant, self.image_size, self.batch_norm = stride_variant, image_size, batch_norm

        layers: list[nn.Module] = []
        size, channels = image_size, in_channels
        for _ in range(4):
            if stride_variant:
                layers += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1), make_norm(batch_norm, hidden), nn.ReLU()]
                size = (size - 1) // 2 + 1
            else:
                # max-pool before ReLU: they commute exactly (ReLU is monotone, ties pick the same element),
                # and pooling first quarters the ReLU's work; parameter names are unchanged
                layers += [nn.Conv2d(channels, hidden, 3, padding=1), make_norm(batch_norm, hidden), nn.MaxPool2d(2),
                           nn.ReLU()]
                size = size // 2
            channels = hidden
        if size < 1:
            raise ValueError(f"Conv4: image_size={image_size} is too small for four 2x down-samplings")
        self.features = nn.Sequential(*layers)
        #: size of the features the head sees (and of the output when ``ways=None``)
        self.feature_dim = hidden if stride_variant else hidden * size * size
        self.head = nn.Linear(self.feature_dim, ways) if ways is not None else None
        self.out_features = ways if ways is not None else self.feature_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4 expects images [batch, in_channels={self.in_channels}, H, W], got {tuple(x.shape)}"
            )
        if _use_channels_last(x):
            # channels_last on CPU: max-pool ~12x and batch norm ~4x faster than in NCHW (torch 2.13, 2 cores).
            # A conv with 1-3 input channels (the first) runs as one matrix product, which is faster than
            # oneDNN's kernel and returns channels_last directly (models/gemm_conv.py); any other conv output
            # is converted (a no-op when it already is channels_last). Same values up to float rounding.
            # Batch norm -> max-pool -> ReLU runs fused where the graph is differentiated at most once
            # (models/fused_block.py): it keeps a third of the memory and is faster. Elsewhere (second-order
            # inner loops) batch norm -> max-pool keeps neither the batch-norm output nor its full-size gradient
            # (TaskBatchNorm.forward_then_max_pool2x2), a lone max-pool only its window choices (lean_pool.py).
            layers = list(self.features)
            i = 0
            while i < len(layers):
                layer = layers[i]
                if gemm_conv_applies(layer):
                    x = conv2d_as_gemm(x, layer.weight, layer.bias, layer.stride[0], layer.padding[0])
                elif i + 3 <= len(layers) and fused_tail_applies(x, *layers[i:i + 3]):
                    x = fused_tail(x, layers[i])
                    i += 3
                    continue
                elif (x.requires_grad and torch.is_grad_enabled() and i + 2 <= len(layers)
                      and isinstance(layer, TaskBatchNorm) and lean_pool_applies(x, layers[i + 1])):
                    x = layer.forward_then_max_pool2x2(x)
                    i += 2
                    continue
                elif x.requires_grad and torch.is_grad_enabled() and lean_pool_applies(x, layer):
                    x = lean_max_pool2x2(x)
                else:
                    x = layer(x)
                if isinstance(layer, nn.Conv2d):
                    x = x.contiguous(memory_format=torch.channels_last)
                i += 1
        else:
            x = self.features(x)
        x = x.mean(dim=(2, 3)) if self.stride_variant else x.flatten(1)
        if x.shape[1] != self.feature_dim:
            raise ValueError(
                f"Conv4 built for image_size={self.image_size} ({self.feature_dim} features) got images that give "
                f"{x.shape[1]} features: pass image_size=<your image side>"
            )
        return self.head(x) if self.head is not None else x
