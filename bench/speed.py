"""Meta-training speed of quickstudy against learn2learn, higher, TorchOpt, a plain per-task PyTorch loop
and torch.func vmap: same machine, same run, same data, same model, every variant in its own process.

    .venv/bin/python bench/speed.py                       # the issue's table + ProtoNet + Reptile
    .venv/bin/python bench/speed.py --quick               # smoke check: 1 warm-up + 2 timed steps each
    .venv/bin/python bench/speed.py --cells all --threads 2 --repeats 3
    .venv/bin/python bench/speed.py --cells 'maml-1shot-*' --libs quickstudy,learn2learn
    .venv/bin/python bench/speed.py --check               # exactness: float64 meta-gradients vs the loop
    .venv/bin/python bench/speed.py --profile --cells maml-1shot-1step-2nd --libs quickstudy,torch_loop

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

    PYTHONPATH=/tmp/site:$PWD/src python3 bench/speed.py --device cuda --python python3 --peers-python python3 \
        --json /abs/path/speed_gpu.json

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
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS_DIR = os.path.join(HERE, "peers")
sys.path.insert(0, PEERS_DIR)

import common  # noqa: E402

ALL_LIBS = ("quickstudy", "qs_loop", "qs_bf16", "torch_loop", "learn2learn", "higher", "torchopt", "vmap")
#: the default --libs per device (qs_loop: quickstudy's leanest strategy, beside "auto": threads on CPU, vmap on CUDA)
DEFAULT_LIBS = {"cpu": ("quickstudy", "qs_loop", "qs_bf16", "torch_loop", "learn2learn", "higher", "torchopt", "vmap"),
                "cuda": ALL_LIBS}
PEER_LIBS = ("learn2learn", "higher", "torchopt")  # "the fastest peer" is the fastest of these
PROJECT_LIBS = ("quickstudy", "qs_loop", "qs_bf16", "torch_loop", "vmap")  # run by --python (no peers venv needed)
DEFAULT_PEERS_PYTHON = os.path.join(ROOT, ".peers", "venv", "bin", "python")
#: what each worker supports (its SUPPORTS) and its LIBRARY name: the driver skips the other cells without
#: starting a process (the worker would import torch and its library only to say "skipped")
LIB_SUPPORTS = {"quickstudy": {"maml", "protonet", "reptile"}, "qs_loop": {"maml", "protonet"},
                "qs_bf16": {"maml", "protonet", "reptile"}, "torch_loop": {"maml", "protonet", "reptile"},
                "learn2learn": {"maml", "protonet"}, "higher": {"maml"}, "torchopt": {"maml"}, "vmap": {"maml"}}
LIB_NAMES = {"quickstudy": "quickstudy", "qs_loop": "quickstudy (loop)", "qs_bf16": "quickstudy (bfloat16)",
             "torch_loop": "plain torch loop", "learn2learn": "learn2learn", "higher": "higher", "torchopt": "TorchOpt",
             "vmap": "torch.func vmap"}
#: per-device defaults of --warmup, --steps, --max-timed-s, --timeout (s per worker) and --budget-s (0 = none).
#: CUDA: ~41 processes of ~5-10 s start-up each (python, import torch, CUDA context, cuDNN) must fit in a few
#: minutes; GPU step times are steady (1 warm-up suffices: cuDNN's heuristics and the allocator settle there).
DEVICE_DEFAULTS = {"cpu": {"warmup": 2, "steps": 7, "max_timed_s": 0.0, "timeout": 1800.0, "budget_s": 0.0},
                   "cuda": {"warmup": 1, "steps": 5, "max_timed_s": 4.0, "timeout": 150.0, "budget_s": 345.0}}
#: rough start-up cost of one worker process (python + import torch + the library; CUDA init on the GPU), s
STARTUP_S = {"cpu": 3.0, "cuda": 7.0}

#: tasks/s (median) from the issue, measured before quickstudy existed (2-core EPYC, torch 2.13 CPU)
ISSUE_TABLE = {
    "maml-1shot-1step-2nd": {"torch_loop": 21.3, "learn2learn": 16.4, "higher": 16.6, "torchopt": 14.4, "vmap": 4.0},
    "maml-1shot-1step-1st": {"torch_loop": 16.8, "learn2learn": 17.8, "higher": 20.6, "vmap": 4.4},
    "maml-1shot-5step-2nd": {"torch_loop": 8.3, "learn2learn": 9.1, "higher": 7.2, "torchopt": 8.3, "vmap": 3.0},
    "maml-5shot-1step-2nd": {"torch_loop": 10.6, "learn2learn": 8.5, "higher": 9.6, "torchopt": 9.5, "vmap": 2.4},
}


# ----------------------------------------------------------------------------- processes


class _Stopped(Exception):
    """The driver got SIGTERM: the running worker is killed, the results so far are printed and written."""


def cpu_has_bfloat16_instructions() -> bool:
    """AVX-512 BF16 or AMX in /proc/cpuinfo (x86 Linux); True where it cannot tell. Without them torch emulates
    bfloat16 products (Trainer warns: several times slower than float32), so the default CPU run skips qs_bf16."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), None)
    except OSError:
        return True
    return flags is None or "avx512_bf16" in flags or "amx_bf16" in flags


