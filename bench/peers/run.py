"""Run ONE benchmark variant (a library on a cell) in this process and print one ``RESULT {json}`` line.

bench/speed.py starts one of these per variant, in the project venv for quickstudy (and the plain-torch
workers) and in .peers/venv for the peers::

    python -m bench.peers.run --lib torch_loop --cell maml-1shot-1step-2nd --threads 1 --warmup 2 --steps 5
    .peers/venv/bin/python -m bench.peers.run --lib learn2learn --cell maml-1shot-1step-2nd --threads 1

(from the repository root: ``-m`` puts it on ``sys.path``; quickstudy is installed in both venvs)

``--lib`` names a module ``<lib>_worker.py`` beside this file whose ``build(cell, batch, dtype)`` returns
``(step, params)``: ``step()`` is one full meta-step (zero_grad, meta-gradient, Adam step) and ``params``
the meta-parameters in the reference Conv4 order. ``LIBRARY``/``version()``/``NOTES`` describe it.

``--device cuda``: the batch is made on the CPU and moved to the GPU, the worker puts its model where the
batch is, TF32 is off (``common.setup_device``), every timer waits for ``torch.cuda.synchronize()``, and
the result has the GPU memory: ``gpu_base_mib`` (allocated after building model and batch),
``gpu_peak_warmup_mib`` (peak during the warm-up steps: first-step allocations, Adam state) and
``gpu_peak_mib`` (``torch.cuda.max_memory_allocated`` over the timed steps only: the counter is reset
after the warm-up), plus the allocator's reserved peak.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import asdict

LIBS = ("quickstudy", "qs_loop", "qs_bf16", "qs_loss", "qs_user", "qs_user_loss", "torch_loop", "learn2learn",
        "higher", "torchopt", "parallel_metalearn", "easyfsl", "vmap")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lib", required=True, choices=LIBS)
    parser.add_argument("--cell", required=True)
    parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads (always explicit)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=7, help="timed meta-steps (the median is reported)")
    parser.add_argument("--meta-batch", type=int, default=None, help="override the cell's meta-batch (32)")
    parser.add_argument("--inner-steps", type=int, default=None, help="override the cell's inner steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true", help="model and data in float64 (exactness checks)")
    parser.add_argument("--flops", action="store_true", help="count the FLOPs of one extra meta-step")
    parser.add_argument("--profile", metavar="PATH", help="torch.profiler table of one extra meta-step -> PATH")
    parser.add_argument("--dump-grad", metavar="PATH", help="torch.save the meta-gradient of the first step")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--max-timed-s", type=float, default=None,
                        help="stop timing after this many seconds of timed steps (at least 3 steps; default: none)")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    import torch

    from bench.peers import common

    common.set_threads(args.threads)
    cell = common.CELLS[args.cell]
    if args.meta_batch:
        cell = cell.with_meta_batch(args.meta_batch)
    if args.inner_steps is not None:
        cell = cell.replace(steps=args.inner_steps)
    dtype = torch.float64 if args.float64 else torch.float32
    worker = importlib.import_module(f"bench.peers.{args.lib}_worker")
    if cell.algo not in worker.SUPPORTS or cell.model not in getattr(worker, "MODELS", ("conv4",)):
        what = cell.algo if cell.algo not in worker.SUPPORTS else f"{cell.model} model"
        common.emit({"lib": args.lib, "cell": args.cell, "skipped": f"{worker.LIBRARY} has no {what}"})
        return
    cuda = args.device == "cuda"
    device_info = common.setup_device(args.device)  # cuda: TF32 off; raises without a GPU
    sync = common.synchronizer(args.device)
    batch = common.make_batch(cell, args.seed, dtype, device=None if args.device == "cpu" else args.device)
    torch.manual_seed(args.seed)
    step, params = worker.build(cell, batch, dtype)
    if cuda:
        sync()
        gpu_base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    rss_before = common.rss_mib()

    result = {"lib": args.lib, "library": worker.LIBRARY, "version": worker.version(), "cell": args.cell,
              "cell_spec": asdict(cell), "threads": torch.get_num_threads(),
              "meta_batch": cell.meta_batch, "dtype": str(dtype), "notes": getattr(worker, "NOTES", ""),
              "pid": os.getpid(), "python": sys.executable, "load_start": load_start}
    if args.device != "cpu":
        result["device"] = args.device
        result.update(device_info)
        details = getattr(worker, "DETAILS", None)
        if details:
            result["details"] = dict(details)
    if cuda:
        result["gpu_name"] = torch.cuda.get_device_name()
        result["gpu_base_mib"] = gpu_base
    if args.dump_grad:
        step()
        torch.save([p.grad.detach().cpu().clone() if p.grad is not None else None for p in params], args.dump_grad)
        result["dumped"] = args.dump_grad
    if args.steps > 0:
        warm = {}

        def after_warmup():
            if cuda:
                warm["gpu_peak_warmup_mib"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()

        timing = common.time_steps(step, args.warmup, args.steps, sync=sync, after_warmup=after_warmup,
                                   max_timed_s=args.max_timed_s)
        result.update(timing)
        if args.max_timed_s is not None:
            result["steps_requested"] = args.steps
            result["max_timed_s"] = args.max_timed_s
        result.update(warm)
        result["tasks_per_s"] = cell.meta_batch / timing["median_s"]
        result["tasks_per_cpu_s"] = cell.meta_batch / timing["median_cpu_s"]
    result["rss_before_mib"] = rss_before
    result["peak_rss_mib"] = common.peak_rss_mib()  # before the FLOP counter / profiler add their own
    if cuda:
        memory = common.gpu_memory_mib()
        result["gpu_peak_mib"] = memory["max_allocated"]  # over the timed steps (reset after the warm-up)
        result["gpu_reserved_peak_mib"] = memory["max_reserved"]
    if args.flops:
        result["flops"] = common.count_flops(step)
        if sync is not None:
            sync()
    if args.profile:
        result["profile"] = common.profile_step(step, args.profile, sync=sync)
    result["load_end"] = os.getloadavg()
    result["finished"] = time.time()
    common.emit(result)


if __name__ == "__main__":
    main()
