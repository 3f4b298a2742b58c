r"""Fine-tune baselines: Baseline and Baseline++ (Chen, Liu, Kira, Wang & Huang, "A Closer Look at Few-shot
Classification", ICLR 2019, arXiv:1904.04232).

    pre-training (meta_loss): ordinary supervised learning of backbone f_theta and a classifier W over all
        C training classes, on every image of the batch with its dataset class id
        (global label = batch.classes[b, y]):     L(theta, W) = CE(W(f_theta(x)), class_id)

    adaptation (adapt): freeze f_theta; fit a new N-way head on the support features z = f_theta(S.x):
        head="linear"  (Baseline):    logits = V z + b
        head="cosine"  (Baseline++):  logits_n = s * cos(v_n, z)
      by ``adapt_steps`` full-batch steps of SGD (lr 0.01, momentum 0.9, weight decay 0.001: the paper's
      optimiser; it used mini-batches of 4 for 100 epochs) or Adam, then predict with head(f_theta(x)).

The new head starts deterministically (zeros for the linear head, the class-mean support features for the
cosine head), so adaptation draws nothing from the global random stream. ``s`` (``scale``) defaults to
2 for at most 200 classes and 10 above, as the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_number
from ..optim import OPTIMIZERS, build_optimizer
from ..tasks.batch import TaskBatch
from .base import AdaptedPredictor, MetaLearner, Predictor, all_finite, check_batch, check_task, unwrap_model
from .losses import summarize
from .protonet import prototypes

__all__ = ["FineTune", "CosineClassifier"]

HEADS = ("linear", "cosine")


class CosineClassifier(nn.Module):
    """``logits = scale * normalize(x) @ normalize(W).T`` (Baseline++'s distance-based classifier)."""

    def __init__(self, in_features: int, classes: int, scale: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.scale = float(scale) if scale is not None else (2.0 if classes <= 200 else 10.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.normalize(x, dim=-1, eps=1e-5) @ F.normalize(self.weight, dim=-1, eps=1e-5).T


class FineTune(MetaLearner):
    """``FineTune(model, num_train_classes, head="linear", adapt_steps=100, adapt_lr=0.01, adapt_optimizer="sgd",
    momentum=0.9, weight_decay=0.001, feature_dim=None, scale=None)``.

    ``model`` is the backbone, an embedding ``[n, ...] -> [n, D]`` (e.g. ``Conv4(ways=None)``); ``D`` is
    ``feature_dim`` or else ``model.out_features``.
    """

    task_type = "classification"
    embedding_model = True

    def __init__(
        self,
        model: nn.Module,
        num_train_classes: int,
        head: str = "linear",
        adapt_steps: int = 100,
        adapt_lr: float = 0.01,
        adapt_optimizer: str = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 0.001,
        feature_dim: int | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        model = unwrap_model("FineTune", model)
        self.num_train_classes = check_int("FineTune", "num_train_classes", num_train_classes)
        self.head = check_choice("FineTune", "head", head, HEADS)
        self.adapt_steps = check_int("FineTune", "adapt_steps", adapt_steps, minimum=0)
        self.adapt_lr = check_number("FineTune", "adapt_lr", adapt_lr)
        self.adapt_optimizer = check_choice("FineTune", "adapt_optimizer", adapt_optimizer, OPTIMIZERS)
        self.momentum = check_number("FineTune", "momentum", momentum, allow_zero=True)
        self.weight_decay = check_number("FineTune", "weight_decay", weight_decay, allow_zero=True)
        self.scale = None if scale is None else check_number("FineTune", "scale", scale)
        if feature_dim is None:
            feature_dim = getattr(model, "out_features", None)
            if not isinstance(feature_dim, int):
                raise ValueError(
                    f"FineTune: cannot tell the backbone's output width ({type(model).__name__} has no integer "
                    "out_features); pass feature_dim=<D>"
                )
        self.feature_dim = check_int("FineTune", "feature_dim", feature_dim)
        self.model = model
        self.classifier = self._new_head(self.num_train_classes)

    def _new_head(self, classes: int) -> nn.Module:
        if self.head == "linear":
            return nn.Linear(self.feature_dim, classes)
        return CosineClassifier(self.feature_dim, classes, self.scale)

    def _features(self, x: Tensor) -> Tensor:
        z = self.model(x)
        if z.dim() != 2 or z.shape[1] != self.feature_dim:
            raise ValueError(f"FineTune: the backbone must return [n, {self.feature_dim}] features, got {tuple(z.shape)}")
        return z

    # ------------------------------------------------------------------ pre-training
    def meta_loss(self, batch: TaskBatch) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy over the ``num_train_classes`` of every support and query image of the batch."""
        check_batch("FineTune", batch, "classification")
        if batch.classes is None:
            raise ValueError("FineTune pre-trains on dataset class ids, but the batch has no `classes` field")
        classes = batch.classes.to(batch.support_y.device)
        labels = torch.cat([classes.gather(1, batch.support_y).flatten(), classes.gather(1, batch.query_y).flatten()])
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_train_classes:
            raise ValueError(
                f"FineTune: the batch holds class ids in [{lo}, {hi}] but num_train_classes={self.num_train_classes} "
                f"(expected ids 0..{self.num_train_classes - 1} of the training split)"
            )
        x = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        logits = self.classifier(self._features(x))
        loss = F.cross_entropy(logits, labels)
        return loss, summarize(loss.detach().unsqueeze(0), logits, labels)

    # ------------------------------------------------------------------ adaptation
    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Predictor:
        """Fit a new head on the frozen support features for ``steps`` (default ``adapt_steps``) steps."""
        check_task("FineTune", support_x, support_y)
        if support_y.is_floating_point() or support_y.dim() != 1 or int(support_y.min()) < 0:
            raise ValueError(f"FineTune.adapt: support_y must be [n] labels 0..N-1, got {support_y.dtype} {tuple(support_y.shape)}")
        steps = self.adapt_steps if steps is None else check_int("FineTune.adapt", "steps", steps, minimum=0)
        ways = int(support_y.max()) + 1
        with torch.no_grad():
            z = self._features(support_x).detach()
            head = self._new_head(ways).to(device=z.device, dtype=z.dtype)
            if self.head == "linear":
                head.weight.zero_()
                head.bias.zero_()
            else:
                head.weight.copy_(prototypes(z, support_y, ways).nan_to_num(0.0))
        # momentum goes to the optimizers that take it (SGD, RMSprop); weight decay to all
        opt = build_optimizer("FineTune", self.adapt_optimizer, head.parameters(), self.adapt_lr, strict=False,
                              momentum=self.momentum, weight_decay=self.weight_decay)
        losses = []
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(head(z), support_y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.detach())
        head.requires_grad_(False)
        if not all_finite(losses + list(head.parameters())):
            raise FloatingPointError(
                f"FineTune.adapt: the support loss became non-finite ({[float(v) for v in losses[-3:]]}); "
                f"lower adapt_lr={self.adapt_lr} or check the inputs"
            )
        return AdaptedPredictor(lambda x: head(self._features(x)), [float(v) for v in losses])

    def extra_repr(self) -> str:
        return (f"num_train_classes={self.num_train_classes}, head={self.head!r}, adapt_steps={self.adapt_steps}, "
                f"adapt_lr={self.adapt_lr}, adapt_optimizer={self.adapt_optimizer!r}")
