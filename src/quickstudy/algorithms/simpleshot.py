r"""SimpleShot (Wang, Chao, Weinberger & van der Maaten, 2019, arXiv:1911.04623): nearest class mean on centred,
L2-normalised features of a network pre-trained with ordinary cross-entropy.

    pre-training (meta_loss): the backbone f_theta and a linear classifier over all C training classes, on every
        image of the batch with its dataset class id, as :class:`~.finetune.FineTune`; meanwhile
        x_bar <- the running mean of the training features f_theta(x) (``feature_mean``, a buffer: saved with the
        weights; the exact mean of the first 1/momentum batches, then an exponential moving average)
    transform (``transform="cl2n"``):   t(x) = (f(x) - x_bar) / ||f(x) - x_bar||     ("l2n": f/||f||; "un": f)
    adaptation: c_n = mean_{(x, y) in S, y = n} t(x);   logits: -||t(x) - c_n||^2   (the nearest mean wins)

The paper centres with the mean over the whole training set under the final weights; the running mean tracks the
weights as they train (``mean_momentum`` 0.01 by default: the last few hundred batches).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_number
from .base import AdaptedPredictor, Predictor, check_task
from .finetune import FineTune
from .metric import check_labels
from .protonet import prototypes, squared_distances

__all__ = ["SimpleShot", "TRANSFORMS"]

#: feature transforms by name (Wang et al.'s UN, L2N and CL2N)
TRANSFORMS = ("cl2n", "l2n", "un")


class SimpleShot(FineTune):
    """``SimpleShot(model, num_train_classes, transform="cl2n", mean_momentum=0.01, feature_dim=None)``: ``model`` is
    the backbone ``[n, ...] -> [n, D]``; pre-training as :class:`~.finetune.FineTune` with a linear head."""

    def __init__(self, model: nn.Module, num_train_classes: int, transform: str = "cl2n", mean_momentum: float = 0.01,
                 feature_dim: int | None = None) -> None:
        super().__init__(model, num_train_classes, head="linear", adapt_steps=0, feature_dim=feature_dim)
        self.transform = check_choice("SimpleShot", "transform", transform, TRANSFORMS)
        self.mean_momentum = check_number("SimpleShot", "mean_momentum", mean_momentum)
        if self.mean_momentum > 1:
            raise ValueError(f"SimpleShot: mean_momentum must be in (0, 1], got {mean_momentum!r}")
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("mean_updates", torch.zeros((), dtype=torch.long))

    def _features(self, x: Tensor) -> Tensor:
        z = super()._features(x)
        if self.training and torch.is_grad_enabled():  # a pre-training step (adapt runs without gradients)
            with torch.no_grad():
                self.mean_updates += 1
                rate = max(self.mean_momentum, 1.0 / int(self.mean_updates))
                self.feature_mean.lerp_(z.mean(0).to(self.feature_mean.dtype), rate)
        return z

    def transformed(self, x: Tensor) -> Tensor:
        """t(x): the backbone's features, centred and/or L2-normalised as ``transform`` says."""
        z = self._features(x)
        if self.transform == "cl2n":
            z = z - self.feature_mean.to(z.dtype)
        return z if self.transform == "un" else F.normalize(z, dim=-1, eps=1e-8)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """The class means of the transformed support features; ``steps`` is ignored (nothing is trained)."""
        check_task("SimpleShot", support_x, support_y)
        ways = check_labels("SimpleShot", support_y)
        with torch.no_grad():
            centres = prototypes(self.transformed(support_x), support_y, ways)
        return AdaptedPredictor(lambda x: -squared_distances(self.transformed(x), centres))

    def extra_repr(self) -> str:
        return f"num_train_classes={self.num_train_classes}, transform={self.transform!r}"
