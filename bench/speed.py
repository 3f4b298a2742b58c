"""Meta-training speed of quickstudy against learn2learn, higher, TorchOpt, parallel-metalearn, easyfsl, a plain
per-task PyTorch loop and torch.func vmap: same machine, same run, same data, same model, every variant in its own
process.

    .venv/bin/python -m bench.speed                       # the issue's table + ProtoNet + Reptile
    .venv/bin/python -m bench.speed --quick               # smoke check: 1 warm-up + 2 timed steps each
    .venv/bin/python -m bench.speed --cells all --threads 2 --repeats 3
    .venv/bin/python -m bench.speed --cells 'maml-1shot-*' --libs quickstudy,learn2learn
    .venv/bin/python -m bench.speed --check               # exactness: float64 meta-gradients vs the loop
    .venv/bin/python -m bench.speed --profile --cells maml-1shot-1step-2nd --libs quickstudy,torch_loop

Peers run from .peers/venv (``bash bench/peers/setup.sh``); quickstudy, the plain loop and vmap from
this interpreter (or ``--python``). ``qs_bf16`` is quickstudy's bfloat16 mode (``train.precision: bfloat16``,
autocast); ``qs_loop`` is quickstudy with ``strategy="loop"``; every other row is exact float32. What each
worker does: bench/peers/*_worker.py and bench/README.md.

GPU: ``--device cuda`` (model and batch on the GPU, TF32 off everywhere, timers after
``torch.cuda.synchronize()``, peak GPU memory instead of RSS, GEMM roofs of the GPU; by default 1 warm-up
and 5 timed steps, at most ~4 s of them (--max-timed-s, at least 3 steps), no worker started after 345 s
(--budget-s) and a 150 s worker timeout: the default run ends within ~6.5 minutes). With one interpreter for everything
(no venvs): ``--python python3 --peers-python python3`` and the packages on PYTHONPATH, which the workers
then inherit (see ``--keep-pythonpath``)::

    PYTHONPATH=/tmp/site:$PWD/src python3 -m bench.speed --device cuda --python python3 --peers-python python3 \
        --json /abs/path/speed_gpu.json

Printed: per cell and library, tasks/s (B / median meta-step wall time over --steps timed steps after
--warmup), the same per CPU-second of the worker, peak RSS of the worker process (ru_maxrss) and its RSS
before the first step, the ratio to the fastest of learn2learn/higher/TorchOpt, FLOPs of one meta-step
(FlopCounterMode) and achieved GFLOP/s as a share of the float32 and bfloat16 GEMM roofs measured at the
start of the run. JSON: bench/out/speed.json (machine, load averages, roofs, every raw timing).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from bench.libraries import ALL_LIBS, DEFAULT_LIBS, ISSUE_TABLE, LIB_NAMES, has_cell
from bench.peers import common
from bench.processes import (_on_sigterm, _Stopped, cpu_has_bfloat16_instructions, python_for, resolve_python,
                             run_worker)
from bench.speed_table import _fmt, aggregate, print_table, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DEFAULT_PEERS_PYTHON = os.path.join(ROOT, ".peers", "venv", "bin", "python")
#: per-device defaults of --warmup, --steps, --max-timed-s, --timeout (s per worker) and --budget-s (0 = none).
#: CUDA: ~41 processes of ~5-10 s start-up each (python, import torch, CUDA context, cuDNN) must fit in a few
#: minutes; GPU step times are steady (1 warm-up suffices: cuDNN's heuristics and the allocator settle there).
DEVICE_DEFAULTS = {"cpu": {"warmup": 2, "steps": 7, "max_timed_s": 0.0, "timeout": 1800.0, "budget_s": 0.0},
                   "cuda": {"warmup": 1, "steps": 5, "max_timed_s": 4.0, "timeout": 150.0, "budget_s": 345.0}}
#: rough start-up cost of one worker process (python + import torch + the library; CUDA init on the GPU), s
STARTUP_S = {"cpu": 3.0, "cuda": 7.0}


def check_exactness(cells, libs, peers_python, threads, timeout, python=None, device="cpu",
                    keep_pythonpath=False) -> int:
    """float64, meta-batch 2, one step: every library's meta-gradient against the plain loop's."""
    import torch

    out_dir = os.path.join(HERE, "out", "grads")
    os.makedirs(out_dir, exist_ok=True)
    worst = 0.0
    failures = 0
    device_args = ["--device", device] if device != "cpu" else []
    for cell in cells:
        paths = {}
        for lib in ["torch_loop"] + [lib for lib in libs if lib != "torch_loop"]:
            interpreter = python_for(lib, peers_python, python)
            if not os.path.exists(interpreter):
                print(f"{cell:<30}{lib:<19} not installed ({interpreter})")
                continue
            path = os.path.join(out_dir, f"{cell}.{lib}.pt")
            r = run_worker(interpreter, "bench.peers.run",
                           ["--lib", lib, "--cell", cell, "--threads", str(threads), "--warmup", "0", "--steps", "0",
                            "--meta-batch", "2", "--float64", "--dump-grad", path] + device_args, threads, timeout, 1e9,
                           keep_pythonpath=keep_pythonpath)
            if r.get("skipped"):
                continue
            if "error" in r:
                print(f"{cell:<30}{lib:<19} ERROR {r['error']}: {' | '.join(r.get('stderr_tail', [])[-3:])}")
                failures += 1
                continue
            paths[lib] = path
        if "torch_loop" not in paths:
            continue
        ref = torch.load(paths["torch_loop"], map_location="cpu")
        for lib, path in paths.items():
            grads = torch.load(path, map_location="cpu")
            num = sum(float(((a - b) ** 2).sum()) for a, b in zip(grads, ref)) ** 0.5
            den = sum(float((b ** 2).sum()) for b in ref) ** 0.5
            rel = num / den
            worst = max(worst, rel) if lib != "torch_loop" else worst
            bad = rel > 1e-10
            failures += bad
            print(f"{cell:<30}{lib:<19} relative error of the meta-gradient vs the plain loop (float64): {rel:.1e}"
                  f"{'  <-- DIFFERS' if bad else ''}")
    print(f"worst relative error {worst:.1e}; {failures} failure(s)")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the workers run (default cpu). cuda: see the module docstring")
    parser.add_argument("--cells", default="table",
                        help=f"'table' (default: {', '.join(common.TABLE_CELLS)}), 'all', or names/patterns: "
                             f"{', '.join(common.CELLS)}")
    parser.add_argument("--libs", default=None,
                        help=f"comma-separated subset of {', '.join(ALL_LIBS)} (default: "
                             f"{','.join(DEFAULT_LIBS['cpu'])} on cpu, all of them on cuda)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads in every worker (default: all cores; use 1 on a shared machine)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed meta-steps per worker (default 2 on cpu, 1 on cuda)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed meta-steps per worker, median reported (default 7 on cpu, 5 on cuda)")
    parser.add_argument("--max-timed-s", type=float, default=None,
                        help="a worker stops timing once its timed steps add up to this (at least 3 steps; "
                             "default: none on cpu, 4 on cuda; 0 = none)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every (cell, library) this many times, in rotated order; report the median")
    parser.add_argument("--meta-batch", type=int, default=None, help="override the meta-batch (default 32)")
    parser.add_argument("--quick", action="store_true", help="smoke check: --warmup 1 --steps 2, no FLOP count")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra meta-step)")
    parser.add_argument("--no-roofs", action="store_true", help="skip the GEMM roof measurement")
    parser.add_argument("--check", action="store_true", help="exactness check instead of timing (float64, B=2)")
    parser.add_argument("--profile", action="store_true",
                        help="also write a torch.profiler table of one meta-step per worker to bench/out/profile/")
    parser.add_argument("--python", default=None,
                        help="interpreter of the project's rows (quickstudy, qs_loop, qs_bf16, torch_loop, vmap) and "
                             "of the roofs; a name is looked up on PATH (default: this interpreter)")
    parser.add_argument("--peers-python", default=DEFAULT_PEERS_PYTHON,
                        help="interpreter of learn2learn, higher and TorchOpt (default .peers/venv/bin/python); a "
                             "name is looked up on PATH")
    parser.add_argument("--keep-pythonpath", action=argparse.BooleanOptionalAction, default=None,
                        help="pass PYTHONPATH on to the workers (default: yes with --python or --device cuda, "
                             "else it is dropped: each venv has its own packages)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable for EVERY worker (repeatable), e.g. the glibc malloc tuning "
                             "MALLOC_MMAP_THRESHOLD_=33554432 and MALLOC_TRIM_THRESHOLD_=17179869184 (see README)")
    parser.add_argument("--max-rss-gib", type=float, default=10.0, help="kill a worker whose RSS exceeds this")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per worker (default 1800 on cpu, 150 on cuda)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no worker after this many seconds of the run; the rest are reported as not run "
                             "(default: none on cpu, 345 on cuda; 0 = none). A worker started late gets at most the "
                             "budget left + 45 s")
    parser.add_argument("--json", default=os.path.join(HERE, "out", "speed.json"),
                        help="output path, absolute or relative to the current directory (written after every "
                             "worker with complete=false, and at the end)")
    args = parser.parse_args(argv)

    defaults = DEVICE_DEFAULTS[args.device]
    cells = common.select_cells(args.cells)
    libs = [lib.strip() for lib in (args.libs or ",".join(DEFAULT_LIBS[args.device])).split(",") if lib.strip()]
    if args.libs is None and args.device == "cpu" and not cpu_has_bfloat16_instructions():
        libs = [lib for lib in libs if lib != "qs_bf16"]
        print("note: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX): the qs_bf16 rows are skipped "
              "(--libs with qs_bf16 runs them anyway)", flush=True)
    unknown = [lib for lib in libs if lib not in ALL_LIBS]
    if unknown:
        parser.error(f"unknown --libs {unknown}; known: {', '.join(ALL_LIBS)}")
    if args.warmup is None:
        args.warmup = defaults["warmup"]
    if args.steps is None:
        args.steps = defaults["steps"]
    if args.timeout is None:
        args.timeout = defaults["timeout"]
    if args.budget_s is None:
        args.budget_s = defaults["budget_s"]
    if args.max_timed_s is None:
        args.max_timed_s = defaults["max_timed_s"]
    if args.quick:
        args.warmup, args.steps, args.no_flops = 1, 2, True
    try:
        extra_env = dict(item.split("=", 1) for item in args.env)
    except ValueError:
        parser.error(f"--env takes KEY=VALUE, got {args.env}")
    keep_pythonpath = args.keep_pythonpath
    if keep_pythonpath is None:
        keep_pythonpath = args.python is not None or args.device == "cuda"
    python = resolve_python(args.python) or sys.executable
    peers_python = resolve_python(args.peers_python)
    device_args = ["--device", args.device] if args.device != "cpu" else []
    if args.check:
        libs = [lib for lib in libs if lib != "qs_bf16"]  # float64 exactness: not a reduced-precision mode
        return check_exactness(cells, libs, peers_python, args.threads, args.timeout, python, args.device,
                               keep_pythonpath)

    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"WARNING: load average {load_before[0]:.2f} before the run: the machine is not idle, the timings "
              "are rough (see the 'other' column)", file=sys.stderr)
    started = time.time()
    t_start = time.perf_counter()
    planned = [(cell, lib) for cell in cells for lib in libs if has_cell(lib, cell)]
    workers = len(planned) * args.repeats + (0 if args.no_roofs else 1)
    print(f"device={args.device}: {workers} worker processes ({len(planned)} variants x {args.repeats} repeat(s)"
          f"{'' if args.no_roofs else ' + roofs'}); start-up alone ~{workers * STARTUP_S[args.device]:.0f} s at "
          f"~{STARTUP_S[args.device]:.0f} s each, plus {args.warmup} warm-up + {args.steps} timed"
          f"{f' (at most ~{args.max_timed_s:g} s of them)' if args.max_timed_s > 0 else ''}"
          f"{'' if args.no_flops else ' + 1 counted'} meta-steps per variant"
          + (f"; --budget-s {args.budget_s:.0f}: no worker starts after that" if args.budget_s > 0 else ""),
          flush=True)
    print(f"interpreters: project rows {python}, peers {peers_python}; PYTHONPATH "
          f"{'passed on: ' + os.environ.get('PYTHONPATH', '(unset)') if keep_pythonpath else 'dropped'}", flush=True)

    def budget_left() -> float | None:
        return None if args.budget_s <= 0 else args.budget_s - (time.perf_counter() - t_start)

    def worker_timeout() -> float:
        left = budget_left()
        return args.timeout if left is None else max(1.0, min(args.timeout, left + 45.0))

    roofs = {}
    stopped = None  # SIGTERM (e.g. an outer `timeout`) or Ctrl-C: stop, print and write what was measured
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding caller): no SIGTERM handling
        previous_sigterm = None
    try:
        if not args.no_roofs:
            if not os.path.exists(python):
                roofs = {"error": f"not installed: {python}"}
            else:
                roofs = run_worker(python, "bench.peers.roofs",
                                   ["--threads", str(args.threads), "--repeats", "5" if args.quick else "10"] + device_args,
                                   args.threads, min(600.0, worker_timeout()), 1e9, extra_env, keep_pythonpath)
            print(f"roofs: float32 GEMM {_fmt(roofs.get('gemm_float32_gflops'), '.0f')} GFLOP/s, bfloat16 GEMM "
                  f"{_fmt(roofs.get('gemm_bfloat16_gflops'), '.0f')} GFLOP/s", flush=True)
            if "error" in roofs:
                print(f"roofs FAILED: {roofs['error']}: {' | '.join(roofs.get('stderr_tail', [])[-3:])}", flush=True)
    except (_Stopped, KeyboardInterrupt) as error:
        stopped = f"{type(error).__name__} {error}".strip()
    machine = roofs.get("machine") or common.machine_info(args.device, init_cuda=False)
    mem_key = "gpu_peak_mib" if args.device == "cuda" else "peak_rss_mib"

    profile_dir = os.path.join(HERE, "out", "profile")
    if args.profile:
        os.makedirs(profile_dir, exist_ok=True)
    runs: dict[str, dict[str, list[dict]]] = {cell: {lib: [] for lib in libs} for cell in cells}
    not_run = 0

    def output(complete: bool, load_after=None) -> dict:
        return {"argv": sys.argv[1:], "complete": complete, "device": args.device, "started": started,
                "finished": time.time(), "threads": args.threads, "env": extra_env,
                "warmup": args.warmup, "steps": args.steps, "max_timed_s": args.max_timed_s or None,
                "repeats": args.repeats, "libs": libs,
                "python": python, "peers_python": peers_python, "keep_pythonpath": keep_pythonpath,
                "pythonpath": os.environ.get("PYTHONPATH") if keep_pythonpath else None,
                "budget_s": args.budget_s, "timeout_s": args.timeout, "not_run_over_budget": not_run,
                "float32_mode": common.FLOAT32_MODE if args.device == "cuda" else "float32 (CPU)",
                "machine": machine, "load_before": load_before, "load_after": load_after,
                "roofs": {k: v for k, v in roofs.items() if k != "machine"},
                "issue_table": ISSUE_TABLE, "cells": {c: vars(common.CELLS[c]) for c in cells},
                "results": aggregate(runs, cells, libs, mem_key)}

    try:
        if stopped:
            raise _Stopped(stopped)
        for repeat in range(args.repeats):
            for cell in cells:
                shift = repeat % len(libs)
                for lib in libs[shift:] + libs[:shift]:
                    if not has_cell(lib, cell):
                        if repeat == 0:
                            runs[cell][lib].append({"lib": lib, "cell": cell,
                                                    "skipped": f"{LIB_NAMES[lib]} has no {cell}"})
                        continue
                    interpreter = python_for(lib, peers_python, python)
                    if not os.path.exists(interpreter):
                        runs[cell][lib].append({"error": f"not installed: {interpreter} "
                                                         "(bash bench/peers/setup.sh, or setup_offline.sh)"})
                        continue
                    left = budget_left()
                    if left is not None and left <= 0:
                        not_run += 1
                        if not runs[cell][lib]:
                            runs[cell][lib].append({"skipped": f"not run: --budget-s {args.budget_s:.0f} s used up"})
                        continue
                    wargs = ["--lib", lib, "--cell", cell, "--threads", str(args.threads), "--warmup", str(args.warmup),
                             "--steps", str(args.steps)] + device_args
                    if args.meta_batch:
                        wargs += ["--meta-batch", str(args.meta_batch)]
                    if args.max_timed_s > 0:
                        wargs += ["--max-timed-s", str(args.max_timed_s)]
                    if repeat == 0 and not args.no_flops:
                        wargs.append("--flops")
                    if repeat == 0 and args.profile:
                        wargs += ["--profile", os.path.join(profile_dir, f"{cell}.{lib}.txt")]
                    r = run_worker(interpreter, "bench.peers.run", wargs, args.threads, worker_timeout(),
                                   args.max_rss_gib * 1024, extra_env, keep_pythonpath)
                    runs[cell][lib].append(r)
                    if "tasks_per_s" in r:
                        memory = (f"GPU peak {r['gpu_peak_mib']:.0f} MiB, RSS {r['peak_rss_mib']:.0f} MiB"
                                  if r.get("gpu_peak_mib") is not None else
                                  f"peak {r['peak_rss_mib']:.0f} MiB, {r['minor_faults_per_step']:.0f} page faults/step")
                        status = f"{r['tasks_per_s']:.2f} tasks/s, {memory}"
                    else:
                        status = (r.get("skipped") or f"ERROR {r.get('error')}: "
                                  f"{' | '.join(r.get('stderr_tail', [])[-3:])}")
                    print(f"[{repeat + 1}/{args.repeats}] {cell:<30}{lib:<19}{status}  (other CPU "
                          f"{r['foreign_cpu_cores']:.2f} cores, load {os.getloadavg()[0]:.2f}, {r['elapsed_s']:.0f} s, "
                          f"{time.perf_counter() - t_start:.0f} s in)", flush=True)
                    try:
                        write_json(args.json, output(False))
                    except Exception as error:  # noqa: BLE001 - a partial JSON is a convenience, never fatal
                        print(f"could not write the partial JSON: {type(error).__name__}: {error}", file=sys.stderr)
    except (_Stopped, KeyboardInterrupt) as error:
        stopped = stopped or f"{type(error).__name__} {error}".strip()
        print(f"STOPPED ({stopped}): the table and the JSON hold what was measured so far", flush=True)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)

    load_after = os.getloadavg()
    out = output(not stopped, load_after)
    results = out["results"]
    print_table(results, roofs, args.threads, args.device, machine)
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
          f"{time.perf_counter() - t_start:.0f} s in all")
    if not_run:
        print(f"WARNING: {not_run} variant run(s) not started: --budget-s {args.budget_s:.0f} s used up")
    out["stopped"] = stopped
    write_json(args.json, out)
    print(f"wrote {args.json}")
    errors = [(c, lib) for c in results for lib, r in results[c].items() if "error" in r and "not installed" not in r["error"]]
    return 1 if errors or stopped else 0


if __name__ == "__main__":
    sys.exit(main())

