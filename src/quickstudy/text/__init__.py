"""Few-shot intent detection on text (``pip install 'quickstudy[text]'``).

    from quickstudy.data import intents
    from quickstudy.text import load_encoder, fit_classifier
    train = intents.fewshot_split("banking77", "train_5")
    encoder = load_encoder()                                  # bundled all-MiniLM-L6-v2, offline
    z = encoder.encode(train.texts, cache=True)               # unit embeddings, cached on disk
    clf = fit_classifier("logistic", z, train.labels)

Modules: ``encoder`` (the sentence-encoder backbone and the embedding cache), ``finetune`` (contrastive fine-tuning
on the k-shot set), ``episodes`` (token-id / embedding episodes, ProtoNet meta-training with the Trainer),
``classify`` (classifiers and the out-of-scope threshold), ``model`` (a saved intent model), ``kind`` (the
``kind: text`` experiments), ``cli`` (``quickstudy intents``). torch-free imports until used.
"""

from __future__ import annotations

import importlib

from .extra import INSTALL_HINT, MissingTextExtra, require_text_extra, text_extra_available

_LAZY = {
    "load_encoder": "encoder", "TextEncoder": "encoder", "SentenceEncoder": "encoder", "EmbeddingCache": "encoder",
    "FinetuneSettings": "finetune", "contrastive_finetune": "finetune",
    "fit_classifier": "classify", "choose_threshold": "classify", "oos_metrics": "classify",
    "IntentModel": "model", "meta_train_encoder": "episodes", "token_dataset": "episodes",
    "embedding_dataset": "episodes",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'quickstudy.text' has no attribute {name!r}")


__all__ = ["INSTALL_HINT", "MissingTextExtra", "require_text_extra", "text_extra_available", *_LAZY]
