"""Reproduce published numbers: train each config, evaluate on its fixed test episodes, and write the
results table (docs/results.md) from the accumulated JSON (docs/results.json).

    # CPU budget (these 2-core machines): ProtoNet and MAML Omniglot 5-way 1-shot, the sinusoid
    python -m bench.accuracy configs/cpu/*.yaml --label cpu-budget
    # full published schedules, several configs at once on one GPU, each capped at 8 minutes
    python -m bench.accuracy configs/omniglot/maml-5w1s.yaml ... --parallel 6 --time-limit 8 --label h100
    # only rebuild docs/results.md (and the time-to-accuracy plot) from docs/results.json
    python -m bench.accuracy --table-only

Each config runs as ``python -m quickstudy train CONFIG --out RUN --eval --json`` in its own process.
A row records: experiment, protocol, published number and its source, ours with the 95% CI, test
episodes, steps trained (of those configured), training wall time, hardware, commit and the command.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_JSON = ROOT / "docs" / "results.json"
RESULTS_MD = ROOT / "docs" / "results.md"
CURVES_PNG = ROOT / "docs" / "time_to_accuracy.png"


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
        torch_version = torch.__version__
    except ImportError:
        torch_version = "?"
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (torch {torch_version})"


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_one(config: Path, out_root: Path, time_limit: float | None, episodes: int | None,
            overrides: list[str], threads: int | None = None) -> dict:
    run_dir = out_root / config.stem
    command = [sys.executable, "-m", "quickstudy", "train", str(config), "--out", str(run_dir), "--eval",
               "--json", "--quiet", *overrides]
    if time_limit is not None:
        command += ["--time-limit", str(time_limit)]
    if episodes is not None:
        command += ["--episodes", str(episodes)]
    env = dict(os.environ)
    if threads is not None:
        # runs side by side must share the cores: torch's default (all cores each) thrashes
        env["OMP_NUM_THREADS"] = env["QUICKSTUDY_THREADS"] = str(threads)
    started = time.perf_counter()
    log = (out_root / f"{config.stem}.log").open("w")
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, env=env)
    log.close()
    wall = time.perf_counter() - started
    shown = "python -m quickstudy " + " ".join(shlex.quote(c) for c in command[3:])
    if proc.returncode != 0:
        return {"config": str(config), "error": f"exit {proc.returncode}, see {out_root / (config.stem + '.log')}",
                "command": shown}
    payload = json.loads(proc.stdout)
    result = payload["eval"]
    row = {
        "experiment": result["experiment"], "config": str(config.relative_to(ROOT)) if config.is_absolute() else str(config),
        "protocol": result.get("protocol"), "metric": result["metric"], "mean": result["mean"], "ci95": result["ci95"],
        "episodes": result["episodes"], "trained_steps": result.get("trained_steps"),
        "configured_steps": result.get("configured_steps"), "train_seconds": result.get("train_seconds"),
        "wall_seconds": wall, "reference": result.get("reference"), "mse_by_step": result.get("mse_by_step"),
        "metrics": result.get("metrics"), "command": shown, "run_dir": str(run_dir),
    }
    curve = []
    metrics_csv = run_dir / "metrics.csv"
    if metrics_csv.is_file():
        for r in csv.DictReader(metrics_csv.open()):
            if r.get("split") == "val" and r.get("elapsed"):
                value = r.get("accuracy") or r.get("loss")
                if value:
                    curve.append([float(r["elapsed"]), int(r["step"]), float(value)])
    row["val_curve"] = curve
    return row


def load_rows() -> list[dict]:
    if RESULTS_JSON.is_file():
        return json.loads(RESULTS_JSON.read_text())
    return []


def save_rows(rows: list[dict]) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS_JSON.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, RESULTS_JSON)


def _published(row: dict) -> str:
    refs = row.get("reference") or []
    if not refs:
        return "—"
    ref = refs[0]
    value = ref["value"]
    if isinstance(value, list):
        text = " / ".join(f"{v:g}" for v in value)
    else:
        text = f"{value:g}" + (f" ± {ref['ci95']:g}" if ref.get("ci95") is not None else "")
    return f"{text} ({ref['source']})"


def _ours(row: dict) -> str:
    if row["metric"] == "accuracy":
        return f"**{100 * row['mean']:.2f} ± {100 * row['ci95']:.2f}**"
    by_step = row.get("mse_by_step") or {}
    refs = row.get("reference") or []
    if by_step and refs and isinstance(refs[0]["value"], list):
        picks = [by_step.get(k) for k in ("1", "5", "10")]
        return "**" + " / ".join(f"{p['mean']:.2f}±{p['ci95']:.2f}" if p else "-" for p in picks) + "**"
    return f"**{row['mean']:.3f} ± {row['ci95']:.3f}**"


#: docs/results.md below this line is written by hand (e.g. the meta-RL rows, made by `quickstudy eval`)
#: and kept as it is when the generated part above is rebuilt
KEEP_MARKER = "<!-- hand-written sections below: kept by bench/accuracy.py -->"


def write_table(rows: list[dict]) -> None:
    kept = ""
    if RESULTS_MD.is_file() and KEEP_MARKER in RESULTS_MD.read_text():
        kept = RESULTS_MD.read_text().split(KEEP_MARKER, 1)[1]
    lines = [
        "# Results",
        "",
        "Generated by `python -m bench.accuracy` from `docs/results.json`; every row names the config and the",
        "command that produced it. Accuracy is the mean over the fixed, seeded test episodes of the run",
        "(saved in the run folder as `test_episodes.pt`) with its 95% confidence interval",
        "(1.96 · sample std / √n). Sinusoid rows give the MSE after 1 / 5 / 10 adaptation steps.",
        "`steps` is the number of meta-updates trained, of the number the config asks for: a run stopped by its",
        "wall-clock budget (`--time-limit`) says so there.",
        "",
    ]
    labels = []
    for row in rows:
        if row.get("label") not in labels:
            labels.append(row.get("label"))
    for label in labels:
        group = [r for r in rows if r.get("label") == label and "error" not in r]
        if not group:
            continue
        lines += [f"## {label}", "", f"Hardware: {group[0].get('hardware')}", "",
                  "| experiment | protocol | published | ours (95% CI) | test episodes | steps | train time | commit |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in group:
            steps = f"{r.get('trained_steps')}/{r.get('configured_steps')}"
            minutes = f"{(r.get('train_seconds') or 0) / 60:.1f} min"
            lines.append(f"| `{r['config']}` | {r.get('protocol') or ''} | {_published(r)} | {_ours(r)} | "
                         f"{r['episodes']} | {steps} | {minutes} | {r.get('commit') or ''} |")
        lines += ["", "Commands:", ""]
        lines += [f"- `{r['command']}`" for r in group]
        lines.append("")
    if CURVES_PNG.is_file():
        lines += ["## Time to accuracy", "", "Validation accuracy against training wall-clock time, per run:", "",
                  f"![time to accuracy]({CURVES_PNG.name})", ""]
    lines.append(KEEP_MARKER)
    RESULTS_MD.write_text("\n".join(lines) + (kept or "\n"))
    print(f"wrote {RESULTS_MD}")


def plot_curves(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [r for r in rows if r.get("val_curve") and r.get("metric") == "accuracy"]
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in curves:
        t = [p[0] / 60 for p in r["val_curve"]]
        acc = [100 * p[2] for p in r["val_curve"]]
        device = "GPU" if "GPU" in str(r.get("hardware")) or "H100" in str(r.get("hardware")) else "CPU"
        ax.plot(t, acc, marker=".", label=f"{r['experiment']} ({device})")
    ax.set_xlabel("training wall-clock time (minutes)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(CURVES_PNG, dpi=120)
    print(f"wrote {CURVES_PNG}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--label", default="cpu-budget", help="the table section these runs belong to")
    parser.add_argument("--parallel", type=int, default=1, help="configs trained at the same time")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MIN", help="training budget per config")
    parser.add_argument("--episodes", type=int, default=None, help="override the test episodes")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "accuracy")
    parser.add_argument("--json", type=Path, default=None, help="also write this run's rows here")
    parser.add_argument("--no-table", action="store_true", help="do not touch docs/")
    parser.add_argument("--table-only", action="store_true", help="rebuild docs/results.md from docs/results.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    args = parser.parse_args()

    rows = load_rows()
    if not args.table_only:
        if not args.configs:
            parser.error("give config files, or --table-only")
        args.out.mkdir(parents=True, exist_ok=True)
        env_info = {"label": args.label, "hardware": hardware(), "commit": commit()}
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            threads = max(1, (os.cpu_count() or 1) // args.parallel) if args.parallel > 1 else None
            new = list(pool.map(lambda c: run_one(c, args.out, args.time_limit, args.episodes, args.set, threads),
                                args.configs))
        for row in new:
            row.update(env_info)
            if "error" in row:
                print(f"FAILED {row['config']}: {row['error']}", file=sys.stderr)
            else:
                print(f"{row['experiment']:<28} {_ours(row):>28}  published {_published(row)}  "
                      f"steps {row['trained_steps']}/{row['configured_steps']}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(new, indent=1))
        if args.no_table:
            return
        keep = {(r["config"], r.get("label")) for r in new if "error" not in r}
        rows = [r for r in rows if (r.get("config"), r.get("label")) not in keep] + [r for r in new if "error" not in r]
        save_rows(rows)
    plot_curves(rows)
    write_table(rows)


if __name__ == "__main__":
    main()
