"""A tiny ratings data set for the users tests: low-rank ratings on 0..10, one user arriving per day."""

from pathlib import Path

import numpy as np

GENRES = ("Comedy", "Drama", "Horror", "Sci-Fi")
DAY = 86400
START = 1_362_000_000  # 2013-02-27


def write_toy(folder: Path, users: int = 48, items: int = 30, seed: int = 0) -> tuple[Path, Path]:
    """``(ratings.csv, items.csv)``: user ``u`` arrives on day u and rates 6-20 items an hour apart."""
    rng = np.random.default_rng(seed)
    taste, profile = rng.normal(size=(users, 2)), rng.normal(size=(items, 2))
    user_bias, item_bias = rng.normal(0, 1, users), rng.normal(0, 1, items)
    lines = ["user,item,rating,timestamp"]
    for u in range(users):
        count = int(rng.integers(6, 21))
        for j, i in enumerate(rng.choice(items, size=count, replace=False)):
            value = 6.5 + user_bias[u] + item_bias[i] + taste[u] @ profile[i] + rng.normal(0, 0.3)
            rating = int(np.clip(np.rint(value), 0, 10))
            lines.append(f"u{u},{i:07d},{rating},{START + u * DAY + j * 3600}")
    folder.mkdir(parents=True, exist_ok=True)
    ratings = folder / "ratings.csv"
    ratings.write_text("\n".join(lines) + "\n")
    rows = ["item,title,genres,year"]
    for i in range(items):
        genres = "|".join(g for k, g in enumerate(GENRES) if (i >> k) & 1)
        rows.append(f'{i:07d},"Movie {i}, the sequel",{genres},{1950 + 2 * i}')
    catalogue = folder / "items.csv"
    catalogue.write_text("\n".join(rows) + "\n")
    return ratings, catalogue


def toy_config(ratings: Path, catalogue: Path, **sections) -> dict:
    """A ``kind: users`` config on the toy files that trains in a second."""
    config = {
        "kind": "users", "name": "toy", "label": "melu", "seed": 0,
        "data": {"source": "files", "ratings": str(ratings), "items": str(catalogue)},
        "split": {"kind": "random", "min_ratings": 12, "val_fraction": 0.2, "test_fraction": 0.3, "seed": 0},
        "task": {"shots": [3, 5], "queries": 4, "meta_batch": 4},
        "model": {"name": "melu", "embedding_dim": 4, "hidden": [8]},
        "algorithm": {"name": "anil", "head": "decision", "inner_lr": 0.05, "inner_steps": 1},
        "train": {"steps": 6, "lr": 0.01, "val_every": 3, "checkpoint_every": 3, "log_every": 1},
        "eval": {"shots": [3, 5], "baselines": ["global", "item", "user", "mf", "knn"]},
        "baselines": {"mf": {"factors": 2, "iterations": 3}},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config
