"""Choose the baselines' hyperparameters on the meta-VALIDATION users (never the test users).

    .venv/bin/python -m bench.users_baselines                       # both splits, K=5, MovieTweetings
    .venv/bin/python -m bench.users_baselines --quick               # a 2-point grid (smoke check)

For each split of configs/users/melu-movietweetings.yaml (random) and melu-movietweetings-time.yaml (time): fits
every grid point of `mf` and `knn` on the split's training ratings, scores it on the validation users at
K = --shots (support chosen as at test: random, or first by time), and prints mean MAE / nDCG@3 per point,
best first. The best point by validation MAE per split is what the configs' `baselines:` section holds.
Writes bench/out/users_baselines.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

from quickstudy.runs import machine_info
from quickstudy.users import build, kind
from quickstudy.users.baselines import ItemKNN, MatrixFactorization
from quickstudy.users.evaluation import score_methods

GRID = {
    "mf": {"factors": [8, 16, 32], "reg": [2.0, 5.0, 10.0], "fold_in_reg": [5.0, 20.0, 50.0]},
    "knn": {"shrink": [10.0, 50.0], "damping": [0.5, 1.0, 3.0], "user_shrink": [1.0, 3.0]},
}
QUICK = {"mf": {"factors": [8], "reg": [5.0], "fold_in_reg": [20.0]}, "knn": {"shrink": [10.0, 50.0]}}
CLASSES = {"mf": MatrixFactorization, "knn": ItemKNN}
CONFIGS = ["melu-movietweetings.yaml", "melu-movietweetings-time.yaml"]


def points(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "users_baselines.json"))
    args = parser.parse_args()
    grid = QUICK if args.quick else GRID
    results = {}
    for name in CONFIGS:
        config, _ = kind.load_config(os.path.join(ROOT, "configs", "users", name))
        data = build.load_data(config)
        train = data.training()
        episodes = build.episodes(config, data, "val", args.shots)
        rows = []
        for baseline, space in grid.items():
            for point in points(space):
                fitted = CLASSES[baseline](**point).fit(train)
                values = score_methods({baseline: fitted}, episodes, scale=config.data.scale)[baseline]
                rows.append({"baseline": baseline, "params": point, "val_mae": float(values["mae"].mean()),
                             "val_ndcg@3": float(values["ndcg@3"].mean())})
                print(f"{config.split.kind:>6} {baseline:<4} {point}: MAE {rows[-1]['val_mae']:.4f} "
                      f"nDCG@3 {rows[-1]['val_ndcg@3']:.4f}", flush=True)
        best = {b: min((r for r in rows if r["baseline"] == b), key=lambda r: r["val_mae"]) for b in grid}
        results[config.split.kind] = {"validation_users": len(episodes), "shots": args.shots, "rows": rows,
                                      "best": best}
        print(f"{config.split.kind} split, {len(episodes)} validation users: best "
              + "; ".join(f"{b} {r['params']} (MAE {r['val_mae']:.4f})" for b, r in best.items()))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"results": results, "machine": machine_info()}, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
