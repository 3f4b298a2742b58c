"""Episode sampling throughput (issue: >= 2,000 5-way 1-shot 15-query episodes/s, batch 32).

Runs on an Omniglot-shaped store (4112 classes x 20 drawings x 1x28x28 uint8, the vinyals train split)
so it needs no data; with --omniglot it uses the real archives. Prints a table and writes JSON.

    python -m bench.sampler [--omniglot] [--batches 200] [--json bench/out/sampler.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

import quickstudy as qs
from quickstudy.data.base import FewShotDataset


def synthetic_store(classes: int = 4112, per_class: int = 20, size: int = 28) -> FewShotDataset:
    gen = torch.Generator().manual_seed(0)
    examples = torch.randint(0, 256, (classes * per_class, 1, size, size), dtype=torch.uint8, generator=gen)
    starts = torch.arange(0, classes * per_class + 1, per_class)
    return FewShotDataset(examples, starts, [f"class{c:05d}" for c in range(classes)], name="omniglot-shaped")


def measure(dataset, ways, shots, queries, batch_size, batches, repeats=5) -> dict:
    sampler = qs.EpisodeSampler(dataset, ways=ways, shots=shots, queries=queries, batch_size=batch_size, seed=0)
    sampler[0]  # warm-up
    rates = []
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(batches):
            sampler[r * batches + i]
        rates.append(batches * batch_size / (time.perf_counter() - start))
    return {"ways": ways, "shots": shots, "queries": queries, "batch_size": batch_size,
            "episodes_per_s_median": statistics.median(rates), "episodes_per_s_all": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--omniglot", action="store_true", help="use the real Omniglot vinyals train split")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--json", default="bench/out/sampler.json")
    args = parser.parse_args()
    dataset = qs.data.Omniglot(split="train") if args.omniglot else synthetic_store()
    cells = [(5, 1, 15, 32), (5, 5, 15, 32), (20, 1, 5, 16), (20, 5, 5, 16)]
    rows = [measure(dataset, *cell, batches=args.batches) for cell in cells]
    print(f"{'cell':<28}{'episodes/s (median of 5)':>26}")
    for row in rows:
        cell = f"{row['ways']}-way {row['shots']}-shot {row['queries']}-query B={row['batch_size']}"
        print(f"{cell:<28}{row['episodes_per_s_median']:>26,.0f}")
    out = {"dataset": repr(dataset), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "python": platform.python_version()},
           "rows": rows}
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
