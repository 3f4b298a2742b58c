"""Text intent-detection experiments (``kind: text``): one YAML file per experiment, validated before anything runs.

Unknown keys and wrong types fail naming the dotted key (the override syntax and error format of
:mod:`quickstudy.config`). Two protocols:

* ``fixed-split`` — the published few-shot protocol: all intents of ``data.dataset`` with ``data.shots`` examples
  each (the fixed ``train_5`` / ``train_10`` split, or a user's file), accuracy on the full test split.
* ``episodes`` — meta-learning protocol: N-way K-shot episodes (``episodes.*``) on intents never seen in training:
  the held-out CLINC150 domains, or another data set.

Example (``configs/text/banking77-5shot.yaml``)::

    kind: text
    name: banking77-5shot
    data: {dataset: banking77, shots: 5}
    meta_train: {sources: [clinc150, hwu64], steps: 200}
    finetune: {epochs: 8}
    classifier: {name: logistic, C: 10}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from ..config import _Strict, load_validated

__all__ = ["TextConfig", "load_text_config", "is_text_config", "SOURCE_NAMES"]

#: labelled intent data a model may be meta-trained on (never the target's test split)
SOURCE_NAMES = ("clinc150", "banking77", "hwu64")


class TextReference(_Strict):
    source: str
    metric: Literal["accuracy"] = "accuracy"
    value: float
    note: str | None = None


class TextData(_Strict):
    dataset: Literal["banking77", "clinc150", "hwu64", "file"] = "banking77"
    shots: Literal[5, 10] | None = 5           # fixed-split: which k-shot split (None: a file's every row)
    path: str | None = None                    # dataset: file -> a CSV/JSONL with text and label columns
    text_column: str = "text"
    label_column: str = "label"
    root: str | None = None                    # data folder (default: $QUICKSTUDY_DATA, ../shared/data)
    # episodes protocol: CLINC150 domains held out of meta-training (the others are the meta-training intents)
    held_out_domains: list[str] = Field(default_factory=lambda: ["travel", "utility", "work"])


class EncoderConfig(_Strict):
    name: str = "minilm"                       # the bundled all-MiniLM-L6-v2, or a local sentence-transformers folder
    max_length: int = Field(64, ge=4)          # tokens; longer texts are truncated


class MetaTrainConfig(_Strict):
    """Episodic meta-training on other labelled intent data: of the encoder (ProtoNet, Snell et al. 2017), or of an
    ANIL head on frozen embeddings (Raghu et al. 2020; episodes protocol, one head per way count)."""
    algorithm: Literal["protonet", "anil"] = "protonet"
    sources: list[Literal["clinc150", "banking77", "hwu64"]] = Field(default_factory=list)
    steps: int = Field(0, ge=0)                # 0: no meta-training
    ways: int = Field(32, ge=2)
    shots: int = Field(2, ge=1)
    queries: int = Field(2, ge=1)
    meta_batch: int = Field(1, ge=1)
    lr: float = Field(3e-5, gt=0)
    scale: float = Field(20.0, gt=0)           # logits = -scale * squared distance of unit embeddings
    train_last: int | None = Field(None, ge=0)  # transformer layers trained (None: all)
    per_intent: int | None = Field(None, ge=2)  # at most this many source texts per intent (a seeded subset)
    time_limit: float | None = Field(None, gt=0)  # minutes; stops early (checkpointed)


class FinetuneConfig(_Strict):
    """Contrastive fine-tuning on the k-shot set (quickstudy.text.finetune)."""
    epochs: int = Field(0, ge=0)               # 0: no fine-tuning
    lr: float = Field(1e-4, gt=0)
    head_lr: float = Field(1e-2, gt=0)
    batch_size: int = Field(32, ge=2)
    per_class: int = Field(2, ge=1)
    scale: float = Field(20.0, gt=0)
    supcon: float = Field(1.0, ge=0)
    temperature: float = Field(0.1, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    train_last: int | None = Field(None, ge=0)


class ClassifierConfig(_Strict):
    name: Literal["logistic", "prototypes", "head"] = "logistic"
    C: float = Field(10.0, gt=0)               # inverse L2 strength of the logistic regression


class OOSConfig(_Strict):
    """Out-of-scope rejection: predict 'oos' when the top probability is below a threshold chosen on validation."""
    enabled: bool = False
    threshold: float | None = Field(None, ge=0, le=1)  # fixed; None: chosen on validation data
    criterion: Literal["balanced", "f1"] = "balanced"


class EpisodesConfig(_Strict):
    target: Literal["clinc150-held-out", "banking77", "hwu64"] = "clinc150-held-out"
    ways: list[int] = Field(default_factory=lambda: [5, 10], min_length=1)
    shots: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)
    queries: int = Field(5, ge=1)
    episodes: int = Field(600, ge=1)
    seed: int = 1234


class TextConfig(_Strict):
    kind: Literal["text"] = "text"
    name: str = "text-experiment"
    description: str | None = None
    protocol: Literal["fixed-split", "episodes"] = "fixed-split"
    reference: TextReference | list[TextReference] | None = None
    seed: int = 0
    data: TextData = TextData()
    encoder: EncoderConfig = EncoderConfig()
    meta_train: MetaTrainConfig = MetaTrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    oos: OOSConfig = OOSConfig()
    episodes: EpisodesConfig = EpisodesConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "TextConfig":
        if self.data.dataset == "file" and not self.data.path:
            raise ValueError("data.path is needed with data.dataset: file")
        if self.meta_train.steps and not self.meta_train.sources and self.protocol == "fixed-split":
            raise ValueError("meta_train.sources must name the data to meta-train on (meta_train.steps > 0)")
        if self.data.dataset in self.meta_train.sources:
            raise ValueError(f"meta_train.sources must not hold the target data set {self.data.dataset!r}")
        if self.meta_train.algorithm == "anil" and self.protocol != "episodes":
            raise ValueError("meta_train.algorithm: anil (a head with N outputs) is for protocol: episodes")
        if self.oos.enabled and self.data.dataset not in ("clinc150", "file"):
            raise ValueError("oos.enabled needs out-of-scope validation data: data.dataset clinc150 (oos_val)")
        return self


def is_text_config(path: str | Path | None) -> bool:
    """Whether ``path`` is a text config (a YAML mapping with ``kind: text``) or a run folder holding one."""
    if path is None:
        return False
    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.is_file():
        return False
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(raw, dict) and raw.get("kind") == "text"


def load_text_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     raw: dict | None = None) -> tuple[TextConfig, dict]:
    """Read, override and validate; returns the config and the resolved raw dict (to write back)."""
    return load_validated(TextConfig, path, overrides, raw, default={"kind": "text"})
