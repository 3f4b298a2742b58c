"""``quickstudy search`` and ``quickstudy recommend`` (heavy imports stay inside the commands)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_commands"]


def _print_json(payload: dict) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=float) + "\n")


def require_extra(command: str, *modules: str) -> None:
    """A clear error (not a traceback) when the optional 'automl' packages are not installed."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"{command} needs {', '.join(missing)}: pip install 'quickstudy[automl]' "
                         "(Optuna, scikit-learn, pandas, pymfe, psycopg)")


def _cmd_search(args: argparse.Namespace) -> int:
    require_extra("quickstudy search", "optuna")
    from .search import run_search

    timeout = args.timeout * 60 if args.timeout is not None else None
    summary = run_search(args.config, trials=args.trials, out=args.out, storage=args.storage, seed=args.seed,
                         overrides=list(args.overrides), timeout=timeout, progress=not (args.json or args.quiet),
                         heartbeat=args.heartbeat)
    if args.json:
        _print_json(summary)
        return 0
    states = ", ".join(f"{v} {k.lower()}" for k, v in summary["states"].items() if v)
    print(f"study {summary['study']}: {summary['trials']} trials ({states}); storage {summary['storage']}")
    if "best_value" in summary:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in summary["best_params"].items())
        print(f"best: trial {summary['best_trial']}, validation {summary['metric']} {summary['best_value']:.4f} "
              f"({params})")
        print(f"best config: {summary['best_config']}  (quickstudy train {summary['best_config']})")
    else:
        print(f"warning: {summary['warning']}", file=sys.stderr)
    print(f"plot: {summary['plot']}")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    require_extra("quickstudy recommend", "sklearn", "pandas", "pymfe")
    from .advise import recommend_for_file

    result = recommend_for_file(args.data, target=args.target, top=args.top, method=args.method,
                                time_budget=args.mfe_budget, knowledge_base=args.knowledge_base, sep=args.sep,
                                evaluate=args.evaluate, progress=not args.json)
    if args.json:
        _print_json(result)
        return 0
    from .advise import format_recommendation

    print(format_recommendation(result))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the external meta-learning subcommands on the main parser."""
    from .recommenders import RECOMMENDERS  # numpy only: the recommenders import scikit-learn when fit
    search = sub.add_parser(
        "search", help="search algorithms and hyperparameters of a meta-learner (Optuna TPE + pruning)",
        description="Samples the config's search: section with Optuna TPE, meta-trains each trial and scores it "
                    "on the fixed meta-validation episodes; trials falling behind at a validation are pruned. "
                    "Writes best.yaml (ready for quickstudy train), search.json and search.png into --out. "
                    "Several workers, on one or many machines, share one study through --storage (same URL, "
                    "same config, each its own --seed); see docs/distributed.md.")
    search.add_argument("config", help="experiment config with a search: section (see configs/search/)")
    search.add_argument("overrides", nargs="*", help="key.path=value overrides of the base config")
    search.add_argument("--trials", type=int, required=True,
                        help="trials this worker runs (0: only write best.yaml, search.json, search.png from the "
                             "study as it is)")
    search.add_argument("--storage", default=None, metavar="URL",
                        help="where the study lives, shared by workers: sqlite:///PATH (default OUT/study.db), "
                             "postgresql://USER@HOST/DB (workers on many machines), another SQLAlchemy "
                             "database URL, or journal:PATH (a file on a shared file system)")
    search.add_argument("--heartbeat", type=int, default=60, metavar="SEC",
                        help="database storages: a running trial's heartbeat interval; a trial silent for "
                             "2*SEC (its worker killed) is failed and run again once (default 60; 0: off)")
    search.add_argument("--out", default=None, help="output folder (default runs/search/<config name>)")
    search.add_argument("--seed", type=int, default=None, help="sampler seed (give each worker its own)")
    search.add_argument("--timeout", type=float, default=None, metavar="MIN", help="stop starting trials after MIN minutes")
    search.add_argument("--json", action="store_true", help="print one JSON object at the end")
    search.add_argument("--quiet", action="store_true", help="no progress bar")
    search.set_defaults(func=_cmd_search)

    recommend = sub.add_parser(
        "recommend", help="meta-features of a tabular data set and the configurations to try first",
        description="Computes pymfe meta-features of DATA (CSV/TSV, one row per example) and ranks the "
                    "scikit-learn portfolio by the knowledge base built on 131 PMLB data sets; prints the top-k "
                    "with predicted balanced accuracy. With --evaluate N it also searches: it cross-validates N "
                    "configurations on DATA, each chosen from the scores of the ones before.")
    recommend.add_argument("data", help="CSV (or .tsv / .gz) file with a header row")
    recommend.add_argument("--target", required=True, help="name of the label column")
    recommend.add_argument("--top", type=int, default=5, help="how many configurations to list (default 5)")
    recommend.add_argument("--method", default="scenario-search",
                           choices=sorted(RECOMMENDERS),
                           help="recommender (default scenario-search: the regret-portfolio list, and with "
                                "--evaluate a search that adapts to the scores it sees; see docs/automl.md)")
    recommend.add_argument("--evaluate", type=int, default=0, metavar="N",
                           help="also run a warm-started search: score N configurations on DATA by 3-fold CV "
                                "(balanced accuracy) and report the best (default 0: only recommend)")
    recommend.add_argument("--mfe-budget", type=float, default=15.0, metavar="SEC",
                           help="time budget for the meta-features (default 15 s)")
    recommend.add_argument("--knowledge-base", default=None, metavar="DIR",
                           help="folder with scores.csv and metafeatures.csv (default: the shipped one)")
    recommend.add_argument("--sep", default=None, help="column separator (default: tab for .tsv, else comma)")
    recommend.add_argument("--json", action="store_true", help="print one JSON object")
    recommend.set_defaults(func=_cmd_recommend)
