r"""Transductive fine-tuning (Dhillon, Chaudhari, Ravichandran & Soatto, "A Baseline for Few-Shot Image
Classification", ICLR 2020, arXiv:1909.02729).

    pre-training (meta_loss): the backbone f_theta and a linear classifier over all C training classes with
        cross-entropy, as :class:`~.finetune.FineTune`
    support-based initialisation of a new N-way head on normalised features z^ = f(x) / ||f(x)||:
        w_n = c_n / ||c_n||,  c_n = mean_{(x, y) in S, y = n} z^(x);   b_n = 0;   logits = s * (W z^ + b)
    transductive fine-tuning of the backbone and the head together on the support set S and the unlabelled
    queries Q (``adapt_steps`` Adam steps, learning rate ``adapt_lr``):
        L = 1/|S| sum_S CE(logits(x), y) + 1/|Q| sum_Q H(softmax(logits(x)))      (H: the entropy)

Because the queries enter the objective, ``adapt(support_x, support_y)`` returns a predictor that fine-tunes a copy
of the network for the queries it is given, then labels them (calling it twice on the same queries gives the
same answer). ``s`` (``scale``) sharpens the cosine logits of the initial head; the paper's hyper-parameters on
ImageNet-like data: 25 epochs of Adam at 5e-5.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_bool, check_int, check_number
from .base import AdaptedPredictor, Predictor, all_finite, check_task
from .finetune import FineTune
from .metric import check_labels
from .protonet import prototypes

__all__ = ["TransductiveFineTune", "transductive_loss"]


def transductive_loss(support_logits: Tensor, support_y: Tensor, query_logits: Tensor) -> Tensor:
    """Mean support cross-entropy plus mean query entropy."""
    log_p = F.log_softmax(query_logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1).mean()
    return F.cross_entropy(support_logits, support_y) + entropy


class TransductiveFineTune(FineTune):
    """``TransductiveFineTune(model, num_train_classes, adapt_steps=25, adapt_lr=5e-5, scale=10.0,
    finetune_backbone=True, feature_dim=None)``: ``model`` is the backbone ``[n, ...] -> [n, D]``."""

    def __init__(self, model: nn.Module, num_train_classes: int, adapt_steps: int = 25, adapt_lr: float = 5e-5,
                 scale: float = 10.0, finetune_backbone: bool = True, feature_dim: int | None = None) -> None:
        super().__init__(model, num_train_classes, head="linear", adapt_steps=adapt_steps, adapt_lr=adapt_lr,
                         adapt_optimizer="adam", weight_decay=0.0, feature_dim=feature_dim)
        self.logit_scale = check_number("TransductiveFineTune", "scale", scale)
        self.finetune_backbone = check_bool("TransductiveFineTune", "finetune_backbone", finetune_backbone)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        check_task("TransductiveFineTune", support_x, support_y)
        ways = check_labels("TransductiveFineTune", support_y)
        if steps is not None:
            check_int("TransductiveFineTune.adapt", "steps", steps, minimum=0)
        steps = self.adapt_steps if steps is None else steps

        def predict(query_x: Tensor) -> Tensor:
            net = copy.deepcopy(self.model).requires_grad_(self.finetune_backbone)  # the meta-model stays as it is
            with torch.no_grad():
                centres = prototypes(F.normalize(net(support_x), dim=-1), support_y, ways)
            weight = nn.Parameter(F.normalize(centres, dim=-1))
            bias = nn.Parameter(torch.zeros(ways, dtype=weight.dtype, device=weight.device))

            def logits(x: Tensor) -> Tensor:
                return self.logit_scale * F.linear(F.normalize(net(x), dim=-1), weight, bias)

            tensors = [weight, bias] + (list(net.parameters()) if self.finetune_backbone else [])
            optimizer = torch.optim.Adam(tensors, lr=self.adapt_lr)
            with torch.enable_grad():
                for _ in range(steps):
                    loss = transductive_loss(logits(support_x), support_y, logits(query_x))
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            if not all_finite(tensors):
                raise FloatingPointError(f"TransductiveFineTune.adapt: the weights became non-finite; lower "
                                         f"adapt_lr={self.adapt_lr}")
            with torch.no_grad():
                return logits(query_x)

        return AdaptedPredictor(predict)

    def extra_repr(self) -> str:
        return (f"num_train_classes={self.num_train_classes}, adapt_steps={self.adapt_steps}, "
                f"adapt_lr={self.adapt_lr}, scale={self.logit_scale}, finetune_backbone={self.finetune_backbone}")
