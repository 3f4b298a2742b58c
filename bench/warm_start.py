"""Leave-one-data-set-out evaluation of the warm-start recommenders on the knowledge base.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.warm_start
    .venv/bin/python -m bench.warm_start --kb DIR --budgets 1,3,5,10 --out docs/automl

For every PMLB data set in the knowledge base (``bench/knowledge_base.py``), each recommender is fit
on the other data sets and its ranked list for the held-out one is scored by the best balanced
accuracy among its first 1, 3, 5, 10 configurations; random search is scored by its exact expectation
over all orders, the best default by the training data sets' average-rank order (see
``quickstudy.automl.evaluate``). Prints a markdown table (regret and average rank, mean ± 95% CI),
writes ``warm_start.json`` (summary plus every per-data-set number) and ``warm_start.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

from quickstudy.files import atomic_write_text  # noqa: E402
from quickstudy.automl.evaluate import (format_head_to_head, format_table, leave_one_out, plot_head_to_head,  # noqa: E402
                                        plot_results)
from quickstudy.automl.knowledge import load_knowledge_base  # noqa: E402
from quickstudy.automl.recommenders import RECOMMENDERS  # noqa: E402


GOAL_METHOD = "scenario-search"  # the recommender `quickstudy recommend` uses by default


def plot_goal(summary: dict, out: Path) -> None:
    """warm_start_goal.png: the default recommender against random search and the best default alone."""
    first = summary["by_budget"][str(summary["budgets"][0])]
    if "head_to_head" in first.get(GOAL_METHOD, {}):
        plot_head_to_head(summary, GOAL_METHOD, out / "warm_start_goal.png")


def resummarize(path: Path, out: Path) -> int:
    """Summary, table and plot again from a warm_start.json's per-data-set numbers."""
    import numpy as np

    from quickstudy.automl.evaluate import summarize

    payload = json.loads(path.read_text())
    per = payload["per_dataset"]
    names = list(per)
    budgets = payload["summary"]["budgets"]
    methods = [m for m in per[names[0]] if m not in ("oracle", "worst")]
    best = {m: np.array([per[d][m] for d in names]) for m in methods}
    oracle = np.array([per[d]["oracle"] for d in names])
    worst = np.array([per[d]["worst"] for d in names]) if "worst" in per[names[0]] else None
    payload["summary"] = summarize(best, oracle, budgets, worst=worst)
    table = format_table(payload["summary"]) + "\n\n" + format_head_to_head(payload["summary"])
    print(table)
    atomic_write_text(out / "warm_start.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(out / "warm_start.md", table + "\n")
    plot_results(payload["summary"], out / "warm_start.png")
    plot_goal(payload["summary"], out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", default=None, help="folder with scores.csv and metafeatures.csv (default: package data)")
    parser.add_argument("--budgets", default="1,3,5,10")
    parser.add_argument("--recommenders", default=",".join(RECOMMENDERS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "automl"))
    parser.add_argument("--from-json", default=None, metavar="PATH",
                        help="re-summarise a finished run's per-data-set numbers (no refitting)")
    args = parser.parse_args(argv)
    if args.from_json:
        return resummarize(Path(args.from_json), Path(args.out))

    kb = load_knowledge_base(args.kb)
    names = [n.strip() for n in args.recommenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECOMMENDERS]
    if unknown:
        parser.error(f"unknown recommenders {unknown}; expected some of {list(RECOMMENDERS)}")
    budgets = [int(b) for b in args.budgets.split(",")]
    start = time.perf_counter()
    result = leave_one_out(kb, {n: RECOMMENDERS[n] for n in names}, budgets=budgets)
    seconds = time.perf_counter() - start
    table = format_table(result.summary) + "\n\n" + format_head_to_head(result.summary)
    print(f"{len(kb.datasets)} data sets x {len(kb.configurations)} configurations, leave-one-data-set-out "
          f"({seconds:.0f} s)\n")
    print(table)
    out = Path(args.out)
    payload = {
        "command": "nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.warm_start " + " ".join(argv or sys.argv[1:]),
        "n_datasets": len(kb.datasets), "n_configurations": len(kb.configurations), "seconds": round(seconds, 1),
        "summary": result.summary,
        "per_dataset": {d: {"oracle": float(result.oracle[i]), "worst": float(result.worst[i]),
                            **{m: [float(v) for v in result.best[m][i]] for m in result.best}}
                        for i, d in enumerate(result.datasets)},
    }
    atomic_write_text(out / "warm_start.json", json.dumps(payload, indent=1) + "\n")
    atomic_write_text(out / "warm_start.md", table + "\n")
    plot_results(result.summary, out / "warm_start.png")
    plot_goal(result.summary, out)
    print(f"\nwrote {out / 'warm_start.json'}, warm_start.md, warm_start.png and warm_start_goal.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
