"""Build the warm-start knowledge base: every portfolio configuration on every PMLB classification data
set (3-fold stratified CV, balanced accuracy) plus pymfe meta-features. Long (34 min here on one shared
core), resumable, one data set at a time.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.knowledge_base      # all data sets
    .venv/bin/python -m bench.knowledge_base --limit 3                              # a smoke run
    .venv/bin/python -m bench.knowledge_base --assemble                             # tables from parts only
    nice -n 19 .venv/bin/python -m bench.knowledge_base --retry-timeouts 120       # re-score cells cut off

Per data set: labels encoded, classes with < 3 rows dropped, a stratified subsample of at most
``--max-rows`` (1,000) rows; each configuration (quickstudy.automl.portfolio, 39 of them) is scored
by 3-fold stratified CV (shuffled, seed 0) and abandoned after ``--fit-timeout`` seconds (recorded as
missing). Meta-features: pymfe general/statistical/info-theory/landmarking on <= 500 rows with a
``--mfe-budget`` (15 s) per data set.

Each finished data set is written atomically to ``bench/out/knowledge_base/parts/NAME.json`` and skipped
on the next run; at the end the parts are assembled into the package data the recommenders load:
``src/quickstudy/automl/data/scores.csv`` (data set x configuration -> mean CV balanced accuracy) and
``src/quickstudy/automl/data/metafeatures.csv``, plus ``docs/automl/fit_seconds.csv``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/sklearn load: one core, shared machine

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from quickstudy.files import atomic_write_text  # noqa: E402
from quickstudy.automl.crossval import cv_folds, score_configuration  # noqa: E402
from quickstudy.automl.datasets import load_pmlb, pmlb_names, pmlb_root, prepare_classification  # noqa: E402
from quickstudy.automl.knowledge import DATA_DIR  # noqa: E402
from quickstudy.automl.metafeatures import extract_metafeatures  # noqa: E402
from quickstudy.automl.portfolio import PORTFOLIO  # noqa: E402

PARTS = ROOT / "bench" / "out" / "knowledge_base" / "parts"
MFE_VERSION = 2  # 1: children re-imported pymfe inside the budget (parts with it get their meta-features redone)


def run_dataset(name: str, root, max_rows: int, fit_timeout: float, mfe_budget: float) -> dict:
    X_full, y_full, _ = load_pmlb(name, root)
    X, y = prepare_classification(X_full, y_full, max_rows=max_rows, min_per_class=3, seed=0)
    folds = cv_folds(y)
    results = {}
    for config in PORTFOLIO:
        score, seconds, note = score_configuration(config, X, y, folds, fit_timeout)
        results[config.name] = {"score": score, "seconds": round(seconds, 3), "note": note}
    mf = extract_metafeatures(X_full, y_full, time_budget=mfe_budget, max_rows=500, seed=0)
    return {
        "dataset": name,
        "n_rows": int(len(X_full)), "n_rows_used": int(len(X)), "n_features": int(X.shape[1]),
        "n_classes": int(len(set(y.tolist()))),
        "results": results,
        "metafeatures": mf.values, "mfe_skipped": mf.skipped, "mfe_seconds": round(mf.seconds, 2),
        "mfe_version": MFE_VERSION,
    }


def refresh_metafeatures(name: str, root, mfe_budget: float) -> None:
    """Recompute only the meta-features of a finished data set (kept scores), in place."""
    path = PARTS / f"{name}.json"
    part = json.loads(path.read_text())
    X_full, y_full, _ = load_pmlb(name, root)
    mf = extract_metafeatures(X_full, y_full, time_budget=mfe_budget, max_rows=500, seed=0)
    part.update(metafeatures=mf.values, mfe_skipped=mf.skipped, mfe_seconds=round(mf.seconds, 2),
                mfe_version=MFE_VERSION)
    atomic_write_text(path, json.dumps(part) + "\n")


def retry_timeouts(name: str, root, max_rows: int, timeout: float) -> int:
    """Re-score the cells of a finished data set that hit the per-configuration limit, with ``timeout``
    (on a busy shared machine a niced job gets a fraction of a core, so a fixed wall-clock limit cuts
    off slow-but-normal fits). Returns how many cells are still missing."""
    path = PARTS / f"{name}.json"
    part = json.loads(path.read_text())
    cells = [c for c in PORTFOLIO if part["results"][c.name]["note"] == "timeout"]
    if not cells:
        return 0
    X_full, y_full, _ = load_pmlb(name, root)
    X, y = prepare_classification(X_full, y_full, max_rows=max_rows, min_per_class=3, seed=0)
    folds = cv_folds(y)
    for config in cells:
        score, seconds, note = score_configuration(config, X, y, folds, timeout)
        part["results"][config.name] = {"score": score, "seconds": round(seconds, 3), "note": note,
                                        "retried": True}
    atomic_write_text(path, json.dumps(part) + "\n")
    return sum(part["results"][c.name]["score"] is None for c in cells)


def assemble(parts_dir: Path = PARTS, out_dir: Path = DATA_DIR) -> tuple[int, Path]:
    """Write scores.csv / metafeatures.csv (package data) and docs/automl/fit_seconds.csv from the parts."""
    import numpy as np
    import pandas as pd

    parts = [json.loads(p.read_text()) for p in sorted(parts_dir.glob("*.json"))]
    names = [c.name for c in PORTFOLIO]
    scores = pd.DataFrame({p["dataset"]: {n: p["results"][n]["score"] for n in names} for p in parts}).T
    scores = scores[names].sort_index()
    scores.index.name = "dataset"
    seconds = pd.DataFrame({p["dataset"]: {n: p["results"][n]["seconds"] for n in names} for p in parts}).T
    seconds = seconds[names].sort_index()
    seconds.index.name = "dataset"
    mf = pd.DataFrame({p["dataset"]: p["metafeatures"] for p in parts}).T.sort_index()
    mf = mf[sorted(mf.columns)]
    mf.index.name = "dataset"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "scores.csv", scores.to_csv(float_format="%.4f"))
    atomic_write_text(out_dir / "metafeatures.csv", mf.to_csv(float_format="%.6g"))
    atomic_write_text(ROOT / "docs" / "automl" / "fit_seconds.csv", seconds.to_csv(float_format="%.3f"))
    info = {
        "command": "nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python -m bench.knowledge_base",
        "datasets": len(parts), "configurations": len(names),
        "protocol": "3-fold stratified CV (shuffled, seed 0), balanced accuracy, <= 1000 rows (stratified "
                    "subsample), classes with < 3 rows dropped; pymfe general/statistical/info-theory/"
                    "landmarking (mean, sd) on <= 500 rows with a 15 s budget",
        "missing_cells": int(scores.isna().sum().sum()),
        "missing_by_configuration": {k: int(v) for k, v in scores.isna().sum().items() if v},
        "seconds_total": round(sum(p.get("seconds", 0.0) for p in parts), 1),
        "mfe_features_median": float(np.median([len(p["metafeatures"]) for p in parts])),
        "mfe_skipped": {p["dataset"]: p["mfe_skipped"] for p in parts if p["mfe_skipped"]},
    }
    atomic_write_text(ROOT / "docs" / "automl" / "knowledge_base.json", json.dumps(info, indent=1) + "\n")
    return len(parts), out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="PMLB folder (default: $QUICKSTUDY_DATA or ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N data sets (smoke runs)")
    parser.add_argument("--datasets", default=None, help="comma-separated names instead of all")
    parser.add_argument("--max-rows", type=int, default=1000)
    parser.add_argument("--fit-timeout", type=float, default=20.0, help="seconds per configuration (3 folds)")
    parser.add_argument("--mfe-budget", type=float, default=15.0, help="pymfe seconds per data set")
    parser.add_argument("--assemble", action="store_true", help="only assemble the tables from the parts")
    parser.add_argument("--retry-timeouts", type=float, default=None, metavar="SEC",
                        help="only re-score the timed-out cells of finished data sets with this limit")
    args = parser.parse_args(argv)

    if args.retry_timeouts is not None:
        from tqdm import tqdm

        root = pmlb_root(args.data_root)
        names = [p.stem for p in sorted(PARTS.glob("*.json"))
                 if any(r["note"] == "timeout" for r in json.loads(p.read_text())["results"].values())]
        left = 0
        for name in tqdm(names, desc="retry timeouts", unit="dataset", file=sys.stderr):
            left += retry_timeouts(name, root, args.max_rows, args.retry_timeouts)
        print(f"retried the timed-out cells of {len(names)} data sets; {left} still missing", file=sys.stderr)
    elif not args.assemble:
        from tqdm import tqdm

        root = pmlb_root(args.data_root)
        names = args.datasets.split(",") if args.datasets else pmlb_names(root)
        if args.limit is not None:
            names = names[: args.limit]
        PARTS.mkdir(parents=True, exist_ok=True)
        todo = [n for n in names if not (PARTS / f"{n}.json").is_file()]
        print(f"{len(names) - len(todo)} of {len(names)} data sets already done; {len(todo)} to go", file=sys.stderr)
        bar = tqdm(todo, desc="knowledge base", unit="dataset", file=sys.stderr)
        for name in bar:
            bar.set_postfix_str(name[:30])
            start = time.perf_counter()
            try:
                part = run_dataset(name, root, args.max_rows, args.fit_timeout, args.mfe_budget)
            except ValueError as error:  # e.g. fewer than two usable classes
                print(f"skipping {name}: {error}", file=sys.stderr)
                continue
            part["seconds"] = round(time.perf_counter() - start, 2)
            atomic_write_text(PARTS / f"{name}.json", json.dumps(part) + "\n")
            bar.write(f"{name}: {part['seconds']:.1f}s, best {max((r['score'] or 0) for r in part['results'].values()):.3f}, "
                      f"{len(part['metafeatures'])} meta-features ({part['mfe_seconds']:.1f}s, "
                      f"{len(part['mfe_skipped'])} skipped)", file=sys.stderr)
        stale = [n for n in names if (PARTS / f"{n}.json").is_file()
                 and json.loads((PARTS / f"{n}.json").read_text()).get("mfe_version") != MFE_VERSION]
        for name in tqdm(stale, desc="refresh meta-features", unit="dataset", file=sys.stderr):
            refresh_metafeatures(name, root, args.mfe_budget)
    count, out = assemble()
    print(f"assembled {count} data sets into {out}/scores.csv and metafeatures.csv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
