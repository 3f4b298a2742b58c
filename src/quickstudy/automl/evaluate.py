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
           "format_table", "format_head_to_head", "plot_results", "plot_head_to_head", "DEFAULT_BUDGETS"]

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
    """``best[method]``: [data sets, budgets] best score found; ``oracle`` and ``worst``: [data sets] best and
    worst score of the portfolio."""

    datasets: list[str]
    budgets: list[int]
    oracle: np.ndarray
    best: dict[str, np.ndarray]
    summary: dict = field(default_factory=dict)
    worst: np.ndarray | None = None


def _ranks(found: np.ndarray) -> np.ndarray:
    """Per row, rank of each column (1 = highest, ties averaged), on scores rounded so that a float-level
    difference between equal configurations is not a win."""
    from scipy.stats import rankdata

    return rankdata(-np.round(found, 10), axis=1)


def summarize(best: dict[str, np.ndarray], oracle: np.ndarray, budgets,
              baselines: tuple[str, ...] = ("random", "best-default"), worst: np.ndarray | None = None) -> dict:
    """Regret and rank (mean, 95% CI half-width) per method and budget, and paired comparisons with each
    of ``baselines`` present: mean regret difference (method - baseline) with its 95% CI and the
    Wilcoxon signed-rank p-value.

    With ``worst`` (each data set's worst portfolio score) also the *normalised* regret
    ``(oracle - found) / (oracle - worst)`` in [0, 1] (a data set where the portfolio spans 80 points
    weighs no more than one where it spans 5; the "distance to maximum" of Wistuba et al. 2016). When
    every baseline is present, each other method also gets ``head_to_head``: its rank among itself and
    the baselines alone (and theirs), so that adding a method to the table does not move it."""
    from scipy.stats import wilcoxon

    methods = list(best)
    oracle = np.asarray(oracle, dtype=float)
    span = None
    if worst is not None:
        span = oracle - np.asarray(worst, dtype=float)
        span = np.where(span > 0, span, 1.0)  # all configurations equal: every regret is 0 anyway
    out: dict = {"methods": methods, "budgets": list(budgets), "n_datasets": int(len(oracle)), "by_budget": {}}
    for j, n in enumerate(budgets):
        found = np.stack([best[m][:, j] for m in methods], axis=1)  # [datasets, methods]
        ranks = _ranks(found)
        row = {}
        for k, m in enumerate(methods):
            regret = oracle - found[:, k]
            entry = {"regret": mean_ci(regret), "rank": mean_ci(ranks[:, k]), "score": mean_ci(found[:, k]),
                     "vs": {}}
            if span is not None:
                entry["normalized_regret"] = mean_ci(regret / span)
            if m not in baselines and all(b in best for b in baselines):
                trio = _ranks(np.stack([found[:, k]] + [best[b][:, j] for b in baselines], axis=1))
                entry["head_to_head"] = {name: mean_ci(trio[:, i]) for i, name in enumerate((m,) + tuple(baselines))}
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
            # a search step is a look-up in the held-out row; sequential searches see the scores they asked for
            evaluated = factory().fit(train).run(kb.metafeatures[d], lambda c, row=scores[d]: row[c], max(budgets))
            order = [c for c, _ in evaluated]
            best[name][d] = [best_so_far(scores[d], order, n) for n in budgets]
    oracle = scores.max(1)
    result = WarmStartResult(list(kb.datasets), budgets, oracle, best, worst=scores.min(1))
    result.summary = summarize(best, oracle, budgets, worst=result.worst)
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


def _separated(lower_is_better: tuple[float, float], other: tuple[float, float]) -> bool:
    """True when the first CI lies wholly below the second (no overlap)."""
    return lower_is_better[0] + lower_is_better[1] < other[0] - other[1]


