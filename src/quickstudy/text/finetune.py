r"""Contrastive fine-tuning of the sentence encoder on the k-shot set (the few labelled examples of the new intents).

With unit embeddings z_i = f_theta(x_i) and a cosine classifier W (one unit row w_c per intent, initialised at the
normalised class means of the frozen embeddings, Chen et al. 2019 "Baseline++"), each mini-batch B minimises

    L = 1/|B| sum_i CE(s * W z_i, y_i)                                                   (cosine softmax, scale s)
      + lambda * 1/|B'| sum_{i in B'} -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

the second term being the supervised contrastive loss (Khosla et al. 2020) over the batch, P(i) the other
examples of i's intent, B' the examples that have one. The pairing of a supervised contrastive term with the
classification loss on the few shots is the fine-tuning stage of CPFT (Zhang et al., EMNLP 2021). Batches are
drawn class-balanced (``per_class`` examples of ``batch_size / per_class`` intents) so every anchor has
positives. AdamW, linear warm-up over the first 10% of the steps then linear decay to 0.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_int, check_number
from .encoder import SentenceEncoder

__all__ = ["FinetuneSettings", "contrastive_finetune", "supervised_contrastive_loss", "class_balanced_batches"]


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 8
    lr: float = 1e-4
    head_lr: float = 1e-2
    batch_size: int = 32
    per_class: int = 2
    scale: float = 20.0
    supcon: float = 1.0
    temperature: float = 0.1
    weight_decay: float = 0.01
    train_last: int | None = None

    def __post_init__(self) -> None:
        check_int("FinetuneSettings", "epochs", self.epochs, minimum=0)
        for name in ("lr", "head_lr", "scale", "temperature"):
            check_number("FinetuneSettings", name, getattr(self, name))
        check_number("FinetuneSettings", "supcon", self.supcon, allow_zero=True)
        check_number("FinetuneSettings", "weight_decay", self.weight_decay, allow_zero=True)
        check_int("FinetuneSettings", "batch_size", self.batch_size, minimum=2)
        check_int("FinetuneSettings", "per_class", self.per_class)
        check_int("FinetuneSettings", "train_last", self.train_last, minimum=0, allow_none=True)


def supervised_contrastive_loss(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """SupCon (Khosla et al. 2020) of unit embeddings ``z [n, D]``: mean over anchors with at least one positive;
    0 when no anchor has one."""
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(eye, float("-inf"))
    log_prob = logits.log_softmax(dim=1).masked_fill(eye, 0.0)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~eye
    count = positives.sum(1)
    has = count > 0
    if not bool(has.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob * positives).sum(1)[has] / count[has]
    return per_anchor.mean()


def class_balanced_batches(labels: Tensor, batch_size: int, per_class: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch of index batches: every example once; each batch groups ``per_class`` examples of
    ``batch_size // per_class`` intents, so that (almost) every anchor has a positive."""
    groups = []
    for c in torch.unique(labels):
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(rows.numel(), generator=generator)]
        groups += [rows[i:i + per_class] for i in range(0, rows.numel(), per_class)]
    order = torch.randperm(len(groups), generator=generator)
    per_batch = max(1, batch_size // per_class)
    batches = []
    for start in range(0, len(groups), per_batch):
        batches.append(torch.cat([groups[int(i)] for i in order[start:start + per_batch]]))
    return batches


def contrastive_finetune(module: SentenceEncoder, ids: Tensor, labels: Tensor, settings: FinetuneSettings,
                         seed: int = 0, progress: bool = False, class_means: Tensor | None = None) -> Tensor:
    """Fine-tune ``module`` in place on ``(ids [n, L], labels [n])``; returns the cosine head ``W [C, D]`` (unit rows).

    ``class_means``: initial head rows (default: normalised means of the module's embeddings before training)."""
    labels = labels.to(torch.int64)
    ways = int(labels.max()) + 1
    module.train_last(settings.train_last)
    generator = torch.Generator().manual_seed(seed)
    if class_means is None:
        with torch.no_grad():
            module.eval()
            z = torch.cat([module(ids[i:i + 128]) for i in range(0, ids.shape[0], 128)])
        class_means = torch.stack([z[labels == c].mean(0) for c in range(ways)])
    head = torch.nn.Parameter(F.normalize(class_means.detach().clone(), dim=1))
    # last layers only: the frozen layers run once here, not in every epoch (same result, a fraction of the time)
    start = len(module.layers()) - settings.train_last if settings.train_last is not None else None
    cached = None
    if start is not None:
        module.eval()
        parts = [module.hidden_below(ids[i:i + 128], start) for i in range(0, ids.shape[0], 128)]
        width = max(h.shape[1] for h, _ in parts)
        hidden = torch.cat([F.pad(h, (0, 0, 0, width - h.shape[1])) for h, _ in parts])
        mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in parts])
        cached = (hidden, mask)
    encoder_params = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [head], "lr": settings.head_lr}]
    if encoder_params:
        groups.insert(0, {"params": encoder_params, "lr": settings.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    batches_per_epoch = len(class_balanced_batches(labels, settings.batch_size, settings.per_class,
                                                   torch.Generator().manual_seed(seed)))
    total = max(1, settings.epochs * batches_per_epoch)
    warmup = max(1, math.ceil(0.1 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="fine-tuning on the k-shot set", unit="batch", file=sys.stderr, leave=False)
    module.train()
    try:
        for _ in range(settings.epochs):
            for rows in class_balanced_batches(labels, settings.batch_size, settings.per_class, generator):
                z = module(ids[rows]) if cached is None else module.forward_from(cached[0][rows], cached[1][rows], start)
                y = labels[rows]
                loss = F.cross_entropy(settings.scale * z @ F.normalize(head, dim=1).T, y)
                if settings.supcon > 0:
                    loss = loss + settings.supcon * supervised_contrastive_loss(z, y, settings.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        if bar is not None:
            bar.close()
        module.eval()
    module.requires_grad_(True)
    return F.normalize(head.detach(), dim=1)
