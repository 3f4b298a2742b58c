"""Evaluation statistics: mean with a 95% confidence interval, and macro precision / recall / F1.

Confidence interval (the few-shot convention, e.g. Snell et al. 2017, Finn et al. 2017)::

    mean = (1/n) sum_i a_i
    s    = sqrt( sum_i (a_i - mean)^2 / (n - 1) )        # sample standard deviation, ddof=1
    ci95 = 1.96 * s / sqrt(n)                            # normal approximation

over the per-episode values ``a_i`` (one value per *task*, not per query example).

Macro precision / recall / F1 follow scikit-learn's ``average="macro"`` with ``zero_division=0``:
from the confusion matrix ``C[t, p]`` (rows: true class, columns: predicted class)::

    precision_c = C[c, c] / sum_t C[t, c]      (0 when class c is never predicted)
    recall_c    = C[c, c] / sum_p C[c, p]      (0 when class c never occurs)
    f1_c        = 2 P_c R_c / (P_c + R_c)      (0 when P_c + R_c = 0)

each averaged over the classes that occur in the targets or the predictions (a class absent from
both says nothing about the classifier and is left out, as scikit-learn does).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["mean_ci95", "confusion_matrix", "macro_prf", "macro_prf_from_confusion"]

Z_95 = 1.96


def mean_ci95(values: Iterable[float] | Tensor) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` of ``values`` with the sample standard deviation (ddof=1).

    Computed in float64. One value gives ``ci95 = nan`` (the spread of a single sample is unknown);
    no values, or a non-finite value, raise ``ValueError``.
    """
    if isinstance(values, Tensor):
        data = values.detach().to("cpu", torch.float64).flatten()
    else:
        data = torch.tensor([float(v) for v in values], dtype=torch.float64)
    n = data.numel()
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value, got an empty sequence")
    if not bool(torch.isfinite(data).all()):
        bad = int(torch.nonzero(~torch.isfinite(data))[0])
        raise ValueError(f"mean_ci95: value {bad} is {float(data[bad])}; every value must be finite")
    mean = float(data.mean())
    if n == 1:
        return mean, math.nan
    std = float(data.std(correction=1))
    return mean, Z_95 * std / math.sqrt(n)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Confusion counts ``[..., C, C]`` (int64; ``[t, p]`` = examples of true class t predicted as p).

    ``pred`` and ``target`` are integer class indices of the same shape ``[..., n]``; leading
    dimensions are kept (one matrix per episode of a batch, in one ``bincount``).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}: they must match")
    if pred.dim() == 0:
        raise ValueError("pred and target must hold at least one dimension of examples, got scalars")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(f"pred and target must be integer class indices, got {pred.dtype} and {target.dtype}")
    for name, labels in (("pred", pred), ("target", target)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(
                f"{name} holds classes in [{int(labels.min())}, {int(labels.max())}]: "
                f"expected 0..{num_classes - 1} for num_classes={num_classes}"
            )
    lead = pred.shape[:-1]
    groups = math.prod(lead)
    flat_pred = pred.reshape(groups, -1).long()
    flat_target = target.reshape(groups, -1).long()
    offsets = torch.arange(groups, device=pred.device).unsqueeze(1) * (num_classes * num_classes)
    index = offsets + flat_target * num_classes + flat_pred
    counts = torch.bincount(index.flatten(), minlength=groups * num_classes * num_classes)
    return counts.reshape(*lead, num_classes, num_classes)


def macro_prf_from_confusion(confusion: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Macro ``(precision, recall, f1)`` from confusion matrices ``[..., C, C]``; float64 tensors ``[...]``."""
    if confusion.dim() < 2 or confusion.shape[-1] != confusion.shape[-2]:
        raise ValueError(f"confusion must be [..., C, C], got shape {tuple(confusion.shape)}")
    cm = confusion.to(torch.float64)
    true_pos = torch.diagonal(cm, dim1=-2, dim2=-1)
    predicted = cm.sum(dim=-2)  # column sums: how often each class was predicted
    actual = cm.sum(dim=-1)  # row sums: how often each class occurs
    zero = torch.zeros_like(true_pos)
    precision = torch.where(predicted > 0, true_pos / predicted.clamp_min(1), zero)
    recall = torch.where(actual > 0, true_pos / actual.clamp_min(1), zero)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), zero)
    present = ((predicted > 0) | (actual > 0)).to(torch.float64)
    count = present.sum(dim=-1).clamp_min(1)
    return ((precision * present).sum(-1) / count, (recall * present).sum(-1) / count, (f1 * present).sum(-1) / count)


def macro_prf(pred: Tensor | Sequence[int], target: Tensor | Sequence[int], num_classes: int) -> tuple[float, float, float]:
    """Macro-averaged ``(precision, recall, f1)`` of one set of predictions (see the module docstring).

    ``pred`` and ``target`` are 1-D integer class indices in ``0..num_classes-1``. For many episodes
    at once use :func:`confusion_matrix` (leading dimensions) and :func:`macro_prf_from_confusion`.
    """
    pred = torch.as_tensor(pred)
    target = torch.as_tensor(target)
    if pred.dim() != 1:
        raise ValueError(f"macro_prf expects 1-D pred and target, got shape {tuple(pred.shape)}")
    if pred.numel() == 0:
        raise ValueError("macro_prf needs at least one prediction, got none")
    precision, recall, f1 = macro_prf_from_confusion(confusion_matrix(pred, target, num_classes))
    return float(precision), float(recall), float(f1)
