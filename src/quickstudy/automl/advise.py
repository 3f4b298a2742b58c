"""``quickstudy recommend``: meta-features of the user's table, then the portfolio ranked for it."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

__all__ = ["recommend_for_file", "recommend_for_arrays", "warm_started_search", "format_recommendation",
           "SUMMARY_FEATURES"]

#: the meta-features shown in the human-readable summary (when present)
SUMMARY_FEATURES: tuple[str, ...] = (
    "nr_inst", "nr_attr", "nr_class", "nr_inst_full", "class_ent", "freq_class.mean", "attr_ent.mean",
    "mut_inf.mean", "cor.mean", "skewness.mean", "one_nn.mean", "naive_bayes.mean", "best_node.mean",
    "linear_discr.mean",
)


def warm_started_search(recommender, meta: np.ndarray, X: np.ndarray, y: np.ndarray, budget: int,
                        configurations: list[str], timeout: float | None = 120.0, max_rows: int | None = 1000,
                        progress: bool = True) -> dict[str, Any]:
    """Run ``recommender``'s search on ``(X, y)`` for ``budget`` evaluations, each configuration scored like
    the knowledge base (3-fold stratified CV balanced accuracy on at most ``max_rows`` rows). A sequential
    recommender (``scenario-search``) chooses each next configuration from the scores so far; a static one
    evaluates its list in order. A configuration that fails or runs over ``timeout`` seconds counts as
    the worst score seen so far (0 if it is the first), as missing cells do in the knowledge base."""
    from tqdm import tqdm

    from .crossval import cv_folds, score_configuration
    from .datasets import prepare_classification
    from .portfolio import get_configuration

    if budget < 1:
        raise ValueError(f"--evaluate must be at least 1, got {budget}")
    budget = min(budget, len(configurations))
    X_used, y_used = prepare_classification(np.asarray(X, dtype=float), y, max_rows=max_rows, min_per_class=3, seed=0)
    folds = cv_folds(y_used)
    trials: list[dict[str, Any]] = []
    bar = tqdm(total=budget, desc="warm-started search", disable=not progress)

    def evaluate(index: int) -> float:
        config = get_configuration(configurations[index])
        score, seconds, note = score_configuration(config, X_used, y_used, folds, timeout)
        seen = [t["balanced_accuracy"] for t in trials if t["balanced_accuracy"] is not None]
        trials.append({"step": len(trials) + 1, "configuration": config.name, "balanced_accuracy": score,
                       "seconds": round(seconds, 2), **({"note": note} if note else {})})
        bar.update(1)
        return score if score is not None else min(seen, default=0.0)

    try:
        recommender.run(meta, evaluate, budget)
    finally:
        bar.close()
    scored = [t for t in trials if t["balanced_accuracy"] is not None]
    best = max(scored, key=lambda t: t["balanced_accuracy"], default=None)
    return {"budget": budget, "rows_used": int(len(y_used)), "protocol": "3-fold stratified CV (shuffled, seed 0), "
            "balanced accuracy", "trials": trials, "best": best}


def recommend_for_arrays(X: np.ndarray, y: np.ndarray, top: int = 5, method: str = "scenario-search",
                         time_budget: float | None = 15.0, knowledge_base: str | os.PathLike | None = None,
                         neighbours: int = 5, evaluate: int = 0, progress: bool = False) -> dict[str, Any]:
    """Meta-features of ``(X, y)`` and the ``top`` configurations of the portfolio with predicted scores;
    with ``evaluate = n`` also a warm-started search of ``n`` configurations on ``(X, y)``
    (:func:`warm_started_search`)."""
    from .knowledge import load_knowledge_base
    from .metafeatures import extract_metafeatures
    from .portfolio import get_configuration
    from .recommenders import make_recommender

    if top < 1:
        raise ValueError(f"--top must be at least 1, got {top}")
    kb = load_knowledge_base(knowledge_base)
    mf = extract_metafeatures(X, y, time_budget=time_budget, max_rows=500, seed=0)
    vector = np.array([mf.values.get(name, math.nan) for name in kb.feature_names], dtype=float)
    coverage = float(np.isfinite(vector).mean())
    recommender = make_recommender(method).fit(kb)
    ranked = recommender.rank(vector)[:top]
    near, dist = recommender.neighbours(vector, min(neighbours, len(kb.datasets)))
    rows = []
    for i, (index, predicted) in enumerate(ranked, start=1):
        config = get_configuration(kb.configurations[index])
        rows.append({"rank": i, "configuration": config.name, "family": config.family, "params": config.params,
                     "predicted_balanced_accuracy": round(float(predicted), 4)})
    result: dict[str, Any] = {
        "rows": int(len(X)), "features": int(np.asarray(X).shape[1]), "classes": int(len(np.unique(y))),
        "method": method,
        "metafeatures": {"count": len(mf.values), "seconds": round(mf.seconds, 2), "skipped": mf.skipped,
                         "knowledge_base_coverage": round(coverage, 3),
                         "summary": {k: mf.values[k] for k in SUMMARY_FEATURES if k in mf.values},
                         "values": mf.values},
        "knowledge_base": {"datasets": len(kb.datasets), "configurations": len(kb.configurations)},
        "nearest_datasets": [{"dataset": kb.datasets[i], "distance": round(float(d), 4)} for i, d in zip(near, dist)],
        "recommendations": rows,
    }
    if evaluate:
        result["search"] = warm_started_search(recommender, vector, X, y, evaluate, kb.configurations,
                                               progress=progress)
    if coverage < 0.5:
        result["warning"] = (f"only {coverage:.0%} of the knowledge base's meta-features could be computed "
                             "(raise --mfe-budget?); recommendations lean on the training medians")
    return result


def recommend_for_file(path: str | os.PathLike, target: str, top: int = 5, method: str = "scenario-search",
                       time_budget: float | None = 15.0, knowledge_base: str | os.PathLike | None = None,
                       sep: str | None = None, evaluate: int = 0, progress: bool = False) -> dict[str, Any]:
    """:func:`recommend_for_arrays` on a CSV/TSV file with a ``target`` column."""
    from .datasets import load_table

    X, y, _ = load_table(path, target=target, sep=sep)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{path}: the target column {target!r} has fewer than two classes")
    result = recommend_for_arrays(X, y, top=top, method=method, time_budget=time_budget, knowledge_base=knowledge_base,
                                  evaluate=evaluate, progress=progress)
    return {"data": str(path), "target": target, **result}


def format_recommendation(result: dict[str, Any]) -> str:
    """A short human-readable report of :func:`recommend_for_file`'s result."""
    mf = result["metafeatures"]
    lines = [f"{result.get('data', 'data')}: {result['rows']} rows, {result['features']} features, "
             f"{result['classes']} classes",
             f"meta-features: {mf['count']} computed in {mf['seconds']:.1f} s, {len(mf['skipped'])} skipped, "
             f"{mf['knowledge_base_coverage']:.0%} of the knowledge base's"]
    for key, value in mf["summary"].items():
        lines.append(f"  {key:<20} {value:.4g}")
    near = ", ".join(f"{n['dataset']} ({n['distance']:.2f})" for n in result["nearest_datasets"])
    lines.append(f"nearest PMLB data sets: {near}")
    lines.append(f"top {len(result['recommendations'])} configurations ({result['method']}, predicted balanced accuracy):")
    width = max(len(r["configuration"]) for r in result["recommendations"])
    for r in result["recommendations"]:
        lines.append(f"  {r['rank']:>2}. {r['configuration']:<{width}}  {r['predicted_balanced_accuracy']:.3f}")
    if "search" in result:
        search = result["search"]
        lines.append(f"warm-started search, {search['budget']} evaluations ({search['protocol']}, "
                     f"{search['rows_used']} rows):")
        width = max(len(t["configuration"]) for t in search["trials"])
        running = None
        for t in search["trials"]:
            score = t["balanced_accuracy"]
            if score is not None and (running is None or score > running):
                running = score
            shown = f"{score:.3f}" if score is not None else t.get("note", "failed")[:40]
            so_far = f"  (best so far {running:.3f})" if running is not None else ""
            lines.append(f"  {t['step']:>2}. {t['configuration']:<{width}}  {shown}{so_far}")
        if search["best"] is not None:
            lines.append(f"best found: {search['best']['configuration']}  {search['best']['balanced_accuracy']:.3f}")
    if "warning" in result:
        lines.append(f"warning: {result['warning']}")
    return "\n".join(lines)
