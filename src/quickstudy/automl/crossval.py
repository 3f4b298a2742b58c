"""Scoring one portfolio configuration on a data set: the knowledge base's protocol, reusable.

3-fold stratified cross-validation (shuffled, seed 0), mean balanced accuracy, with a wall-clock limit
per configuration. ``bench/knowledge_base.py`` built the shipped table with it, and a warm-started
search on a user's data set (``quickstudy recommend --evaluate N``) scores its configurations the same way,
so that the scores it sees are comparable with the knowledge base's.
"""

from __future__ import annotations

import signal
import threading
import time
import warnings

import numpy as np

from .portfolio import make_estimator

__all__ = ["cv_folds", "score_configuration"]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


def cv_folds(y: np.ndarray, n_splits: int = 3, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The knowledge base's folds: stratified, shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    return list(StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def score_configuration(config, X: np.ndarray, y: np.ndarray, folds, timeout: float | None = None
                        ) -> tuple[float | None, float, str | None]:
    """Mean balanced accuracy of ``config`` over ``folds``, the seconds taken and a note: ``None`` for the
    score with ``"timeout"`` (over ``timeout`` seconds; enforced with SIGALRM, so only on the main thread)
    or ``"error: ..."`` when the configuration cannot be fit -- a missing cell, not a crash."""
    from sklearn.metrics import balanced_accuracy_score

    start = time.perf_counter()
    scores = []
    use_alarm = timeout is not None and threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        for train, test in folds:
            model = make_estimator(config, n_features=X.shape[1], seed=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(X[train], y[train])
                scores.append(balanced_accuracy_score(y[test], model.predict(X[test])))
    except _Timeout:
        return None, time.perf_counter() - start, "timeout"
    except Exception as error:  # noqa: BLE001
        return None, time.perf_counter() - start, f"error: {error!r}"[:200]
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return float(np.mean(scores)), time.perf_counter() - start, None
