"""Recommendation for new users on MovieTweetings: train every method of configs/users/ on both splits, evaluate,
and write the results table (every method x K in {5, 10} x split; MAE / RMSE / nDCG@3 / nDCG@5 with 95% CIs;
training minutes) and the goal check (best meta-learned model vs best non-meta baseline at K = 5, paired).

    QUICKSTUDY_THREADS=1 nice -n 10 .venv/bin/python -m bench.users_results            # train + evaluate all
    .venv/bin/python -m bench.users_results --skip-train                               # re-aggregate runs/users/
    .venv/bin/python -m bench.users_results --quick                                    # smoke: 20 steps, 30 users

Runs go to runs/users/<config name>; each is `quickstudy train CONFIG` then `quickstudy eval RUN` through the
users task kind's functions. Training time is reported as wall-clock minutes (the Trainer's) and as this process's
CPU minutes around training (one thread: on a shared machine the wall time also counts other processes' turns). Output: docs/users_results.json and docs/users_results.md (the tables pasted into
docs/results.md and docs/users.md), with the machine, the commit and the exact commands.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import torch

from quickstudy.runs import choose_threads, machine_info, train_run
from quickstudy.users import kind
from quickstudy.users.metrics import METRICS, paired_difference

NAMES = {"mae": "MAE", "rmse": "RMSE", "ndcg@3": "nDCG@3", "ndcg@5": "nDCG@5"}


def cell(summary: dict) -> str:
    return f"{summary['mean']:.3f} ± {summary['ci95']:.3f}"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_and_evaluate(config_path: str, out: str, quick: bool, time_limit: float | None) -> dict:
    """Train (this process's CPU seconds measured around it) and evaluate one config."""
    overrides = ["train.steps=20", "train.val_every=10", "eval.users=30"] if quick else []
    started, started_cpu, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
    run = train_run(config_path, out=out, overrides=overrides, progress=False, time_limit=time_limit)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - started_cpu
    cost = {"wall_seconds_train": wall, "cpu_seconds_train": cpu, "load_during_train": [load, os.getloadavg()[0]]}
    with open(os.path.join(run, "train_cost.json"), "w") as handle:  # read back by --skip-train
        json.dump(cost, handle, indent=2)
    result = kind.evaluate(run, episodes=30 if quick else None, progress=False)
    result.update(cost)
    return result


def goal(results: list[dict], shots: str = "5") -> dict | None:
    """Best meta-learner (lowest test MAE at K) against the best baseline (lowest test MAE at K), paired per user."""
    if not results:
        return None
    best_meta = min(results, key=lambda r: r["by_shots"][shots]["methods"][r["method"]]["mae"]["mean"])
    block = best_meta["by_shots"][shots]
    baseline = block["best_baseline"]
    users = best_meta["per_user"][shots]
    diff = {m: paired_difference(users[best_meta["method"]][m], users[baseline][m]) for m in METRICS}
    met = (diff["mae"]["relative"] <= -0.05 and diff["mae"]["mean"] + diff["mae"]["ci95"] < 0
           and diff["ndcg@3"]["mean"] - diff["ndcg@3"]["ci95"] > 0)
    return {"shots": int(shots), "meta": best_meta["method"], "baseline": baseline, "paired": diff,
            "train_minutes": best_meta.get("train_seconds", float("nan")) / 60,
            "train_cpu_minutes": best_meta.get("cpu_seconds_train", float("nan")) / 60, "met": bool(met)}


def tables(by_split: dict[str, list[dict]], commands: dict[str, str]) -> list[str]:
    lines = []
    for split, results in by_split.items():
        if not results:
            continue
        first = results[0]
        s = first["split"]
        lines += [f"### {split} split: {s['test']['users']} test users, {s['val']['users']} validation users, "
                  f"{s['train']['ratings']:,} training ratings; support {first['support']}", ""]
        for shots in first["by_shots"]:
            lines += [f"K = {shots}:", "", "| method | " + " | ".join(NAMES[m] for m in METRICS)
                      + " | training: wall (CPU) | steps | config |", "|---|" + "---|" * (len(METRICS) + 3)]
            block = first["by_shots"][shots]
            for name, summary in block["methods"].items():
                if name == first["method"]:
                    continue
                lines.append(f"| {name} (baseline) | " + " | ".join(cell(summary[m]) for m in METRICS) + " | - | - | - |")
            for r in results:
                summary = r["by_shots"][shots]["methods"][r["method"]]
                minutes = r.get("train_seconds", float("nan")) / 60
                cpu = r.get("cpu_seconds_train", float("nan")) / 60
                steps = f"{r.get('trained_steps', '?')}/{r.get('configured_steps', '?')}"
                lines.append(f"| **{r['method']}** | " + " | ".join(cell(summary[m]) for m in METRICS)
                             + f" | {minutes:.1f} ({cpu:.1f}) min | {steps} | `{r['config']}` |")
            lines.append("")
        g = goal(results)
        if g is not None:
            d = g["paired"]
            lines += [f"Goal check (K = 5): best meta-learner **{g['meta']}** − best baseline **{g['baseline']}**, "
                      f"per-user paired differences: MAE {d['mae']['mean']:+.3f} ± {d['mae']['ci95']:.3f} "
                      f"({100 * d['mae']['relative']:+.1f}%), nDCG@3 {d['ndcg@3']['mean']:+.3f} ± "
                      f"{d['ndcg@3']['ci95']:.3f}; trained {g['train_minutes']:.1f} min wall, {g['train_cpu_minutes']:.1f} CPU-min. Goal "
                      f"(≤ −5% MAE and a higher nDCG@3, both CIs excluding 0): **{'met' if g['met'] else 'not met'}**.", ""]
    lines += ["Commands:", ""] + [f"- `{c}`" for c in commands.values()] + [""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=None, help="default: configs/users/*.yaml")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "users"))
    parser.add_argument("--skip-train", action="store_true", help="aggregate the eval.json of existing runs")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MIN", help="override train.time_limit")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "users_results"))
    args = parser.parse_args()
    torch.set_num_threads(choose_threads())
    configs = args.configs or sorted(glob.glob(os.path.join(ROOT, "configs", "users", "*.yaml")))
    by_split: dict[str, list[dict]] = {}
    commands = {}
    for path in configs:
        config, _ = kind.load_config(path)
        out = os.path.join(args.runs, config.name)
        rel = os.path.relpath(path, ROOT)
        commands[config.name] = (f"QUICKSTUDY_THREADS=1 nice -n 10 python -m quickstudy train {rel} --out "
                                 f"runs/users/{config.name} --quiet && python -m quickstudy eval runs/users/{config.name}")
        if args.skip_train:
            with open(os.path.join(out, "eval.json")) as handle:
                result = json.load(handle)
            cost = os.path.join(out, "train_cost.json")
            if os.path.isfile(cost):
                with open(cost) as handle:
                    result.update(json.load(handle))
        else:
            limit = args.time_limit * 60 if args.time_limit is not None else None
            result = train_and_evaluate(path, out, args.quick, limit)
        result["config"] = rel
        result["configured_steps"] = config.train.steps
        by_split.setdefault(config.split.kind, []).append(result)
        m = result["by_shots"][str(config.eval.shots[0])]["methods"][result["method"]]["mae"]
        print(f"{config.name}: K={config.eval.shots[0]} MAE {m['mean']:.3f} ± {m['ci95']:.3f}", flush=True)
    lines = tables(by_split, commands)
    text = "\n".join(lines)
    print(text)
    payload = {"by_split": {k: [{key: v for key, v in r.items() if key != "per_user"} for r in rs]
                            for k, rs in by_split.items()},
               "goal": {k: goal(rs) for k, rs in by_split.items()}, "machine": machine_info(), "commands": commands}
    with open(args.out + ".json", "w") as handle:
        json.dump(payload, handle, indent=2, default=float)
    with open(args.out + ".md", "w") as handle:
        handle.write(text + "\n")
    print(f"wrote {args.out}.json and {args.out}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
