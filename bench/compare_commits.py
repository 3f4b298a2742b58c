"""quickstudy's speed at two commits, side by side in one session: every cell's quickstudy rows measured with
each commit's own ``bench/speed.py``, the two interleaved cell by cell (the order alternating), then both tables
and the per-cell ratio (this tree / the other commit).

    .venv/bin/python -m bench.compare_commits                          # 93e9f94 (before the refactor) vs this tree
    .venv/bin/python -m bench.compare_commits --threads 1 --cells all --repeats 2
    .venv/bin/python -m bench.compare_commits --base 93e9f94 --libs quickstudy,qs_loop --steps 5

The other commit is checked out in a temporary git worktree (removed at the end) and runs from its sources
(``PYTHONPATH=<worktree>/src``, ``--keep-pythonpath``), this tree from ``src/`` the same way, both with this
interpreter and their own C++ kernels (built on first use, cached by source). Each (cell, commit) is its own
``speed.py`` run (``--no-roofs --no-flops``). Read the ``/cpu-s`` ratio on a shared machine (tasks per
CPU-second of the worker, which other processes disturb much less than wall time); the goal is every
quickstudy cell within 5%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _speed_command(tree: str, python: str) -> list[str]:
    """How ``tree``'s speed driver is started: a module since bench became a package, a script before."""
    if os.path.exists(os.path.join(tree, "bench", "__init__.py")):
        return [python, "-m", "bench.speed"]
    return [python, os.path.join(tree, "bench", "speed.py")]


def run_speed(tree: str, python: str, cell: str, libs: str, args, out: str) -> dict:
    """One ``speed.py`` run of ``tree`` on one cell; its quickstudy rows (the JSON's results of that cell)."""
    env = dict(os.environ, PYTHONPATH=os.path.join(tree, "src"))
    command = _speed_command(tree, python) + [
        "--cells", cell, "--libs", libs, "--threads", str(args.threads), "--warmup", str(args.warmup),
        "--steps", str(args.steps), "--no-roofs", "--no-flops", "--keep-pythonpath", "--python", python,
        "--json", out] + (["--meta-batch", str(args.meta_batch)] if args.meta_batch else [])
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=args.timeout)
    if not os.path.exists(out):
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {lib: {"error": f"exit {done.returncode}: {' | '.join(tail)}"} for lib in libs.split(",")}
    with open(out) as handle:
        return json.load(handle)["results"][cell]


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="93e9f94", help="the other commit (default: 93e9f94, before the refactor)")
    parser.add_argument("--cells", default="table", help="speed.py's --cells: 'table', 'all' or names")
    parser.add_argument("--libs", default="quickstudy,qs_loop", help="quickstudy rows both commits have")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--meta-batch", type=int, default=None, help="override the cells' meta-batch (32)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (cell, commit), alternating the order")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per speed.py run")
    parser.add_argument("--json", default=os.path.join(HERE, "out", "compare_commits.json"))
    args = parser.parse_args(argv)

    from bench.peers.common import select_cells

    cells = [c for c in select_cells(args.cells) if not c.startswith("resnet12-")]  # cells both commits have
    python = sys.executable
    load_before = os.getloadavg()
    scratch = tempfile.mkdtemp(prefix="qs-compare-")
    base_tree = os.path.join(scratch, "base")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base_tree, args.base], check=True,
                   capture_output=True)
    trees = {"base": base_tree, "this": ROOT}
    results: dict[str, dict[str, dict[str, list[dict]]]] = {c: {"base": {}, "this": {}} for c in cells}
    try:
        for i, cell in enumerate(cells):
            for repeat in range(args.repeats):
                order = ["base", "this"] if (i + repeat) % 2 == 0 else ["this", "base"]
                for which in order:
                    out = os.path.join(scratch, f"{cell}.{which}.{repeat}.json")
                    rows = run_speed(trees[which], python, cell, args.libs, args, out)
                    for lib, row in rows.items():
                        results[cell][which].setdefault(lib, []).append(row)
                    print(f"{cell:<24}{which:<6}" + "  ".join(
                        f"{lib} {row.get('tasks_per_s', 0):.2f} tasks/s {row.get('tasks_per_cpu_s', 0):.2f}/cpu-s"
                        if "tasks_per_s" in row else f"{lib} {row.get('error') or row.get('skipped')}"
                        for lib, row in rows.items()), flush=True)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base_tree], capture_output=True)
    summary = summarize(results, args.libs.split(","))
    print_tables(summary, args.base)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; threads {args.threads}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"base": args.base, "argv": sys.argv[1:], "load_before": load_before, "load_after": load_after,
                   "summary": summary, "raw": results}, handle, indent=1)
    print(f"wrote {args.json}")
    return 0


def summarize(results: dict, libs: list[str]) -> dict:
    """Per cell and library: each commit's median tasks/s, tasks per CPU-second and peak RSS, and the ratios."""
    summary = {}
    for cell, by_commit in results.items():
        for lib in libs:
            base, this = by_commit["base"].get(lib, []), by_commit["this"].get(lib, [])
            row = {}
            for which, rows in (("base", base), ("this", this)):
                row[which] = {key: _median(rows, key) for key in ("tasks_per_s", "tasks_per_cpu_s", "peak_rss_mib")}
            for key in ("tasks_per_s", "tasks_per_cpu_s", "peak_rss_mib"):
                b, t = row["base"][key], row["this"][key]
                row[f"ratio_{key}"] = t / b if b and t else None
            summary[f"{cell} {lib}"] = row
    return summary


def print_tables(summary: dict, base: str) -> None:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    for which, title in (("base", f"commit {base}"), ("this", "this tree")):
        print(f"\n{title}")
        print(f"{'cell and library':<40}{'tasks/s':>9}{'/cpu-s':>9}{'peak MiB':>10}")
        for key, row in summary.items():
            r = row[which]
            print(f"{key:<40}{fmt(r['tasks_per_s'], '.2f'):>9}{fmt(r['tasks_per_cpu_s'], '.2f'):>9}"
                  f"{fmt(r['peak_rss_mib'], '.0f'):>10}")
    print(f"\nthis tree / {base}")
    print(f"{'cell and library':<40}{'tasks/s':>9}{'/cpu-s':>9}{'peak MiB':>10}  within 5% (/cpu-s)")
    for key, row in summary.items():
        ratio = row["ratio_tasks_per_cpu_s"]
        verdict = "-" if ratio is None else ("yes" if ratio >= 0.95 else "NO")
        print(f"{key:<40}{fmt(row['ratio_tasks_per_s'], '.3f'):>9}{fmt(ratio, '.3f'):>9}"
              f"{fmt(row['ratio_peak_rss_mib'], '.3f'):>10}  {verdict}")


if __name__ == "__main__":
    sys.exit(main())
