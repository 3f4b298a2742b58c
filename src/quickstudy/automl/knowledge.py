"""The knowledge base: portfolio scores per data set and the data sets' meta-features.

Two CSV files shipped as package data (``quickstudy/automl/data/``), made by
``bench/knowledge_base.py`` (its docstring gives the protocol and the exact command):

* ``scores.csv``: one row per PMLB data set, one column per portfolio configuration
  (:mod:`quickstudy.automl.portfolio`), mean 3-fold CV balanced accuracy; empty where a configuration
  failed or ran over its time limit;
* ``metafeatures.csv``: one row per data set, one column per pymfe meta-feature (empty where a
  measure was skipped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DATA_DIR", "KnowledgeBase", "load_knowledge_base"]

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass
class KnowledgeBase:
    """``scores[d, c]`` (NaN = missing), ``metafeatures[d, f]`` (NaN = skipped) with their labels."""

    datasets: list[str]
    configurations: list[str]
    scores: np.ndarray
    feature_names: list[str]
    metafeatures: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.shape != (len(self.datasets), len(self.configurations)):
            raise ValueError(f"scores have shape {self.scores.shape}, expected "
                             f"({len(self.datasets)}, {len(self.configurations)})")
        if self.metafeatures.shape != (len(self.datasets), len(self.feature_names)):
            raise ValueError(f"meta-features have shape {self.metafeatures.shape}, expected "
                             f"({len(self.datasets)}, {len(self.feature_names)})")

    def filled_scores(self) -> np.ndarray:
        """Scores with a missing cell (a failed or timed-out configuration) set to its data set's worst score:
        a configuration that cannot run is as bad as the worst one that can."""
        filled = self.scores.copy()
        worst = np.nanmin(np.where(np.isnan(filled), np.inf, filled), axis=1, keepdims=True)
        return np.where(np.isnan(filled), np.broadcast_to(worst, filled.shape), filled)

    def subset(self, rows) -> "KnowledgeBase":
        rows = np.asarray(rows)
        return KnowledgeBase([self.datasets[i] for i in rows], list(self.configurations), self.scores[rows],
                             list(self.feature_names), self.metafeatures[rows])


def load_knowledge_base(folder: str | os.PathLike | None = None) -> KnowledgeBase:
    """Read ``scores.csv`` and ``metafeatures.csv`` (default: the package data); data sets present in both."""
    import pandas as pd

    folder = Path(folder) if folder is not None else DATA_DIR
    paths = [folder / "scores.csv", folder / "metafeatures.csv"]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"knowledge base file {path} is missing; build it with "
                                    "`python bench/knowledge_base.py` (see its docstring)")
    scores = pd.read_csv(paths[0], index_col="dataset")
    mf = pd.read_csv(paths[1], index_col="dataset")
    common = [d for d in scores.index if d in mf.index]
    if not common:
        raise ValueError(f"{folder}: scores.csv and metafeatures.csv share no data set")
    scores, mf = scores.loc[common], mf.loc[common]
    return KnowledgeBase(list(common), [str(c) for c in scores.columns], scores.to_numpy(dtype=float),
                         [str(c) for c in mf.columns], mf.to_numpy(dtype=float))