def _on_sigterm(signum, frame):
    raise _Stopped(f"signal {signum}")


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
               extra_env: dict | None = None, keep_pythonpath: bool = False) -> dict:
    """Run one worker process; return its RESULT dict plus what the driver observed around it.

    The driver watches the worker's RSS and kills it beyond ``max_rss_mib`` (vmap can take 15 GiB) or
    after ``timeout`` seconds. ``foreign_cpu`` = CPU used by everything else on the machine while the worker
    ran, in cores (0 on an idle machine; > 0 means the timing is disturbed). The worker gets this process's
    environment without PYTHONPATH (each venv has what it needs), unless ``keep_pythonpath`` (one python3
    for everything, the packages on PYTHONPATH: the GPU machine).
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    if not keep_pythonpath:
        env.pop("PYTHONPATH", None)
    env.update(extra_env or {})
    busy0, total0 = _proc_stat_busy()
    usage0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, script, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=ROOT)
    killed = None
    watched_rss = 0.0
    try:
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
    except BaseException:  # the driver is being stopped: never leave the worker running
        proc.kill()
        proc.wait()
        raise
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


def summarize_cell(rows: dict[str, dict], mem_key: str = "peak_rss_mib") -> None:
    """Add ``ratio_to_fastest_peer``, ``ratio_to_loop`` and ``mem_ratio_to_leanest_peer`` to each row.

    ``mem_key``: the memory the ratio compares (``peak_rss_mib`` on CPU, ``gpu_peak_mib`` on CUDA)."""
    ok = {lib: r for lib, r in rows.items() if r.get("tasks_per_s")}
    peers = [r["tasks_per_s"] for lib, r in ok.items() if lib in PEER_LIBS]
    peer_mem = [r[mem_key] for lib, r in ok.items() if lib in PEER_LIBS and r.get(mem_key)]
    loop = ok.get("torch_loop", {}).get("tasks_per_s")
    loop_flops = ok.get("torch_loop", {}).get("flops")
    for r in ok.values():
        r["ratio_to_fastest_peer"] = r["tasks_per_s"] / max(peers) if peers else None
        r["ratio_to_loop"] = r["tasks_per_s"] / loop if loop else None
        r["mem_ratio_to_leanest_peer"] = r[mem_key] / min(peer_mem) if peer_mem and r.get(mem_key) else None
        # Useful FLOPs: the same maths everywhere, so the plain loop's count when a library's own count
        # differs (FlopCounterMode overcounts the grouped-convolution backward that vmap's batching rule
        # produces: 2.5x for 4 groups in torch 2.13, growing with the groups).
        r["useful_flops"] = r.get("flops")
        if loop_flops and r.get("flops") and abs(r["flops"] / loop_flops - 1) > 0.05:
            r["useful_flops"] = loop_flops
            r["flops_note"] = "own FLOP count differs from the plain loop's by more than 5%; useful FLOPs = the loop's"
        elif loop_flops and not r.get("flops") and r is not ok.get("torch_loop"):
            # FlopCounterMode sees only its own thread: the threads strategy is not counted, same maths
            r["useful_flops"] = loop_flops
            r["flops_note"] = "no own FLOP count (worker threads); useful FLOPs = the plain loop's"


def _why(r: dict) -> str:
    """Why a row has no timing: the skip reason, or the error with the worker's last error line."""
    why = r.get("skipped") or r.get("error") or "?"
    tail = [line.strip() for line in r.get("stderr_tail", []) if line.strip()]
    if "error" in r and tail:
        errors = [line for line in tail if "Error" in line or "Exception" in line]
        why += ": " + (errors[-1] if errors else tail[-1])[:160]
    return why