def format_head_to_head(summary: dict, baselines: tuple[str, ...] = ("random", "best-default")) -> str:
    """Markdown table: each warm-start method against the baselines alone -- rank among the three and
    normalised regret, each ± 95% CI; ``yes`` where the method's CI lies wholly below both baselines'."""
    lines = [f"| evaluations | method | rank: method | {' | '.join('rank: ' + b for b in baselines)} | separate? "
             f"| normalised regret: method | {' | '.join(baselines)} | separate? |",
             "|---:|---|" + "---:|" * (2 * len(baselines) + 2) + "---|---|"]
    for n, row in summary["by_budget"].items():
        for m, e in row.items():
            if "head_to_head" not in e:
                continue
            h = e["head_to_head"]
            rank_cells = " | ".join(f"{h[b][0]:.2f} ± {h[b][1]:.2f}" for b in baselines)
            rank_sep = all(_separated(h[m], h[b]) for b in baselines)
            cells = [f"| {n} | {m} | {h[m][0]:.2f} ± {h[m][1]:.2f} | {rank_cells} | {'yes' if rank_sep else 'no'}"]
            if "normalized_regret" in e:
                nr = {b: row[b]["normalized_regret"] for b in baselines}
                norm_sep = all(_separated(e["normalized_regret"], nr[b]) for b in baselines)
                cells.append(f"{e['normalized_regret'][0]:.3f} ± {e['normalized_regret'][1]:.3f} | "
                             + " | ".join(f"{nr[b][0]:.3f} ± {nr[b][1]:.3f}" for b in baselines)
                             + f" | {'yes' if norm_sep else 'no'} |")
            else:
                cells.append(" | ".join(["-"] * (len(baselines) + 2)) + " |")
            lines.append(" | ".join(cells))
    return "\n".join(lines)


def plot_results(summary: dict, path, scale: float = 100.0):
    """Panels against the number of evaluations, 95% CI error bars: regret, normalised regret (when the
    summary has it) and average rank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._atomic import atomic_write

    budgets = [int(b) for b in summary["by_budget"]]
    first = summary["by_budget"][str(budgets[0])][summary["methods"][0]]
    panels = [("regret", scale, "regret (balanced accuracy points)",
               f"Regret, mean ± 95% CI over {summary['n_datasets']} data sets")]
    if "normalized_regret" in first:
        panels.append(("normalized_regret", 1.0, "regret / (best - worst of the portfolio)",
                       "Normalised regret ± 95% CI"))
    panels.append(("rank", 1.0, "average rank (1 = best)", "Average rank ± 95% CI"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for i, m in enumerate(summary["methods"]):
        offset = (i - (len(summary["methods"]) - 1) / 2) * 0.06
        for ax, (key, s, _, _) in zip(axes, panels):
            mean = [summary["by_budget"][str(b)][m][key][0] * s for b in budgets]
            half = [summary["by_budget"][str(b)][m][key][1] * s for b in budgets]
            ax.errorbar([b * (1 + offset) for b in budgets], mean, yerr=half, marker="o", capsize=3, label=m)
    for ax, (_, _, ylabel, title) in zip(axes, panels):
        ax.set(xscale="log", xlabel="evaluations", ylabel=ylabel, title=title)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path


def plot_head_to_head(summary: dict, method: str, path, baselines: tuple[str, ...] = ("random", "best-default"),
                      scale: float = 100.0):
    """The goal's view: ``method`` against the baselines alone -- rank among the three, regret and
    normalised regret, each mean ± 95% CI against the number of evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._atomic import atomic_write

    budgets = [int(b) for b in summary["by_budget"]]
    rows = [summary["by_budget"][str(b)] for b in budgets]
    if "head_to_head" not in rows[0].get(method, {}):
        raise ValueError(f"the summary has no head-to-head ranks for {method!r}")
    names = (method,) + tuple(baselines)
    panels = [("rank among the three (1 = best)", lambda r, m: r[method]["head_to_head"][m], 1.0),
              ("regret (balanced accuracy points)", lambda r, m: r[m]["regret"], scale)]
    if "normalized_regret" in rows[0][method]:
        panels.append(("normalised regret", lambda r, m: r[m]["normalized_regret"], 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8))
    for i, m in enumerate(names):
        offset = (i - 1) * 0.05
        for ax, (_, get, s) in zip(axes, panels):
            mean = [get(r, m)[0] * s for r in rows]
            half = [get(r, m)[1] * s for r in rows]
            ax.errorbar([b * (1 + offset) for b in budgets], mean, yerr=half, marker="o", capsize=3, label=m)
    for ax, (ylabel, _, _) in zip(axes, panels):
        ax.set(xscale="log", xlabel="evaluations", ylabel=ylabel)
        ax.set_xticks(budgets)
        ax.set_xticklabels([str(b) for b in budgets])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{method} against random search and the best default: mean ± 95% CI over "
                 f"{summary['n_datasets']} data sets")
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return path
