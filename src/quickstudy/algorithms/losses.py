"""Task losses by name, and the metrics every meta-learner reports."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "LossFn", "resolve_loss", "summarize"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _full(outputs: Tensor) -> Tensor:
    """bfloat16/float16 outputs (autocast) are scored in float32: a softmax or a squared error summed in 8 bits
    of mantissa loses the small differences the meta-gradient is made of."""
    return outputs.float() if outputs.dtype in (torch.bfloat16, torch.float16) else outputs


def _mse(outputs: Tensor, targets: Tensor) -> Tensor:
    outputs = _full(outputs)
    if outputs.shape != targets.shape:
        raise ValueError(
            f"mse loss: outputs have shape {tuple(outputs.shape)} but targets {tuple(targets.shape)}; they must "
            "match (a [n] target against [n, 1] outputs would broadcast to [n, n])"
        )
    return F.mse_loss(outputs, targets)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(_full(logits), labels)


#: name -> (loss function, task type)
LOSSES: dict[str, tuple[LossFn, str]] = {
    "cross_entropy": (_cross_entropy, "classification"),
    "mse": (_mse, "regression"),
}

TASK_TYPES = ("classification", "regression")


def resolve_loss(owner: str, loss: str | LossFn, task_type: str | None = None) -> tuple[LossFn, str]:
    """``(loss_fn, task_type)`` from a name in :data:`LOSSES` or a callable ``(outputs, targets) -> scalar``.

    A callable loss is taken to be for classification unless ``task_type="regression"`` is given.
    """
    if isinstance(loss, str) and loss in LOSSES:
        fn, inferred = LOSSES[loss]
    elif callable(loss) and not isinstance(loss, str):
        fn, inferred = loss, "classification"
    else:
        raise ValueError(
            f"{owner}: loss must be one of {', '.join(repr(n) for n in LOSSES)} or a callable "
            f"(outputs, targets) -> scalar tensor; got {loss!r}"
        )
    if task_type is not None and task_type not in TASK_TYPES:
        raise ValueError(f"{owner}: task_type must be 'classification' or 'regression' (or None); got {task_type!r}")
    return fn, task_type or inferred


def summarize(losses: Tensor, outputs: Tensor | None, targets: Tensor | None) -> dict[str, float]:
    """``{"loss": mean of the per-task losses, "accuracy": ...}`` as Python floats, with one device sync.

    ``accuracy`` (mean over all query examples of ``argmax(outputs) == targets``) is reported when the
    targets are integer labels. A non-finite loss stays non-finite: the metrics never hide a NaN.
    """
    dtype = torch.float32 if losses.device.type == "mps" else torch.float64
    values = [losses.detach().to(dtype).mean()]
    names = ["loss"]
    if outputs is not None and targets is not None and not targets.is_floating_point():
        values.append((outputs.detach().argmax(-1) == targets).to(dtype).mean())
        names.append("accuracy")
    return dict(zip(names, torch.stack(values).tolist()))