def device_line(device: str, machine: dict) -> str:
    """``device=cpu`` or ``device=cuda (GPU name, torch ..., CUDA ...)`` for the table's header."""
    if device != "cuda":
        return f"device={device}"
    return (f"device=cuda ({machine.get('gpu_name') or '?'}, torch {machine.get('torch', '?')}, "
            f"CUDA {machine.get('torch_cuda') or '?'}, cuDNN {machine.get('cudnn') or '?'})")


def _gflops_of(r):
    useful = r.get("useful_flops") / 1e9 if r.get("useful_flops") else None
    return (r.get("flops") / 1e9 if r.get("flops") else None), (useful / r["median_s"] if useful else None)


def print_table(results: dict, roofs: dict, threads: int, device: str = "cpu", machine: dict | None = None) -> None:
    if device == "cuda":
        return print_table_cuda(results, roofs, threads, machine or {})
    fp32 = roofs.get("gemm_float32_gflops")
    bf16 = roofs.get("gemm_bfloat16_gflops")
    print()
    print(f"{device_line(device, machine or {})}  threads={threads}  GEMM roofs: float32 {_fmt(fp32, '.0f')} GFLOP/s, "
          f"bfloat16 {_fmt(bf16, '.0f')} GFLOP/s; "
          f"Conv4 fwd+bwd (80 images) {_fmt(roofs.get('conv4_fwd_bwd_gflops'), '.0f')} GFLOP/s")
    header = (f"{'cell':<24}{'library':<13}{'tasks/s':>9}{'±':>6}{'/cpu-s':>8}{'issue':>7}{'vs peer':>8}{'vs loop':>8}"
              f"{'peak MiB':>9}{'base MiB':>9}{'kflt/t':>7}{'GFLOP/st':>9}{'GFLOP/s':>8}{'%fp32':>6}{'%bf16':>6}{'other':>6}")
    for cell, lib, r, gflop, gflops, mark in _measured_rows(results, header):
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
          "processes during the worker (0 = idle machine); GFLOP/st: FlopCounterMode count of one meta-step (*: not "
          "counted (the threads strategy: the counter sees one thread) or differs from the plain loop's by > 5%, e.g. "
          "vmap, whose grouped-convolution backward the counter overcounts; GFLOP/s and the roof shares then use the "
          "loop's count, the same maths)")


def _measured_rows(results: dict, header: str):
    """Print the header, then yield (cell, library, row, GFLOP per step, GFLOP/s, mark) for every measured row;
    rows without a measurement print why (mark '*': the FLOP count is the plain loop's)."""
    print(header)
    print("-" * len(header))
    for cell, rows in results.items():
        for lib, r in rows.items():
            if "tasks_per_s" not in r:
                print(f"{cell:<24}{lib:<13}{'':>9}  ({_why(r)})")
                continue
            gflop, gflops = _gflops_of(r)
            yield cell, lib, r, gflop, gflops, "*" if r.get("flops_note") else ""


