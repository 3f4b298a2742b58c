r"""Text on the same contracts as images: FewShotDatasets of token ids or of cached embeddings, episodes through
:class:`~quickstudy.EpisodeSampler` / :class:`~quickstudy.TaskBatch`, meta-training with :class:`~quickstudy.Trainer`.

What a TaskBatch carries for text: **token ids** (``support_x [B, N*K, L]`` int64, 0 = padding) whenever the
encoder itself is meta-trained, because the meta-gradient has to flow through the encoder; **cached embeddings**
(``[B, N*K, D]`` float) when the encoder is frozen (a head meta-trained with ANIL, evaluation episodes), because
re-encoding the same frozen text in every episode would spend nearly all the time on identical forward passes.
Both are ``x`` tensors that the learner's model maps to outputs, the one contract of every modality: the encoder
(:class:`~quickstudy.text.encoder.SentenceEncoder`) is a backbone of ids like Conv4 is one of pixels, and an
embedding is an input like any feature vector.

Episodic meta-training of the encoder is ProtoNet (Snell et al. 2017) on unit embeddings scaled by sqrt(s):

    logit_n(q) = -s * || f(q) - c_n ||^2,   c_n = mean_{x in S_n} f(x),   ||f(.)|| = 1

(the bounded distances of unit vectors need the scale s to give a sharp softmax over 20-40 ways).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..data.base import ArrayDataset, FewShotDataset
from ..data.intents import TextDataset

__all__ = ["ScaledEncoder", "UpperLayers", "token_dataset", "hidden_dataset", "embedding_dataset",
           "meta_train_encoder", "subsample"]


class ScaledEncoder(nn.Module):
    """``module(x) * sqrt(scale)``: squared distances between its outputs are ``scale`` times those of unit vectors."""

    def __init__(self, module: nn.Module, scale: float = 20.0):
        super().__init__()
        self.module = module
        self.factor = math.sqrt(float(scale))

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x) * self.factor


class UpperLayers(nn.Module):
    """The encoder's layers ``start..`` as a backbone of frozen hidden states: ``x [n, L, D]`` is the input of layer
    ``start`` (from :meth:`SentenceEncoder.hidden_below`) with padding positions exactly zero (the mask is read back
    from them: a real token's hidden state is never all zeros). Meta-training the last layers this way runs the
    frozen layers once per text instead of once per episode."""

    def __init__(self, module: nn.Module, start: int):
        super().__init__()
        self.module = module
        self.start = int(start)

    def forward(self, hidden: Tensor) -> Tensor:
        mask = hidden.abs().sum(-1) > 0
        return self.module.forward_from(hidden, mask, self.start)


def subsample(data: TextDataset, per_intent: int | None, seed: int) -> TextDataset:
    """At most ``per_intent`` texts of each intent (a seeded choice); ``None`` keeps all."""
    if per_intent is None:
        return data
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(data.labels == c))[:per_intent]
                           for c in range(len(data.classes))])
    keep.sort()
    return TextDataset(tuple(data.texts[i] for i in keep), data.labels[keep], data.classes, data.name, data.source)


def token_dataset(encoder, data: TextDataset, min_examples: int = 1) -> FewShotDataset:
    """Token ids ``[M, L]`` grouped by intent (intents with fewer than ``min_examples`` texts left out)."""
    keep = np.flatnonzero(data.counts() >= min_examples)
    if keep.size == 0:
        raise ValueError(f"{data.name}: no intent has {min_examples} examples")
    mask = np.isin(data.labels, keep)
    texts = [t for t, m in zip(data.texts, mask) if m]
    ids = encoder.tokenize(texts)
    return ArrayDataset(ids, torch.as_tensor(data.labels[mask]), class_names=list(data.classes), name=data.name)


def hidden_dataset(encoder, data: TextDataset, start: int, min_examples: int = 1, batch_size: int = 128,
                   progress: bool = False) -> FewShotDataset:
    """Inputs of layer ``start`` ``[M, L, D]`` (padding zero) grouped by intent: the examples of :class:`UpperLayers`."""
    keep = np.flatnonzero(data.counts() >= min_examples)
    if keep.size == 0:
        raise ValueError(f"{data.name}: no intent has {min_examples} examples")
    mask = np.isin(data.labels, keep)
    ids = encoder.tokenize([t for t, m in zip(data.texts, mask) if m])
    width = max(1, int((ids != encoder.module.pad_id).sum(1).max()))
    hidden = torch.zeros(ids.shape[0], width, encoder.dim)
    encoder.module.eval()
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=ids.shape[0], desc="frozen layers", unit="text", file=sys.stderr, leave=False)
    for first in range(0, ids.shape[0], batch_size):
        h, m = encoder.module.hidden_below(ids[first:first + batch_size], start)
        hidden[first:first + h.shape[0], :h.shape[1]] = h * m.unsqueeze(-1)
        if bar is not None:
            bar.update(h.shape[0])
    if bar is not None:
        bar.close()
    return ArrayDataset(hidden, torch.as_tensor(data.labels[mask]), class_names=list(data.classes), name=data.name)


def embedding_dataset(vectors: Tensor, data: TextDataset, min_examples: int = 1) -> FewShotDataset:
    """Embeddings ``[M, D]`` (one row per text of ``data``) grouped by intent, as a FewShotDataset."""
    keep = np.flatnonzero(data.counts() >= min_examples)
    if keep.size == 0:
        raise ValueError(f"{data.name}: no intent has {min_examples} examples")
    mask = torch.as_tensor(np.isin(data.labels, keep))
    return ArrayDataset(vectors[mask].float(), torch.as_tensor(data.labels)[mask.numpy()],
                        class_names=list(data.classes), name=data.name)


def meta_train_encoder(encoder, source: TextDataset, *, steps: int, ways: int, shots: int, queries: int,
                       meta_batch: int, lr: float, scale: float, train_last: int | None, seed: int,
                       out: str | Path | None, progress: bool, time_limit: float | None = None,
                       resume: bool = False) -> dict:
    """ProtoNet meta-training of ``encoder.module`` on episodes of ``source`` with the shared Trainer (checkpoints
    ``last.pt`` / ``metrics.csv`` in ``out``); returns a summary. ``time_limit`` is in seconds."""
    from ..algorithms import ProtoNet
    from ..tasks import EpisodeSampler
    from ..training import Trainer
    from ..training.callbacks import TimeLimit

    module = encoder.module.train_last(train_last)
    if train_last is None:  # all layers: episodes of token ids
        dataset = token_dataset(encoder, source, min_examples=shots + queries)
        backbone: nn.Module = module
    else:  # the last layers: episodes of frozen hidden states, the lower layers run once per text
        start = len(module.layers()) - train_last
        dataset = hidden_dataset(encoder, source, start, min_examples=shots + queries, progress=progress)
        backbone = UpperLayers(module, start)
    ways = min(ways, len(dataset.classes))
    sampler = EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, batch_size=meta_batch, seed=seed)
    learner = ProtoNet(ScaledEncoder(backbone, scale), strategy="loop")
    trainer = Trainer(learner, sampler, steps=steps, lr=lr, optimizer="adamw", optimizer_kwargs={"weight_decay": 0.01},
                      schedule="cosine", val_every=None, out=out, log_every=10, checkpoint_every=max(1, steps // 4),
                      progress=progress, seed=seed, tensorboard=False, cpu_caching_allocator=False,
                      callbacks=[TimeLimit(time_limit)] if time_limit else ())
    can_resume = resume and out is not None and (Path(out) / "last.pt").is_file()
    history = trainer.fit(resume=True if can_resume else False, overwrite=not can_resume)
    module.requires_grad_(True)
    module.eval()
    rows = history.train
    return {"steps": trainer.step, "intents": len(dataset.classes), "texts": int(dataset.examples.shape[0]),
            "final_loss": rows[-1].get("loss") if rows else None,
            "final_accuracy": rows[-1].get("accuracy") if rows else None, "seconds": trainer.elapsed}
