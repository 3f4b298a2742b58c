"""Worker processes of the speed benchmark: start one, watch its memory and time, read its RESULT line, and
measure what the rest of the machine used meanwhile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from bench.libraries import PROJECT_LIBS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_worker(python: str, module: str, args: list[str], threads: int, timeout: float, max_rss_mib: float,
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
    proc = subprocess.Popen([python, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
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


def resolve_python(python: str | None) -> str | None:
    """An interpreter given by name (``python3``) is looked up on PATH; a path is kept as it is."""
    if python and os.sep not in python:
        return shutil.which(python) or python
    return python


def python_for(lib: str, peers_python: str, python: str | None = None) -> str:
    """The interpreter of ``lib``'s worker: ``python`` (default: this one) for the project's rows, else the peers'."""
    return (python or sys.executable) if lib in PROJECT_LIBS else peers_python


