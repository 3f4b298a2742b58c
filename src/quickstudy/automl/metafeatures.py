"""Task meta-features: what a data set (or a few-shot episode) looks like, as a vector of numbers.

Tabular data sets use pymfe (Alcobaça et al. 2020, JMLR 21(111)) for its *general* (sizes, class
counts), *statistical* (correlations, skewness, ...), *info-theory* (entropies, mutual information)
and *landmarking* (accuracy of fast models such as 1-NN, naive Bayes, a decision stump) groups,
summarised over attributes by mean and standard deviation. Two guards keep a bad data set from
stalling a knowledge base run:

* a **time budget** per data set: each group runs in a forked child process with its share of the
  remaining budget and is abandoned (listed in ``skipped``) when it runs over;
* **graceful skipping**: non-finite values are dropped and listed; a group that raises is retried
  measure by measure and only the measures that fail are dropped.

Episode meta-features (:func:`episode_features`) describe a few-shot task from its support set
embeddings; see that function.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MetaFeatures", "DEFAULT_GROUPS", "extract_metafeatures", "episode_features", "EPISODE_FEATURES"]

DEFAULT_GROUPS: tuple[str, ...] = ("general", "statistical", "info-theory", "landmarking")


@dataclass
class MetaFeatures:
    """Meta-feature values by name, what was skipped (``measure`` or ``group:*reason``) and the time taken."""

    values: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _mfe(group: str, features, summary, seed: int):
    from pymfe.mfe import MFE

    return MFE(groups=[group], features=features, summary=list(summary), random_state=seed, num_cv_folds=3,
               suppress_warnings=True)


def _extract_group(X: np.ndarray, y: np.ndarray, group: str, summary, seed: int) -> tuple[dict, list]:
    """One pymfe group; on an exception, measure by measure. Returns (finite values, skipped names)."""
    import warnings

    values: dict[str, float] = {}
    skipped: list[str] = []

    def run(features) -> tuple[list, list]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mfe = _mfe(group, features, summary, seed)
            mfe.fit(X, y, suppress_warnings=True)
            return mfe.extract(suppress_warnings=True)

    try:
        results = [run("all")]
    except Exception:  # noqa: BLE001 - one bad measure must not cost the whole group
        from pymfe.mfe import MFE

        names = MFE.valid_metafeatures(groups=[group])
        results = []
        for name in names:
            try:
                results.append(run([name]))
            except Exception:  # noqa: BLE001
                skipped.append(name)
    for names, vals in results:
        for name, value in zip(names, vals):
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if math.isfinite(number):
                values[name] = number
            else:
                skipped.append(name)
    return values, skipped


def _child(conn, X, y, group, summary, seed) -> None:
    try:
        conn.send(("ok", _extract_group(X, y, group, summary, seed)))
    except BaseException as error:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", repr(error)))
    finally:
        conn.close()


def _run_with_timeout(X, y, group, summary, seed, timeout: float) -> tuple[dict, list]:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child, X, y, group, summary, seed), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(max(0.0, timeout)):
            return {}, [f"{group}:*timeout"]
        status, payload = parent.recv()
    except EOFError:  # the child died (e.g. out of memory)
        return {}, [f"{group}:*crashed"]
    finally:
        if process.is_alive():
            process.kill()
        process.join(1.0)
        parent.close()
    if status != "ok":
        return {}, [f"{group}:*error {payload}"]
    return payload


def extract_metafeatures(X: np.ndarray, y: np.ndarray, groups=DEFAULT_GROUPS, time_budget: float | None = 15.0,
                         max_rows: int | None = 500, summary=("mean", "sd"), seed: int = 0) -> MetaFeatures:
    """pymfe meta-features of a classification data set.

    ``time_budget`` (seconds, for the whole data set) is shared among the groups still to run: each
    gets ``remaining / groups_left``, so a fast group leaves time to the next ones; ``None`` runs every
    group in this process without a limit. Rows are subsampled (stratified, ``seed``) to ``max_rows``
    first; ``general`` counts (rows, attributes, classes) are of the subsample, so the full row count is
    added as ``nr_inst_full`` and ``log_nr_inst_full``.
    """
    import pymfe.mfe  # noqa: F401 - imported once here, inherited by the forked children (~2 s each otherwise)

    from .datasets import prepare_classification

    X = np.asarray(X, dtype=float)
    n_full = len(X)
    X, y = prepare_classification(X, np.asarray(y), max_rows=max_rows, min_per_class=2, seed=seed)
    start = time.perf_counter()
    result = MetaFeatures(values={"nr_inst_full": float(n_full), "log_nr_inst_full": math.log(n_full)})
    groups = list(groups)
    for i, group in enumerate(groups):
        if time_budget is None:
            values, skipped = _extract_group(X, y, group, summary, seed)
        else:
            remaining = time_budget - (time.perf_counter() - start)
            share = remaining / (len(groups) - i)
            if share <= 0.05:
                values, skipped = {}, [f"{group}:*no time left"]
            else:
                values, skipped = _run_with_timeout(X, y, group, summary, seed, share)
        result.values.update(values)
        result.skipped.extend(skipped)
    result.seconds = time.perf_counter() - start
    return result


EPISODE_FEATURES: tuple[str, ...] = (
    "ways", "shots", "dim_log", "within_class_var", "between_class_var", "fisher_ratio",
    "proto_dist_mean", "proto_dist_min", "proto_cos_mean", "nn_margin", "loo_proto_acc",
    "effective_rank", "norm_mean", "norm_cv",
)


def episode_features(support_embeddings, support_labels) -> dict[str, float]:
    """A few-shot task's representation from its support set embeddings ``[N*K, D]`` and labels ``[N*K]``.

    With class means (prototypes) ``c_k``, overall mean ``m`` and embeddings ``z_i`` of class ``y_i``:

    * ``within_class_var`` = mean_i ||z_i - c_{y_i}||^2, ``between_class_var`` = mean_k ||c_k - m||^2 and
      their ratio ``fisher_ratio`` (how separable the task is in this embedding);
    * ``proto_dist_mean`` / ``proto_dist_min``: mean and smallest distance between prototypes, divided by
      the mean embedding norm; ``proto_cos_mean``: mean cosine similarity between prototypes;
    * ``loo_proto_acc``: leave-one-out nearest-prototype accuracy on the support set (for 1-shot, the
      nearest-neighbour margin is the only signal) and ``nn_margin``: mean over support points of
      (distance to the nearest other-class point - distance to the nearest same-class point) / norm;
    * ``effective_rank``: exp(entropy of the normalised singular values) of the centred embeddings;
    * ``norm_mean`` and its coefficient of variation ``norm_cv``; plus ``ways``, ``shots``, ``log(D)``.

    All are scale-free or scale-normalised, so episodes from different backbones are comparable after
    standardising; they are cheap (one [N*K, N*K] distance matrix) and differentiable-free (numpy).
    Use them like tabular meta-features: a kNN over past episodes to pick the meta-trained model or
    the inner-loop hyperparameters that did best on the most similar tasks.
    """
    z = np.asarray(getattr(support_embeddings, "detach", lambda: support_embeddings)(), dtype=np.float64)
    labels = np.asarray(getattr(support_labels, "detach", lambda: support_labels)()).astype(int).reshape(-1)
    if z.ndim != 2 or len(z) != len(labels):
        raise ValueError(f"support embeddings must be [N*K, D] with one label each; got shape {z.shape} "
                         f"and {len(labels)} labels")
    classes = np.unique(labels)
    if len(classes) < 2:
        raise ValueError("an episode needs at least two classes to describe")
    protos = np.stack([z[labels == c].mean(0) for c in classes])
    index = np.searchsorted(classes, labels)
    norms = np.linalg.norm(z, axis=1)
    scale = float(norms.mean()) + 1e-12
    within = float(((z - protos[index]) ** 2).sum(1).mean())
    between = float(((protos - protos.mean(0)) ** 2).sum(1).mean())
    pd_ = np.linalg.norm(protos[:, None] - protos[None], axis=-1)
    off = ~np.eye(len(classes), dtype=bool)
    unit = protos / (np.linalg.norm(protos, axis=1, keepdims=True) + 1e-12)
    cos = (unit @ unit.T)[off]
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    same = labels[:, None] == labels[None]
    d_same = np.where(same, d, np.inf).min(1)
    d_other = np.where(~same, d, np.inf).min(1)
    margin = np.where(np.isfinite(d_same), d_other - d_same, d_other)
    correct = 0  # leave-one-out nearest prototype (a 1-shot point's own class falls back to nearest neighbour)
    for i in range(len(z)):
        own = labels == labels[i]
        counts = own.sum()
        dists = np.linalg.norm(protos - z[i], axis=1)
        k = index[i]
        if counts > 1:
            dists[k] = np.linalg.norm((protos[k] * counts - z[i]) / (counts - 1) - z[i])
        else:
            dists[k] = d_same[i] if np.isfinite(d_same[i]) else np.inf
        correct += int(np.argmin(dists) == k)
    singular = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = singular / (singular.sum() + 1e-12)
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    counts = np.bincount(index)
    return {
        "ways": float(len(classes)),
        "shots": float(counts.mean()),
        "dim_log": math.log(z.shape[1]),
        "within_class_var": within / scale**2,
        "between_class_var": between / scale**2,
        "fisher_ratio": between / (within + 1e-12),
        "proto_dist_mean": float(pd_[off].mean()) / scale,
        "proto_dist_min": float(pd_[off].min()) / scale,
        "proto_cos_mean": float(cos.mean()),
        "nn_margin": float(margin.mean()) / scale,
        "loo_proto_acc": correct / len(z),
        "effective_rank": math.exp(entropy),
        "norm_mean": scale,
        "norm_cv": float(norms.std() / scale),
    }
