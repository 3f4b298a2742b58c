"""A trained intent model: the encoder (its fine-tuned weights, when they changed), the classifier on its embeddings,
the intent names and the out-of-scope threshold; saved as ``RUN/intent_model.pt`` (loadable with weights_only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .._atomic import atomic_write
from .classify import EmbeddingClassifier
from .encoder import TextEncoder, load_encoder

__all__ = ["IntentModel", "MODEL_FILE", "OUT_OF_SCOPE"]

MODEL_FILE = "intent_model.pt"
FORMAT = "quickstudy.IntentModel/1"
OUT_OF_SCOPE = "oos"


@dataclass
class IntentModel:
    encoder: TextEncoder
    classifier: EmbeddingClassifier
    classes: list[str]
    threshold: float | None = None
    encoder_modified: bool = False
    frozen_below: int | None = None  # layers below this one were never trained (None: all may have been)

    def embed(self, texts: Sequence[str], progress: bool = False) -> Tensor:
        """Unit embeddings; the on-disk cache serves the unmodified encoder, the in-process cache of frozen layers one
        whose last layers only were trained."""
        if self.encoder_modified and self.frozen_below:
            return self.encoder.encode_from(list(texts), self.frozen_below, progress=progress)
        return self.encoder.encode(list(texts), progress=progress, cache=not self.encoder_modified)

    def probabilities(self, texts: Sequence[str], progress: bool = False) -> Tensor:
        return self.classifier.probabilities(self.embed(texts, progress))

    def predict(self, texts: Sequence[str], progress: bool = False) -> list[dict]:
        """One dict per text: ``text``, ``label`` (``"oos"`` when rejected), ``intent`` (the best in-scope intent),
        ``probability`` (of that intent) and ``out_of_scope``."""
        from ..data.intents import check_texts

        check_texts(list(texts), "input", what="message")
        probs = self.probabilities(texts, progress)
        top, index = probs.max(dim=1)
        rows = []
        for text, p, i in zip(texts, top.tolist(), index.tolist()):
            rejected = self.threshold is not None and p < self.threshold
            rows.append({"text": text, "label": OUT_OF_SCOPE if rejected else self.classes[i],
                         "intent": self.classes[i], "probability": round(float(p), 6), "out_of_scope": bool(rejected)})
        return rows

    def save(self, run_dir: str | os.PathLike) -> Path:
        path = Path(run_dir) / MODEL_FILE
        payload = {
            "format": FORMAT,
            "encoder": self.encoder.spec,
            "max_length": self.encoder.max_length,
            "encoder_state": self.encoder.module.state_dict() if self.encoder_modified else None,
            "classifier": self.classifier.state(),
            "classes": list(self.classes),
            "threshold": self.threshold,
            "frozen_below": self.frozen_below,
        }
        with atomic_write(path) as handle:
            torch.save(payload, handle)
        return path

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "IntentModel":
        """The model of a text run; a clear error for a folder that is not one."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no such run folder")
        path = run_dir / MODEL_FILE
        if not path.is_file():
            raise ValueError(f"{run_dir}: not a text intent run (no {MODEL_FILE}); train one with "
                             "'quickstudy intents train DATA.csv --out RUN' or a kind: text config")
        try:
            payload = torch.load(path, weights_only=True)
        except Exception as error:  # noqa: BLE001 - damaged or foreign file: one line
            raise ValueError(f"{path}: cannot read the intent model ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path}: not a quickstudy intent model")
        encoder = load_encoder(payload["encoder"], max_length=int(payload["max_length"]))
        modified = payload["encoder_state"] is not None
        if modified:
            encoder.module.load_state_dict(payload["encoder_state"])
        encoder.module.eval()
        return cls(encoder, EmbeddingClassifier.from_state(payload["classifier"]), list(payload["classes"]),
                   payload["threshold"], modified, payload.get("frozen_below"))