def print_table_cuda(results: dict, roofs: dict, threads: int, machine: dict) -> None:
    """The GPU table: GPU memory instead of RSS, no CPU-only columns (issue, /cpu-s, page faults)."""
    fp32 = roofs.get("gemm_float32_gflops")
    bf16 = roofs.get("gemm_bfloat16_gflops")
    check = roofs.get("float32_check") or {}
    print()
    print(f"{device_line('cuda', machine)}  threads={threads}")
    print(f"GEMM roofs (n={roofs.get('gemm_size', '?')}): float32 {_fmt(fp32, '.0f')} GFLOP/s (TF32 off), "
          f"bfloat16 {_fmt(bf16, '.0f')} GFLOP/s; Conv4 fwd+bwd (80 images) "
          f"{_fmt(roofs.get('conv4_fwd_bwd_gflops'), '.0f')} GFLOP/s; float32 exact: "
          f"{check.get('exact_float32', '?')} (matmul rel. err {_fmt(check.get('matmul_rel_err'), '.1e')}, "
          f"conv {_fmt(check.get('conv_rel_err'), '.1e')})")
    header = (f"{'cell':<24}{'library':<13}{'tasks/s':>9}{'±':>6}{'ms/step':>9}{'vs peer':>8}{'vs loop':>8}"
              f"{'GPU MiB':>9}{'GPU base':>9}{'RSS MiB':>8}{'GFLOP/st':>9}{'GFLOP/s':>9}{'%fp32':>6}{'%bf16':>6}"
              f"{'other':>6}  strategy")
    for cell, lib, r, gflop, gflops, mark in _measured_rows(results, header):
        strategy = (r.get("details") or {}).get("strategy") or "-"
        print(f"{cell:<24}{lib:<13}{r['tasks_per_s']:>9.1f}{_fmt(r.get('tasks_per_s_spread'), '.0%'):>6}"
              f"{1e3 * r['median_s']:>9.1f}"
              f"{_fmt(r.get('ratio_to_fastest_peer'), '.2f'):>8}{_fmt(r.get('ratio_to_loop'), '.2f'):>8}"
              f"{_fmt(r.get('gpu_peak_mib'), '.0f'):>9}{_fmt(r.get('gpu_base_mib'), '.0f'):>9}"
              f"{r['peak_rss_mib']:>8.0f}{_fmt(gflop, '.1f') + mark:>9}{_fmt(gflops, '.0f'):>9}"
              f"{_fmt(gflops and fp32 and 100 * gflops / fp32, '.1f'):>6}"
              f"{_fmt(gflops and bf16 and 100 * gflops / bf16, '.1f'):>6}{r.get('foreign_cpu_cores', 0):>6.2f}"
              f"  {strategy.split(' ')[0]}")
    print("tasks/s: meta-batch / median meta-step wall time (each step ends with torch.cuda.synchronize()); ±: "
          "(max-min)/median of the timed steps; vs peer: / fastest of learn2learn, higher, TorchOpt; GPU MiB: "
          "torch.cuda.max_memory_allocated over the timed steps (the counter is reset after the warm-up; the warm-up's "
          "peak is gpu_peak_warmup_mib in the JSON); GPU base: allocated after building model and batch; RSS MiB: "
          "ru_maxrss of the worker; GFLOP/st: FlopCounterMode count of one meta-step (*: differs from the plain loop's "
          "by > 5%: vmap's grouped-convolution backward is overcounted; GFLOP/s and the roof shares then use the "
          "loop's count); %fp32/%bf16: share of the GPU's GEMM roofs; other: CPU cores used by other processes; "
          "strategy: what quickstudy's strategy resolved to. Every float32 row is exact float32 (TF32 off).")


# ----------------------------------------------------------------------------- modes


def resolve_python(python: str | None) -> str | None:
    """An interpreter given by name (``python3``) is looked up on PATH; a path is kept as it is."""
    if python and os.sep not in python:
        return shutil.which(python) or python
    return python


