"""Meta-training speed of quickstudy against learn2learn, higher, TorchOpt, a plain per-task PyTorch loop
and torch.func vmap: same machine, same run, same data, same model, every variant in its own process.

    .venv/bin/python bench/speed.py                       # the issue's table + ProtoNet + Reptile
    .venv/bin/python bench/speed.py --quick               # smoke check: 1 warm-up + 2 timed steps each
    .venv/bin/python bench/speed.py --cells all --threads 2 --repeats 3
    .venv/bin/python bench/speed.py --cells 'maml-1shot-*' --libs quickstudy,learn2learn
    .venv/bin/python bench/speed.py --check               # exactness: float64 meta-gradients vs the loop
    .venv/bin/python bench/speed.py --profile --cells maml-1shot-1step-2nd --libs quickstudy,torch_loop

Peers run from .peers/venv (``bash bench/peers/setup.sh``); quickstudy, the plain loop and vmap from
this interpreter. ``qs_bf16`` is quickstudy's bfloat16 mode (``train.precision: bfloat16``, autocast); every
other row is exact float32. What each worker does: bench/peers/*_worker.py and bench/README.md.

Printed: per cell and library, tasks/s (B / median meta-step wall time over --steps timed steps after
--warmup), the same per CPU-second of the worker, peak RSS of the worker process (ru_maxrss) and its RSS
before the first step, the ratio to the fastest of learn2learn/higher/TorchOpt, FLOPs of one meta-step
(FlopCounterMode) and achieved GFLOP/s as a share of the float32 and bfloat16 GEMM roofs measured at the
start of the run. JSON: bench/out/speed.json (machine, load averages, roofs, every raw timing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_DIR = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS_DIR)

import common  # noqa: E402

ALL_LIBS = ("quickstudy", "qs_bf16", "torch_loop", "learn2learn", "higher", "torchopt", "vmap")
PEER_LIBS = ("learn2learn", "higher", "torchopt")  # "the fastest peer" is the fastest of these
PROJECT_LIBS = ("quickstudy", "qs_bf16", "torch_loop", "vmap")  # run by this interpreter (no peers venv needed)
DEFAULT_PEERS_PYTHON = os.path.join(ROOT, ".peers", "venv", "bin", "python")

#: tasks/s (median) from the issue, measured before quickstudy existed (2-core EPYC, torch 2.13 CPU)
ISSUE_TABLE = {
    "maml-1shot-1step-2nd": {"torch_loop": 21.3, "learn2learn": 16.4, "higher": 16.6, "torchopt": 14.4, "vmap": 4.0},
    "maml-1shot-1step-1st": {"torch_loop": 16.8, "learn2learn": 17.8, "higher": 20.6, "vmap": 4.4},
    "maml-1shot-5step-2nd": {"torch_loop": 8.3, "learn2learn": 9.1, "higher": 7.2, "torchopt": 8.3, "vmap": 3.0},
    "maml-5shot-1step-2nd": {"torch_loop": 10.6, "learn2learn": 8.5, "higher": 9.6, "torchopt": 9.5, "vmap": 2.4},
}


# ----------------------------------------------------------------------------- processes


def _proc_stat_busy() -> tuple[int, int]:
    """(busy jiffies, total jiffies) of the whole machine, from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _rss_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_worker(python: str, script: str, args: list[str], threads: int, timeout: float, max_rss_mib: float,
               extra_env: dict | None = None) -> dict:
    """Run one worker process; return its RESULT dict plus what the driver observed around it.

    The driver watches the worker's RSS and kills it beyond ``max_rss_mib`` (vmap can take 15 GiB) or
    after ``timeout`` seconds. ``foreign_cpu`` = CPU used by everything else on the machine while the worker
    ran, in cores (0 on an idle machine; > 0 means the timing is disturbed).
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    env.update(extra_env or {})
    busy0, total0 = _proc_stat_busy()
    usage0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    killed = None
    watched_rss = 0.0
    while proc.poll() is None:
        time.sleep(0.1)
        watched_rss = max(watched_rss, _rss_of(proc.pid))
        if watched_rss > max_rss_mib:
            killed = f"RSS {watched_rss:.0f} MiB > --max-rss-gib"
        elif time.perf_counter() - t0 > timeout:
            killed = f"timeout after {timeout:.0f} s"
        if killed:
            proc.kill()
            break
    stdout, stderr = proc.communicate()
    elapsed = time.perf_counter() - t0
    usage1 = os.times()
    busy1, total1 = _proc_stat_busy()
    hz = os.sysconf("SC_CLK_TCK")
    child_cpu = (usage1.children_user - usage0.children_user) + (usage1.children_system - usage0.children_system)
    foreign = max(0.0, (busy1 - busy0) / hz - child_cpu) / elapsed if elapsed > 0 else 0.0
    result = None
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if result is None:
        tail = (stderr or stdout).strip().splitlines()[-15:]
        result = {"error": killed or f"exit code {proc.returncode}", "stderr_tail": tail}
    result.update(elapsed_s=elapsed, foreign_cpu_cores=foreign, watched_rss_mib=watched_rss)
    return result


# ----------------------------------------------------------------------------- formatting


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def summarize_cell(rows: dict[str, dict]) -> None:
    """Add ``ratio_to_fastest_peer``, ``ratio_to_loop`` and ``mem_ratio_to_leanest_peer`` to each row."""
    ok = {lib: r for lib, r in rows.items() if r.get("tasks_per_s")}
    peers = [r["tasks_per_s"] for lib, r in ok.items() if lib in PEER_LIBS]
    peer_mem = [r["peak_rss_mib"] for lib, r in ok.items() if lib in PEER_LIBS and r.get("peak_rss_mib")]
    loop = ok.get("torch_loop", {}).get("tasks_per_s")
    loop_flops = ok.get("torch_loop", {}).get("flops")
    for r in ok.values():
        r["ratio_to_fastest_peer"] = r["tasks_per_s"] / max(peers) if peers else None
        r["ratio_to_loop"] = r["tasks_per_s"] / loop if loop else None
        r["mem_ratio_to_leanest_peer"] = r["peak_rss_mib"] / min(peer_mem) if peer_mem else None
        # Useful FLOPs: the same maths everywhere, so the plain loop's count when a library's own count
        # differs (FlopCounterMode overcounts the grouped-convolution backward that vmap's batching rule
        # produces: 2.5x for 4 groups in torch 2.13, growing with the groups).
        r["useful_flops"] = r.get("flops")
        if loop_flops and r.get("flops") and abs(r["flops"] / loop_flops - 1) > 0.05:
            r["useful_flops"] = loop_flops
            r["flops_note"] = "own FLOP count differs from the plain loop's by more than 5%; useful FLOPs = the loop's"


def print_table(results: dict, roofs: dict, threads: int) -> None:
    fp32 = roofs.get("gemm_float32_gflops")
    bf16 = roofs.get("gemm_bfloat16_gflops")
    print()
    print(f"threads={threads}  GEMM roofs: float32 {_fmt(fp32, '.0f')} GFLOP/s, bfloat16 {_fmt(bf16, '.0f')} GFLOP/s; "
          f"Conv4 fwd+bwd (80 images) {_fmt(roofs.get('conv4_fwd_bwd_gflops'), '.0f')} GFLOP/s")
    header = (f"{'cell':<24}{'library':<13}{'tasks/s':>9}{'±':>6}{'/cpu-s':>8}{'issue':>7}{'vs peer':>8}{'vs loop':>8}"
              f"{'peak MiB':>9}{'base MiB':>9}{'kflt/t':>7}{'GFLOP/st':>9}{'GFLOP/s':>8}{'%fp32':>6}{'%bf16':>6}{'other':>6}")
    print(header)
    print("-" * len(header))
    for cell, rows in results.items():
        for lib, r in rows.items():
            if "tasks_per_s" not in r:
                why = r.get("skipped") or r.get("error") or "?"
                print(f"{cell:<24}{lib:<13}{'':>9}  ({why})")
                continue
            gflop = r.get("flops") / 1e9 if r.get("flops") else None
            useful = r.get("useful_flops") / 1e9 if r.get("useful_flops") else None
            gflops = useful / r["median_s"] if useful else None
            mark = "*" if r.get("flops_note") else ""
            spread = r.get("tasks_per_s_spread")
            print(f"{cell:<24}{lib:<13}{r['tasks_per_s']:>9.2f}{_fmt(spread, '.0%'):>6}{r['tasks_per_cpu_s']:>8.2f}"
                  f"{_fmt(ISSUE_TABLE.get(cell, {}).get(lib), '.1f'):>7}"
                  f"{_fmt(r.get('ratio_to_fastest_peer'), '.2f'):>8}{_fmt(r.get('ratio_to_loop'), '.2f'):>8}"
                  f"{r['peak_rss_mib']:>9.0f}{r['rss_before_mib']:>9.0f}"
                  f"{_fmt(r.get('minor_faults_per_step') and r['minor_faults_per_step'] / r['meta_batch'] / 1e3, '.1f'):>7}"
                  f"{_fmt(gflop, '.1f') + mark:>9}"
                  f"{_fmt(gflops, '.1f'):>8}{_fmt(gflops and fp32 and 100 * gflops / fp32, '.0f'):>6}"
                  f"{_fmt(gflops and bf16 and 100 * gflops / bf16, '.0f'):>6}{r.get('foreign_cpu_cores', 0):>6.2f}")
    print("tasks/s: meta-batch / median meta-step wall time; ±: (max-min)/median of the timed steps; /cpu-s: per "
          "CPU-second of the worker; issue: the issue's number; vs peer: / fastest of learn2learn, higher, TorchOpt; "
          "peak MiB: ru_maxrss of the worker; base MiB: RSS before the first step; kflt/t: minor page faults per task, "
          "thousands (fresh pages from the kernel: ~2.5 us each in these VMs); other: CPU cores used by other "
          "processes during the worker (0 = idle machine); GFLOP/st: FlopCounterMode count of one meta-step (*: differs "
          "from the plain loop's by > 5%, e.g. vmap, whose grouped-convolution backward the counter overcounts; GFLOP/s "
          "and the roof shares then use the loop's count, the same maths)")


# ----------------------------------------------------------------------------- modes


def python_for(lib: str, peers_python: str) -> str:
    return sys.executable if lib in PROJECT_LIBS else peers_python


def check_exactness(cells, libs, peers_python, threads, timeout) -> int:
    """float64, meta-batch 2, one step: every library's meta-gradient against the plain loop's."""
    import torch

    out_dir = os.path.join(HERE, "out", "grads")
    os.makedirs(out_dir, exist_ok=True)
    worst = 0.0
    failures = 0
    for cell in cells:
        paths = {}
        for lib in ["torch_loop"] + [lib for lib in libs if lib != "torch_loop"]:
            python = python_for(lib, peers_python)
            if not os.path.exists(python):
                print(f"{cell:<24}{lib:<13} not installed ({python})")
                continue
            path = os.path.join(out_dir, f"{cell}.{lib}.pt")
            r = run_worker(python, os.path.join(PEERS_DIR, "run.py"),
                           ["--lib", lib, "--cell", cell, "--threads", str(threads), "--warmup", "0", "--steps", "0",
                            "--meta-batch", "2", "--float64", "--dump-grad", path], threads, timeout, 1e9)
            if r.get("skipped"):
                continue
            if "error" in r:
                print(f"{cell:<24}{lib:<13} ERROR {r['error']}: {' | '.join(r.get('stderr_tail', [])[-3:])}")
                failures += 1
                continue
            paths[lib] = path
        if "torch_loop" not in paths:
            continue
        ref = torch.load(paths["torch_loop"])
        for lib, path in paths.items():
            grads = torch.load(path)
            num = sum(float(((a - b) ** 2).sum()) for a, b in zip(grads, ref)) ** 0.5
            den = sum(float((b ** 2).sum()) for b in ref) ** 0.5
            rel = num / den
            worst = max(worst, rel) if lib != "torch_loop" else worst
            bad = rel > 1e-10
            failures += bad
            print(f"{cell:<24}{lib:<13} relative error of the meta-gradient vs the plain loop (float64): {rel:.1e}"
                  f"{'  <-- DIFFERS' if bad else ''}")
    print(f"worst relative error {worst:.1e}; {failures} failure(s)")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="table",
                        help=f"'table' (default: {', '.join(common.TABLE_CELLS)}), 'all', or names/patterns: "
                             f"{', '.join(common.CELLS)}")
    parser.add_argument("--libs", default=",".join(ALL_LIBS), help=f"comma-separated subset of {', '.join(ALL_LIBS)}")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads in every worker (default: all cores; use 1 on a shared machine)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7, help="timed meta-steps per worker (median reported)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every (cell, library) this many times, in rotated order; report the median")
    parser.add_argument("--meta-batch", type=int, default=None, help="override the meta-batch (default 32)")
    parser.add_argument("--quick", action="store_true", help="smoke check: --warmup 1 --steps 2, no FLOP count")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra meta-step)")
    parser.add_argument("--no-roofs", action="store_true", help="skip the GEMM roof measurement")
    parser.add_argument("--check", action="store_true", help="exactness check instead of timing (float64, B=2)")
    parser.add_argument("--profile", action="store_true",
                        help="also write a torch.profiler table of one meta-step per worker to bench/out/profile/")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for EVERY worker (repeatable), e.g. the glibc malloc tuning "
                             "MALLOC_MMAP_THRESHOLD_=33554432 and MALLOC_TRIM_THRESHOLD_=17179869184 (see README)")
    parser.add_argument("--max-rss-gib", type=float, default=10.0, help="kill a worker whose RSS exceeds this")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    parser.add_argument("--json", default=os.path.join(HERE, "out", "speed.json"))
    args = parser.parse_args(argv)

    cells = common.select_cells(args.cells)
    libs = [lib.strip() for lib in args.libs.split(",") if lib.strip()]
    unknown = [lib for lib in libs if lib not in ALL_LIBS]
    if unknown:
        parser.error(f"unknown --libs {unknown}; known: {', '.join(ALL_LIBS)}")
    if args.quick:
        args.warmup, args.steps, args.no_flops = 1, 2, True
    try:
        extra_env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        parser.error(f"--env takes KEY=VALUE, got {args.env}")
    if args.check:
        libs = [lib for lib in libs if lib != "qs_bf16"]  # float64 exactness: not a reduced-precision mode
        return check_exactness(cells, libs, args.peers_python, args.threads, args.timeout)

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"WARNING: load average {load_before[0]:.2f} before the run: the machine is not idle, the timings "
              "are rough (see the 'other' column)", file=sys.stderr)
    started = time.time()
    roofs = {}
    if not args.no_roofs:
        roofs = run_worker(sys.executable, os.path.join(PEERS_DIR, "roofs.py"),
                           ["--threads", str(args.threads), "--repeats", "5" if args.quick else "10"],
                           args.threads, 600, 1e9, extra_env)
        print(f"roofs: float32 GEMM {_fmt(roofs.get('gemm_float32_gflops'), '.0f')} GFLOP/s, bfloat16 GEMM "
              f"{_fmt(roofs.get('gemm_bfloat16_gflops'), '.0f')} GFLOP/s", flush=True)

    profile_dir = os.path.join(HERE, "out", "profile")
    if args.profile:
        os.makedirs(profile_dir, exist_ok=True)
    runs: dict[str, dict[str, list[dict]]] = {cell: {lib: [] for lib in libs} for cell in cells}
    for repeat in range(args.repeats):
        for cell in cells:
            shift = repeat % len(libs)
            for lib in libs[shift:] + libs[:shift]:
                python = python_for(lib, args.peers_python)
                if not os.path.exists(python):
                    runs[cell][lib].append({"error": f"not installed: {python} (bash bench/peers/setup.sh)"})
                    continue
                wargs = ["--lib", lib, "--cell", cell, "--threads", str(args.threads), "--warmup", str(args.warmup),
                         "--steps", str(args.steps)]
                if args.meta_batch:
                    wargs += ["--meta-batch", str(args.meta_batch)]
                if repeat == 0 and not args.no_flops:
                    wargs.append("--flops")
                if repeat == 0 and args.profile:
                    wargs += ["--profile", os.path.join(profile_dir, f"{cell}.{lib}.txt")]
                r = run_worker(python, os.path.join(PEERS_DIR, "run.py"), wargs, args.threads, args.timeout,
                               args.max_rss_gib * 1024, extra_env)
                runs[cell][lib].append(r)
                status = (f"{r['tasks_per_s']:.2f} tasks/s, peak {r['peak_rss_mib']:.0f} MiB, "
                          f"{r['minor_faults_per_step']:.0f} page faults/step"
                          if "tasks_per_s" in r else (r.get("skipped") or f"ERROR {r.get('error')}: "
                                                      f"{' | '.join(r.get('stderr_tail', [])[-3:])}"))
                print(f"[{repeat + 1}/{args.repeats}] {cell:<24}{lib:<13}{status}  (other CPU "
                      f"{r['foreign_cpu_cores']:.2f} cores, load {os.getloadavg()[0]:.2f})", flush=True)

    results: dict[str, dict[str, dict]] = {}
    for cell in cells:
        results[cell] = {}
        for lib in libs:
            done = [r for r in runs[cell][lib] if "tasks_per_s" in r]
            if not done:
                results[cell][lib] = runs[cell][lib][0] if runs[cell][lib] else {"error": "not run"}
                continue
            row = dict(done[0])
            row["tasks_per_s"] = statistics.median(r["tasks_per_s"] for r in done)
            row["tasks_per_cpu_s"] = statistics.median(r["tasks_per_cpu_s"] for r in done)
            row["median_s"] = row["meta_batch"] / row["tasks_per_s"]
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in done)
            walls = [w for r in done for w in r["wall_s"]]
            row["tasks_per_s_spread"] = (max(walls) - min(walls)) / statistics.median(walls)
            row["foreign_cpu_cores"] = max(r["foreign_cpu_cores"] for r in done)
            row["minor_faults_per_step"] = statistics.median(r["minor_faults_per_step"] for r in done)
            row["repeats"] = [{k: r.get(k) for k in ("tasks_per_s", "wall_s", "cpu_s", "peak_rss_mib", "load_start",
                                                     "load_end", "foreign_cpu_cores")} for r in done]
            results[cell][lib] = row
        summarize_cell(results[cell])
    load_after = os.getloadavg()
    print_table(results, roofs, args.threads)
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    out = {"argv": sys.argv[1:], "started": started, "finished": time.time(), "threads": args.threads, "env": extra_env,
           "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats,
           "machine": roofs.get("machine") or common.machine_info(), "load_before": load_before,
           "load_after": load_after, "roofs": {k: v for k, v in roofs.items() if k != "machine"},
           "issue_table": ISSUE_TABLE, "cells": {c: vars(common.CELLS[c]) for c in cells}, "results": results}
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(out, handle, indent=1)
    print(f"wrote {args.json}")
    errors = [(c, lib) for c in results for lib, r in results[c].items() if "error" in r and "not installed" not in r["error"]]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
