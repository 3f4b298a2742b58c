r"""Classifiers on unit sentence embeddings z, and the out-of-scope rule.

* ``prototypes`` — nearest class mean (Snell et al. 2017, with cosine similarity): p(c|z) = softmax_c(s * z.c_c),
  c_c the normalised mean of intent c's examples, s = ``scale``.
* ``logistic`` — multinomial logistic regression, L2-regularised with inverse strength C (scikit-learn's lbfgs):
  p(c|z) = softmax_c(w_c.z + b_c), minimising sum_i -log p(y_i|z_i) + ||W||^2 / (2C).
* ``head`` — the cosine head learned by contrastive fine-tuning: p(c|z) = softmax_c(s * z.w_c).

Out of scope (Larson et al. 2019): a text is rejected as ``oos`` when its top probability is below a threshold t;
:func:`choose_threshold` picks t on validation data holding both in-scope and out-of-scope texts.
Every classifier is a small dict of tensors (:meth:`EmbeddingClassifier.state`), saved with the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_number

__all__ = ["CLASSIFIERS", "EmbeddingClassifier", "fit_classifier", "choose_threshold", "oos_metrics"]

CLASSIFIERS = ("logistic", "prototypes", "head")


@dataclass
class EmbeddingClassifier:
    """``logits = scale * z @ weight.T + bias``; ``probabilities`` is their softmax."""

    weight: Tensor
    bias: Tensor
    scale: float = 1.0
    name: str = "logistic"

    def logits(self, z: Tensor) -> Tensor:
        return self.scale * z.float() @ self.weight.T + self.bias

    def probabilities(self, z: Tensor) -> Tensor:
        return self.logits(z).softmax(dim=1)

    def state(self) -> dict:
        return {"weight": self.weight, "bias": self.bias, "scale": float(self.scale), "name": self.name}

    @classmethod
    def from_state(cls, state: dict) -> "EmbeddingClassifier":
        return cls(state["weight"], state["bias"], float(state["scale"]), str(state["name"]))


def fit_classifier(name: str, z: Tensor, labels: Tensor | np.ndarray, ways: int | None = None, *, C: float = 10.0,
                   scale: float = 20.0, head: Tensor | None = None, seed: int = 0) -> EmbeddingClassifier:
    """Fit ``name`` (one of :data:`CLASSIFIERS`) on embeddings ``z [n, D]`` with labels ``0..ways-1``."""
    check_choice("fit_classifier", "name", name, CLASSIFIERS)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    ways = int(labels.max()) + 1 if ways is None else ways
    z = z.float()
    if name == "head":
        if head is None:
            raise ValueError("fit_classifier: name='head' needs the fine-tuned head (finetune.epochs > 0)")
        return EmbeddingClassifier(F.normalize(head.float(), dim=1), torch.zeros(ways), scale, "head")
    if name == "prototypes":
        means = torch.stack([z[labels == c].mean(0) for c in range(ways)])
        return EmbeddingClassifier(F.normalize(means, dim=1), torch.zeros(ways), scale, "prototypes")
    check_number("fit_classifier", "C", C)
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=3000, random_state=seed).fit(z.numpy(), labels.numpy())
    weight, bias = torch.from_numpy(model.coef_).float(), torch.from_numpy(model.intercept_).float()
    if ways == 2 and weight.shape[0] == 1:  # scikit-learn's binary form: one row for class 1
        weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
    return EmbeddingClassifier(weight, bias, 1.0, "logistic")


def oos_metrics(top_probability: Tensor, predicted: Tensor, labels: Tensor, threshold: float) -> dict[str, float]:
    """In-scope accuracy, out-of-scope recall and precision, with label ``-1`` meaning out of scope (Larson et al.).

    In-scope accuracy counts an in-scope text as right only if it is not rejected and its intent is right."""
    rejected = top_probability.double() < threshold
    is_oos = labels < 0
    in_scope = ~is_oos
    right = (~rejected) & (predicted == labels)
    accuracy = float(right[in_scope].float().mean()) if bool(in_scope.any()) else float("nan")
    recall = float(rejected[is_oos].float().mean()) if bool(is_oos.any()) else float("nan")
    precision = float(is_oos[rejected].float().mean()) if bool(rejected.any()) else float("nan")
    return {"in_scope_accuracy": accuracy, "oos_recall": recall, "oos_precision": precision,
            "threshold": float(threshold)}


def choose_threshold(top_probability: Tensor, predicted: Tensor, labels: Tensor, criterion: str = "balanced") -> float:
    """The threshold on validation data (labels ``-1`` = out of scope) maximising ``balanced`` = the mean of in-scope
    accuracy and out-of-scope recall, or ``f1`` = the out-of-scope F1. Candidates lie halfway between neighbouring
    top probabilities (and below / above them all); ties go to the lowest threshold."""
    check_choice("choose_threshold", "criterion", criterion, ("balanced", "f1"))
    if not bool((labels < 0).any()) or not bool((labels >= 0).any()):
        raise ValueError("choose_threshold: the validation data needs both in-scope and out-of-scope texts")
    top = top_probability.double()
    values = torch.unique(top)  # sorted; a threshold between two neighbours, below all or above all
    candidates = torch.cat([values[:1] / 2, (values[1:] + values[:-1]) / 2, (values[-1:] + 1) / 2]).tolist()
    best, best_score = 0.0, -1.0
    for t in candidates:
        m = oos_metrics(top, predicted, labels, t)
        if criterion == "balanced":
            score = (m["in_scope_accuracy"] + m["oos_recall"]) / 2
        else:
            p, r = m["oos_precision"], m["oos_recall"]
            score = 0.0 if not (p == p) or p + r == 0 else 2 * p * r / (p + r)
        if score > best_score + 1e-12:
            best, best_score = t, score
    return float(best)
