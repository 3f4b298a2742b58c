"""Time to adapt to one new user and rank every movie they have not rated, on one CPU thread (goal: < 100 ms at K=10).

    .venv/bin/python -m bench.users_latency                       # every configs/users/*-movietweetings.yaml, untrained
    .venv/bin/python -m bench.users_latency --runs runs/users/*   # trained runs (same cost: it does not depend on weights)
    .venv/bin/python -m bench.users_latency --quick               # smoke check: 3 users, 1 config

For each method: the first K = --shots ratings of --users test users (MovieTweetings, random split) are the
support set; one timed call does what `quickstudy users recommend` does after loading the run: build the x rows
of all 10,506 movies, adapt the meta-learner (its eval inner steps), predict every movie, drop the rated ones,
take the top 10. Prints the median and 90th percentile wall-clock ms and the median CPU ms of the process (the
wall time on a shared machine includes other processes' turns on the core), and writes bench/out/users_latency.json with the
machine (and load average, since the machine may be shared).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import numpy as np
import torch

from quickstudy.runs import machine_info
from quickstudy.users import build, kind
from quickstudy.users.recommend import Recommender


class _Untrained(Recommender):
    """A Recommender over a freshly built learner (latency does not depend on the weights)."""

    def __init__(self, config, data) -> None:  # noqa: D401 - bypasses the run folder on purpose
        self.config, self.catalogue, self.encoder = config, data.catalogue, data.encoder
        self.learner = build.build_learner(config, data.encoder, data.stats.global_mean).eval()
        self.scale = config.data.scale


def time_method(recommender: Recommender, episodes, users: int, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds of each call (CPU time: what the call cost this process; on a shared machine
    the wall time also holds the time other processes had the core)."""
    wall, cpu = [], []
    for j in range(min(users, len(episodes))):
        e = episodes.episode(j)
        recommender.recommend(e.support_items, e.support_ratings, top=10)  # warm-up (allocator, first call)
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            recommender.recommend(e.support_items, e.support_ratings, top=10)
            cpu.append((time.process_time() - start_cpu) * 1000.0)
            wall.append((time.perf_counter() - start) * 1000.0)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=None, help="configs to time untrained (default: configs/users/)")
    parser.add_argument("--runs", nargs="*", default=None, help="trained run folders to time instead")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--users", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "out", "users_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.users, args.repeats = 3, 1
    load_before = os.getloadavg()
    rows, data = [], None
    if args.runs:
        targets = [("run", path) for path in args.runs]
    else:
        configs = args.configs or sorted(glob.glob(os.path.join(ROOT, "configs", "users", "*-movietweetings.yaml")))
        targets = [("config", path) for path in (configs[:1] if args.quick else configs)]
    for what, path in targets:
        if what == "run":
            recommender = Recommender(path)
            config = recommender.config
        else:
            config, _ = kind.load_config(path)
        data = build.load_data(config) if data is None else data
        if what == "config":
            recommender = _Untrained(config, data)
        episodes = build.episodes(config, data, "test", args.shots)
        wall, cpu = time_method(recommender, episodes, args.users, args.repeats)
        rows.append({"method": kind.method_label(config), "source": os.path.relpath(path, ROOT), "shots": args.shots,
                     "median_ms": statistics.median(wall), "p90_ms": float(np.percentile(wall, 90)),
                     "median_cpu_ms": statistics.median(cpu), "calls": len(wall), "items_ranked": len(data.catalogue)})
    print(f"adapt to one new user (K={args.shots}) and rank all {len(data.catalogue)} movies, "
          f"{args.threads} thread(s); goal < 100 ms")
    print(f"{'method':<10} {'median ms':>10} {'p90 ms':>8} {'CPU ms':>7} {'calls':>6}  source")
    for r in rows:
        print(f"{r['method']:<10} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} {r['median_cpu_ms']:>7.1f} {r['calls']:>6}  "
              f"{r['source']}")
    print(f"load average before / after: {load_before[0]:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    payload = {"rows": rows, "threads": args.threads, "machine": machine_info(), "load_before": load_before,
               "load_after": os.getloadavg()}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
