"""The speed benchmark's tables: ratios to the fastest peer and to the plain loop, useful FLOPs, the CPU and GPU
tables, and the median over repeats."""

from __future__ import annotations

import json
import os
import statistics

from bench.libraries import ISSUE_TABLE, PEER_LIBS


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
    header = (f"{'cell':<30}{'library':<19}{'tasks/s':>9}{'±':>6}{'/cpu-s':>8}{'issue':>7}{'vs peer':>8}{'vs loop':>8}"
              f"{'peak MiB':>9}{'base MiB':>9}{'kflt/t':>7}{'GFLOP/st':>9}{'GFLOP/s':>8}{'%fp32':>6}{'%bf16':>6}{'other':>6}")
    for cell, lib, r, gflop, gflops, mark in _measured_rows(results, header):
        spread = r.get("tasks_per_s_spread")
        print(f"{cell:<30}{lib:<19}{r['tasks_per_s']:>9.2f}{_fmt(spread, '.0%'):>6}{r['tasks_per_cpu_s']:>8.2f}"
              f"{_fmt(ISSUE_TABLE.get(cell, {}).get(lib), '.1f'):>7}"
              f"{_fmt(r.get('ratio_to_fastest_peer'), '.2f'):>8}{_fmt(r.get('ratio_to_loop'), '.2f'):>8}"
              f"{r['peak_rss_mib']:>9.0f}{r['rss_before_mib']:>9.0f}"
              f"{_fmt(r.get('minor_faults_per_step') and r['minor_faults_per_step'] / r['meta_batch'] / 1e3, '.1f'):>7}"
              f"{_fmt(gflop, '.1f') + mark:>9}"
              f"{_fmt(gflops, '.1f'):>8}{_fmt(gflops and fp32 and 100 * gflops / fp32, '.0f'):>6}"
              f"{_fmt(gflops and bf16 and 100 * gflops / bf16, '.0f'):>6}{r.get('foreign_cpu_cores', 0):>6.2f}")
    print("tasks/s: meta-batch / median meta-step wall time; ±: (max-min)/median of the timed steps; /cpu-s: per "
          "CPU-second of the worker; issue: the issue's number; vs peer: / fastest of learn2learn, higher, TorchOpt, parallel-metalearn, easyfsl; "
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
                print(f"{cell:<30}{lib:<19}{'':>9}  ({_why(r)})")
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
    header = (f"{'cell':<30}{'library':<19}{'tasks/s':>9}{'±':>6}{'ms/step':>9}{'vs peer':>8}{'vs loop':>8}"
              f"{'GPU MiB':>9}{'GPU base':>9}{'RSS MiB':>8}{'GFLOP/st':>9}{'GFLOP/s':>9}{'%fp32':>6}{'%bf16':>6}"
              f"{'other':>6}  strategy")
    for cell, lib, r, gflop, gflops, mark in _measured_rows(results, header):
        strategy = (r.get("details") or {}).get("strategy") or "-"
        print(f"{cell:<30}{lib:<19}{r['tasks_per_s']:>9.1f}{_fmt(r.get('tasks_per_s_spread'), '.0%'):>6}"
              f"{1e3 * r['median_s']:>9.1f}"
              f"{_fmt(r.get('ratio_to_fastest_peer'), '.2f'):>8}{_fmt(r.get('ratio_to_loop'), '.2f'):>8}"
              f"{_fmt(r.get('gpu_peak_mib'), '.0f'):>9}{_fmt(r.get('gpu_base_mib'), '.0f'):>9}"
              f"{r['peak_rss_mib']:>8.0f}{_fmt(gflop, '.1f') + mark:>9}{_fmt(gflops, '.0f'):>9}"
              f"{_fmt(gflops and fp32 and 100 * gflops / fp32, '.1f'):>6}"
              f"{_fmt(gflops and bf16 and 100 * gflops / bf16, '.1f'):>6}{r.get('foreign_cpu_cores', 0):>6.2f}"
              f"  {strategy.split(' ')[0]}")
    print("tasks/s: meta-batch / median meta-step wall time (each step ends with torch.cuda.synchronize()); ±: "
          "(max-min)/median of the timed steps; vs peer: / fastest of learn2learn, higher, TorchOpt, parallel-metalearn, easyfsl; GPU MiB: "
          "torch.cuda.max_memory_allocated over the timed steps (the counter is reset after the warm-up; the warm-up's "
          "peak is gpu_peak_warmup_mib in the JSON); GPU base: allocated after building model and batch; RSS MiB: "
          "ru_maxrss of the worker; GFLOP/st: FlopCounterMode count of one meta-step (*: differs from the plain loop's "
          "by > 5%: vmap's grouped-convolution backward is overcounted; GFLOP/s and the roof shares then use the "
          "loop's count); %fp32/%bf16: share of the GPU's GEMM roofs; other: CPU cores used by other processes; "
          "strategy: what quickstudy's strategy resolved to. Every float32 row is exact float32 (TF32 off).")


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


