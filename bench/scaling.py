"""How quickstudy's MAML meta-step time and peak memory grow with the inner steps and the meta-batch.

Two sweeps from a base cell (default: 5-way 1-shot, 15 queries, second order, Conv4, Adam 1e-3):

* inner steps 1..10 at meta-batch 32,
* meta-batch 1, 2, 4, 8, 16, 32, 64 at 1 inner step,

every point in its own process (bench/peers/run.py), so ``peak RSS`` (``ru_maxrss`` of that process) is
the point's own. Writes bench/out/scaling.png (matplotlib, Agg) and bench/out/scaling.json.

    .venv/bin/python -m bench.scaling --threads 1
    .venv/bin/python -m bench.scaling --quick                      # 1,2,3 steps; batches 1,4,16
    .venv/bin/python -m bench.scaling --libs quickstudy,torch_loop --first-order

With a memory-frugal per-task loop the time should grow linearly in both, and the peak memory should
be flat in the meta-batch (one task's graph at a time) and linear in the inner steps (second order
keeps every inner step's graph).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.processes import python_for, run_worker
from bench.speed import DEFAULT_PEERS_PYTHON

HERE = os.path.dirname(os.path.abspath(__file__))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--libs", default="quickstudy", help="comma-separated (quickstudy, torch_loop, peers...)")
    parser.add_argument("--shots", type=int, default=1, choices=(1, 5))
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--inner-steps", default="1,2,3,4,5,6,7,8,9,10")
    parser.add_argument("--meta-batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--meta-batch", type=int, default=32, help="meta-batch of the inner-steps sweep")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per point")
    parser.add_argument("--quick", action="store_true", help="inner steps 1,2,3; meta-batches 1,4,16; 1 timed step")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--max-rss-gib", type=float, default=10.0)
    parser.add_argument("--out", default=os.path.join(HERE, "out", "scaling"), help="prefix of the .json and .png")
    args = parser.parse_args(argv)
    if args.quick:
        args.inner_steps, args.meta_batches, args.steps = "1,2,3", "1,4,16", 1
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    cell = f"maml-{args.shots}shot-1step-{'1st' if args.first_order else '2nd'}"

    load_before = os.getloadavg()
    points = []

    def measure(lib, sweep, inner_steps, meta_batch):
        wargs = ["--lib", lib, "--cell", cell, "--threads", str(args.threads), "--warmup", str(args.warmup),
                 "--steps", str(args.steps), "--inner-steps", str(inner_steps), "--meta-batch", str(meta_batch)]
        r = run_worker(python_for(lib, args.peers_python), "bench.peers.run", wargs, args.threads,
                       3600, args.max_rss_gib * 1024)
        point = {"lib": lib, "sweep": sweep, "inner_steps": inner_steps, "meta_batch": meta_batch,
                 **{k: r.get(k) for k in ("median_s", "min_s", "tasks_per_s", "peak_rss_mib", "rss_before_mib",
                                          "wall_s", "foreign_cpu_cores", "load_start", "load_end", "error")}}
        points.append(point)
        if r.get("median_s"):
            print(f"{lib:<12}{sweep:<12} steps={inner_steps:<3} B={meta_batch:<3} {r['median_s'] * 1e3:9.0f} ms/meta-step "
                  f"{r['tasks_per_s']:7.2f} tasks/s  peak {r['peak_rss_mib']:6.0f} MiB (base {r['rss_before_mib']:.0f})"
                  f"  other CPU {r['foreign_cpu_cores']:.2f}", flush=True)
        else:
            print(f"{lib:<12}{sweep:<12} steps={inner_steps:<3} B={meta_batch:<3} ERROR {r.get('error')}: "
                  f"{' | '.join(r.get('stderr_tail', [])[-2:])}", flush=True)

    for lib in libs:
        for k in _ints(args.inner_steps):
            measure(lib, "inner_steps", k, args.meta_batch)
        for b in _ints(args.meta_batches):
            measure(lib, "meta_batch", 1, b)

    load_after = os.getloadavg()
    out = {"argv": sys.argv[1:], "cell": cell, "threads": args.threads, "load_before": load_before,
           "load_after": load_after, "finished": time.time(), "points": points}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as handle:
        json.dump(out, handle, indent=1)
    plot(out, args.out + ".png")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; wrote {args.out}.json and {args.out}.png")
    return 1 if any(p.get("error") for p in points) else 0


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for (row, sweep, xlabel) in ((0, "inner_steps", "inner steps (meta-batch fixed)"),
                                 (1, "meta_batch", "meta-batch (1 inner step)")):
        for lib in sorted({p["lib"] for p in out["points"]}):
            pts = [p for p in out["points"] if p["lib"] == lib and p["sweep"] == sweep and p.get("median_s")]
            xs = [p[sweep] for p in pts]
            axes[row][0].plot(xs, [p["median_s"] for p in pts], "o-", label=lib)
            axes[row][1].plot(xs, [p["peak_rss_mib"] for p in pts], "o-", label=f"{lib} peak")
            axes[row][1].plot(xs, [p["rss_before_mib"] for p in pts], ":", label=f"{lib} before 1st step")
        axes[row][0].set(xlabel=xlabel, ylabel="s / meta-step (median)")
        axes[row][1].set(xlabel=xlabel, ylabel="RSS, MiB")
        if sweep == "meta_batch":
            for ax in axes[row]:
                ax.set_xscale("log", base=2)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"{out['cell']} (inner steps/meta-batch varied), threads={out['threads']}, "
                 f"load {out['load_before'][0]:.1f} -> {out['load_after'][0]:.1f}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