def python_for(lib: str, peers_python: str, python: str | None = None) -> str:
    """The interpreter of ``lib``'s worker: ``python`` (default: this one) for the project's rows, else the peers'."""
    return (python or sys.executable) if lib in PROJECT_LIBS else peers_python


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
                print(f"{cell:<24}{lib:<13} not installed ({interpreter})")
                continue
            path = os.path.join(out_dir, f"{cell}.{lib}.pt")
            r = run_worker(interpreter, os.path.join(PEERS_DIR, "run.py"),
                           ["--lib", lib, "--cell", cell, "--threads", str(threads), "--warmup", "0", "--steps", "0",
                            "--meta-batch", "2", "--float64", "--dump-grad", path] + device_args, threads, timeout, 1e9,
                           keep_pythonpath=keep_pythonpath)
            if r.get("skipped"):
                continue
            if "error" in r:
                print(f"{cell:<24}{lib:<13} ERROR {r['error']}: {' | '.join(r.get('stderr_tail', [])[-3:])}")
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
            print(f"{cell:<24}{lib:<13} relative error of the meta-gradient vs the plain loop (float64): {rel:.1e}"
                  f"{'  <-- DIFFERS' if bad else ''}")
    print(f"worst relative error {worst:.1e}; {failures} failure(s)")
    return 1 if failures else 0


def aggregate(runs: dict, cells: list[str], libs: list[str], mem_key: str) -> dict[str, dict[str, dict]]:
    """Per (cell, library): the median over the repeats that produced a timing, or the first failure."""
    results: dict[str, dict[str, dict]] = {}
    for cell in cells:
        results[cell] = {}
        for lib in libs:
            done = [r for r in runs[cell][lib] if "tasks_per_s" in r]
            if not done:
                results[cell][lib] = runs[cell][lib][0] if runs[cell][lib] else {"skipped": "not run yet"}
                continue
            row = dict(done[0])
            row["tasks_per_s"] = statistics.median(r["tasks_per_s"] for r in done)
            row["tasks_per_cpu_s"] = statistics.median(r["tasks_per_cpu_s"] for r in done)
            row["median_s"] = row["meta_batch"] / row["tasks_per_s"]
            row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in done)
            if any(r.get("gpu_peak_mib") is not None for r in done):
                row["gpu_peak_mib"] = max(r.get("gpu_peak_mib") or 0.0 for r in done)
            walls = [w for r in done for w in r["wall_s"]]
            row["tasks_per_s_spread"] = (max(walls) - min(walls)) / statistics.median(walls)
            row["foreign_cpu_cores"] = max(r["foreign_cpu_cores"] for r in done)
            row["minor_faults_per_step"] = statistics.median(r["minor_faults_per_step"] for r in done)
            keys = ("tasks_per_s", "wall_s", "cpu_s", "peak_rss_mib", "load_start", "load_end", "foreign_cpu_cores")
            if mem_key != "peak_rss_mib":
                keys += (mem_key, "gpu_peak_warmup_mib")
            row["repeats"] = [{k: r.get(k) for k in keys} for r in done]
            results[cell][lib] = row
        summarize_cell(results[cell], mem_key)
    return results


def write_json(path: str, out: dict) -> None:
    """Write ``out`` to ``path`` (absolute or relative to the current directory) through a temporary file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(out, handle, indent=1)
    os.replace(tmp, path)


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
    planned = [(cell, lib) for cell in cells for lib in libs if common.CELLS[cell].algo in LIB_SUPPORTS[lib]]
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
                roofs = run_worker(python, os.path.join(PEERS_DIR, "roofs.py"),
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
                    algo = common.CELLS[cell].algo
                    if algo not in LIB_SUPPORTS[lib]:
                        if repeat == 0:
                            runs[cell][lib].append({"lib": lib, "cell": cell, "skipped": f"{LIB_NAMES[lib]} has no {algo}"})
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
                    r = run_worker(interpreter, os.path.join(PEERS_DIR, "run.py"), wargs, args.threads, worker_timeout(),
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
                    print(f"[{repeat + 1}/{args.repeats}] {cell:<24}{lib:<13}{status}  (other CPU "
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
