"""Few-shot intent detection: train and evaluate ``kind: text`` configs over several seeds; mean ± 95% CI per cell.

    .venv/bin/python -m bench.text_cells configs/text/banking77-5shot.yaml --seeds 0 1 2
    .venv/bin/python -m bench.text_cells configs/text/*-5shot.yaml --seeds 0 --set finetune.epochs=0 \\
        --set meta_train.steps=0 --label "frozen MiniLM + logistic regression"

Each (config, seed) trains into ``--out/<config name>-<label slug>-s<seed>`` (``kind.train`` then ``kind.evaluate``:
the same functions ``quickstudy train|eval`` call for ``kind: text``), timing the whole run (encoding included).
Across seeds the CI is Student's t (n - 1 degrees of freedom) on the per-seed accuracies; with one seed the row
gives the binomial CI over the test texts instead. Prints a markdown table beside the config's published
references and appends every row to ``--json`` (default bench/out/text_cells.json) with the machine and commit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time

HERE = os.path.dirname(os.path.abspath(__file__))

import torch  # noqa: E402
import yaml  # noqa: E402

from quickstudy.runs import machine_info  # noqa: E402

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_ci(values: list[float]) -> float:
    """Half-width of Student's t 95% interval of the mean (0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def run_cell(config_path: str, seed: int, overrides: list[str], out_root: str, label: str, progress: bool) -> dict:
    from quickstudy.text import kind

    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "method"
    config, resolved = kind.load_config(config_path, overrides=[*overrides, f"seed={seed}"])
    run = os.path.join(out_root, f"{config.name}-{slug}-s{seed}")
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "config.yaml"), "w") as handle:
        yaml.safe_dump(resolved, handle, sort_keys=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    kind.train(config, run, progress=progress)
    result = kind.evaluate(run, progress=progress)
    minutes = (time.perf_counter() - start) / 60
    cpu_minutes = (time.process_time() - cpu_start) / 60
    train = json.loads(open(os.path.join(run, "train.json")).read())
    return {"config": config_path, "name": config.name, "label": label, "seed": seed, "overrides": overrides,
            "run_dir": run, "accuracy": result["mean"], "binomial_ci95": result["ci95"], "minutes": minutes,
            "cpu_minutes": cpu_minutes,
            "train_minutes": train["minutes"], "oos": result.get("oos"), "cells": result.get("cells"),
            "reference": result.get("reference")}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="method", help="row name in the table (e.g. the baseline's name)")
    parser.add_argument("--out", default="runs/text")
    parser.add_argument("--json", default=os.path.join(HERE, "out", "text_cells.json"))
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the idle cores, quickstudy.experiment.choose_threads)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from quickstudy.runs import choose_threads

    args.threads = args.threads or choose_threads()  # a busy core makes OpenMP's barrier waits dominate small ops
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.configs:
        runs = [run_cell(path, seed, args.overrides, args.out, args.label, not args.quiet) for seed in args.seeds]
        accuracies = [r["accuracy"] for r in runs]
        mean = sum(accuracies) / len(accuracies)
        ci = seed_ci(accuracies) if len(runs) > 1 else runs[0]["binomial_ci95"]
        row = {"config": path, "name": runs[0]["name"], "label": args.label, "overrides": args.overrides,
               "seeds": args.seeds, "mean": mean, "ci95": ci,
               "ci_over": "seeds (Student t)" if len(runs) > 1 else "test texts (binomial)",
               "minutes_per_run": [round(r["minutes"], 2) for r in runs],
               "cpu_minutes_per_run": [round(r["cpu_minutes"], 2) for r in runs], "runs": runs,
               "reference": runs[0]["reference"], "machine": machine_info(), "threads": args.threads}
        rows.append(row)
        refs = "; ".join(f"{r['source']}: {r['value']}" for r in row["reference"] or [])
        print(f"| {row['name']} | {args.label} | {100 * mean:.2f} ± {100 * ci:.2f} | {len(runs)} seeds | "
              f"{max(row['minutes_per_run']):.1f} min wall, {max(row['cpu_minutes_per_run']):.1f} min CPU | {refs} |",
              flush=True)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    existing = json.loads(open(args.json).read()) if os.path.isfile(args.json) else []
    with open(args.json, "w") as handle:
        json.dump(existing + rows, handle, indent=2)
    return rows


if __name__ == "__main__":
    main()
