"""Leave-one-data-set-out evaluation of warm-started search.

For each data set ``d`` of the knowledge base: fit every recommender on the *other* data sets, rank
the portfolio for ``d`` from ``d``'s meta-features, and read off the best score among the first ``n``
configurations of that order (``n`` in ``budgets``, e.g. 1, 3, 5, 10) from ``d``'s row of the table
(the evaluations were done once, in the knowledge base; a search step here is a table look-up).

Baselines: **random search**, scored by its exact expectation over all random orders (no sampling
noise): with the ``m`` scores of ``d`` sorted ascending ``s_(1) <= ... <= s_(m)``, the best of ``n``
configurations drawn without replacement is ``s_(i)`` with probability ``C(i-1, n-1) / C(m, n)``;
and the **best default** (:class:`~quickstudy.automl.recommend.AverageRankRecommender`: the order
by average rank on the training data sets, whose first entry is the single best default).

Per budget and method, over the data sets:

* **regret** = (best score of the portfolio on ``d``) - (best score found), in balanced-accuracy points;
* **rank** among the methods on ``d`` (1 = best, ties share the average rank);

each as a mean with a 95% confidence interval (Student t over data sets), plus paired comparisons
with random search and with the best default: the mean per-data-set regret difference with its 95%
CI and a Wilcoxon signed-rank test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .knowledge import KnowledgeBase

__all__ = ["expected_random_best", "best_so_far", "mean_ci", "WarmStartResult", "summarize", "leave_one_out",
           "format_table", "plot_results", "DEFAULT_BUDGETS"]

DEFAULT_BUDGETS: tuple[int, ...] = (1, 3, 5, 10)


def expected_random_best(scores: np.ndarray, n: int) -> float:
    """Expected best of ``n`` scores drawn without replacement from ``scores`` (exact, all orders equally likely)."""
    s = np.sort(np.asarray(scores, dtype=float))
    m = len(s)
    if not 1 <= n <= m:
        raise ValueError(f"budget n={n} must be between 1 and the number of configurations ({m})")
    # P(max is the i-th smallest, 1-based) = C(i-1, n-1) / C(m, n); computed in logs for stability
    i = np.arange(1, m + 1)
    valid = i >= n
    logp = np.full(m, -np.inf)
    iv = i[valid]
    log_choose = np.array([math.lgamma(k) - math.lgamma(n) - math.lgamma(k - n + 1) for k in iv])  # C(i-1, n-1)
    logp[valid] = log_choose - (math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1))
    return float((np.exp(logp) * s).sum())


def best_so_far(scores: np.ndarray, order, n: int) -> float:
    """Best score among the first ``n`` configurations of ``order`` (indices into ``scores``)."""
    order = list(order)
    if not 1 <= n <= len(order):
        raise ValueError(f"budget n={n} must be between 1 and the length of the order ({len(order)})")
    return float(np.max(np.asarray(scores)[order[:n]]))


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), 0.0
    half = t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


@dataclass
class WarmStartResult:
    """``best[method]``: [data sets, budgets] best score found; ``oracle``: [data sets] best of the portfolio."""

    datasets: list[str]
    budgets: list[int]
    oracle: np.ndarray
    best: dict[str, np.ndarray]
    summary: dict = field(default_factory=dict)


def summarize(best: dict[str, np.ndarray], oracle: np.ndarray, budgets,
              baselines: tuple[str, ...] = ("random", "best-default")) -> dict:
    """Regret and rank (mean, 95% CI half-width) per method and budget, and paired comparisons with each
    of ``baselines`` present: mean regret difference (method - baseline) with its 95% CI and the
    Wilcoxon signed-rank p-value."""
    from scipy.stats import rankdata, wilcoxon

    methods = list(best)
    oracle = np.asarray(oracle, dtype=float)
    out: dict = {"methods": methods, "budgets": list(budgets), "n_datasets": int(len(oracle)), "by_budget": {}}
    for j, n in enumerate(budgets):
        found = np.stack([best[m][:, j] for m in methods], axis=1)  # [datasets, methods]
        # ranks on rounded scores: a float-level difference between equal configurations is not a win
        ranks = rankdata(-np.round(found, 10), axis=1)
        row = {}
        for k, m in enumerate(methods):
            regret = oracle - found[:, k]
            entry = {"regret": mean_ci(regret), "rank": mean_ci(ranks[:, k]), "score": mean_ci(found[:, k]),
                     "vs": {}}
            for baseline in baselines:
                if m == baseline or baseline not in best:
                    continue
                diff = np.round(regret - (oracle - best[baseline][:, j]), 10)
                p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
                entry["vs"][baseline] = {"regret_diff": mean_ci(diff), "wilcoxon_p": p}
            row[m] = entry
        out["by_budget"][str(n)] = row
    return out


def leave_one_out(kb: KnowledgeBase, recommenders: dict, budgets=DEFAULT_BUDGETS, progress: bool = True,
                  include_random: bool = True) -> WarmStartResult:
    """Run the leave-one-data-set-out protocol; ``recommenders`` maps a name to a zero-argument factory."""
    from tqdm import tqdm

    budgets = list(budgets)
    scores = kb.filled_scores()
    n_d, n_c = scores.shape
    if n_d < 3:
        raise ValueError(f"leave-one-out needs at least 3 data sets, the knowledge base has {n_d}")
    if max(budgets) > n_c:
        raise ValueError(f"largest budget {max(budgets)} exceeds the {n_c} configurations")
    best = {name: np.zeros((n_d, len(budgets))) for name in recommenders}
    if include_random:
        best["random"] = np.array([[expected_random_best(scores[d], n) for n in budgets] for d in range(n_d)])
    for d in tqdm(range(n_d), desc="leave-one-out", disable=not progress):
        train = kb.subset([i for i in range(n_d) if i != d])
        for name, factory in recommenders.items():
            order = [c for c, _ in factory().fit(train).rank(kb.metafeatures[d])]
            best[name][d] = [best_so_far(scores[d], order, n) for n in budgets]
    oracle = scores.max(1)
    result = WarmStartResult(list(kb.datasets), budgets, oracle, best)
    result.summary = summarize(best, oracle, budgets)
    return result


def format_table(summary: dict, scale: float = 100.0) -> str:
    """Markdown table: per budget and method, regret (points) and average rank, each ± 95% CI, and the
    paired regret difference to random search and to the best default (± 95% CI, Wilcoxon p)."""
    lines = ["| evaluations | method | regret (bal. acc. points) | average rank | regret − random (p) "
             "| regret − best default (p) |", "|---:|---|---:|---:|---:|---:|"]

    def paired(e, baseline):
        if baseline not in e.get("vs", {}):
            return "-"
        d, p = e["vs"][baseline]["regret_diff"], e["vs"][baseline]["wilcoxon_p"]
        return f"{d[0] * scale:+.2f} ± {d[1] * scale:.2f} ({p:.1g})"

    for n, row in summary["by_budget"].items():
        for m, e in row.items():
            r, rk = e["regret"], e["rank"]
            lines.append(f"| {n} | {m} | {r[0] * scale:.2f} ± {r[1] * scale:.2f} | {rk[0]:.2f} ± {rk[1]:.2f} "
                         f"| {paired(e, 'random')} | {paired(e, 'best-default')} |")
    return "\n".join(lines)


def plot_results(summary: dict, path, scale: float = 100.0):
    """Two panels (regret, average rank) against the number of evaluations, 95% CI error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._atomic import atomic_write

    budgets = [int(b) for b in summary["by_budget"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, m in enumerate(summary["methods"]):
        for ax, key, s in ((axes[0], "regret", scale), (axes[1], "rank", 1.0)):
            mean = [summary["by_budget"][str(b)][m][key][0] * s for b in budgets]
            half = [summary["by_budget"][str(b)][m][key][1] * s for b in budgets]
            offset = (i - (len(summary["methods"]) - 1) / 2) * 0.08
            ax.errorbar([b * (1 + offset) for b in budgets], mean, yerr=half, marker="o", capsize=3, label=m)
    axes[0].set(xscale="log", xlabel="evaluations", ylabel="regret (balanced accuracy points)",
                title=f"Regret, mean ± 95% CI over {summary['n_datasets']} data sets")
    axes[1].set(xscale="log", xlabel="evaluations", ylabel="average rank (1 = best)", title="Average rank ± 95% CI")
    for ax in axes:
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path
