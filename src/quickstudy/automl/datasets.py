"""Tabular classification data sets: the PMLB collection and the user's own CSV files.

PMLB (Penn Machine Learning Benchmarks, Romano et al. 2021) is read from a local copy laid out as
``pmlb/datasets/NAME/NAME.tsv.gz`` (tab-separated, last column ``target``); it is found like every
quickstudy data set (see :mod:`quickstudy.data.paths`): the ``root`` argument, ``$QUICKSTUDY_DATA``,
then ``shared/data/pmlb`` beside an ancestor of the package or the working directory. It is never
downloaded or copied.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.paths import search_dirs

__all__ = ["pmlb_root", "pmlb_names", "load_pmlb", "load_table", "prepare_classification"]


def pmlb_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding ``datasets/NAME/NAME.tsv.gz``; a ``FileNotFoundError`` lists where it looked."""
    places = search_dirs("pmlb", root)
    for _, folder in places:
        if (folder / "datasets").is_dir():
            return folder
    looked = "\n  ".join(f"{label}: {path}" for label, path in places)
    raise FileNotFoundError("PMLB data not found (a folder with datasets/NAME/NAME.tsv.gz); pass --data-root, "
                            f"set $QUICKSTUDY_DATA, or put it at ../shared/data/pmlb. Looked in:\n  {looked}")


def pmlb_names(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the data sets in the PMLB folder."""
    base = pmlb_root(root) / "datasets"
    return sorted(p.name for p in base.iterdir() if (p / f"{p.name}.tsv.gz").is_file())


def load_table(path: str | os.PathLike, target: str, sep: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X, y, feature_names)`` from a CSV/TSV (optionally gzipped). Non-numeric feature columns are
    one-hot encoded (pandas ``get_dummies``); ``y`` is returned as label strings."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if sep is None:
        sep = "\t" if ".tsv" in path.name else ","
    try:
        frame = pd.read_csv(path, sep=sep)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable {'TSV' if sep == chr(9) else 'CSV'} table: {error}") from None
    if target not in frame.columns:
        raise ValueError(f"{path}: no column {target!r}; columns are {', '.join(map(str, frame.columns[:20]))}")
    missing = frame[target].isna().to_numpy().nonzero()[0]
    if missing.size:  # a label cannot be guessed; sorting labels with NaN among strings also fails downstream
        rows = ", ".join(str(i + 1) for i in missing[:5]) + (" ..." if missing.size > 5 else "")
        raise ValueError(f"{path}: the target column {target!r} has {missing.size} missing value(s), in data row(s) "
                         f"{rows} (counting from 1 after the header); drop or fill those rows")
    y = frame.pop(target).astype(str).to_numpy()
    categorical = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if categorical:
        frame = pd.get_dummies(frame, columns=categorical, dummy_na=False, dtype=float)
    if frame.shape[1] == 0:
        raise ValueError(f"{path}: no feature columns besides the target {target!r}")
    return frame.to_numpy(dtype=float), y, [str(c) for c in frame.columns]


def load_pmlb(name: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X, y, feature_names)`` of the PMLB data set ``name``."""
    path = pmlb_root(root) / "datasets" / name / f"{name}.tsv.gz"
    if not path.is_file():
        raise FileNotFoundError(f"PMLB data set {name!r} not found at {path}")
    return load_table(path, target="target", sep="\t")


def prepare_classification(X: np.ndarray, y: np.ndarray, max_rows: int | None = None, min_per_class: int = 3,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Encode labels as 0..C-1, drop classes with fewer than ``min_per_class`` rows (they cannot be
    stratified over the CV folds) and take a stratified subsample of at most ``max_rows`` rows."""
    labels, y_int = np.unique(np.asarray(y), return_inverse=True)
    if max_rows is not None and len(y_int) > max_rows:
        from sklearn.model_selection import StratifiedShuffleSplit

        counts = np.bincount(y_int)
        keep_cls = counts >= 2  # StratifiedShuffleSplit needs two of each class
        rows = np.flatnonzero(keep_cls[y_int])
        split = StratifiedShuffleSplit(n_splits=1, train_size=max_rows, random_state=seed)
        chosen, _ = next(split.split(X[rows], y_int[rows]))
        X, y_int = X[rows][np.sort(chosen)], y_int[rows][np.sort(chosen)]
    counts = np.bincount(y_int)
    keep = counts[y_int] >= min_per_class
    X, y_int = X[keep], y_int[keep]
    _, y_int = np.unique(y_int, return_inverse=True)
    if len(np.unique(y_int)) < 2:
        raise ValueError(f"fewer than two classes with at least {min_per_class} rows each")
    return X, y_int
