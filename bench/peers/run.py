"""Run ONE benchmark variant (a library on a cell) in this process and print one ``RESULT {json}`` line.

bench/speed.py starts one of these per variant, in the project venv for quickstudy (and the plain-torch
workers) and in .peers/venv for the peers::

    python bench/peers/run.py --lib torch_loop --cell maml-1shot-1step-2nd --threads 1 --warmup 2 --steps 5
    .peers/venv/bin/python bench/peers/run.py --lib learn2learn --cell maml-1shot-1step-2nd --threads 1

``--lib`` names a module ``<lib>_worker.py`` beside this file whose ``build(cell, batch, dtype)`` returns
``(step, params)``: ``step()`` is one full meta-step (zero_grad, meta-gradient, Adam step) and ``params``
the meta-parameters in the reference Conv4 order. ``LIBRARY``/``version()``/``NOTES`` describe it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

LIBS = ("quickstudy", "qs_bf16", "torch_loop", "learn2learn", "higher", "torchopt", "vmap")


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
    args = parser.parse_args(argv)

    load_start = os.getloadavg()
    import torch

    import common

    common.set_threads(args.threads)
    cell = common.CELLS[args.cell]
    if args.meta_batch:
        cell = cell.with_meta_batch(args.meta_batch)
    if args.inner_steps is not None:
        cell = cell.replace(steps=args.inner_steps)
    dtype = torch.float64 if args.float64 else torch.float32
    worker = importlib.import_module(f"{args.lib}_worker")
    if cell.algo not in worker.SUPPORTS:
        common.emit({"lib": args.lib, "cell": args.cell, "skipped": f"{worker.LIBRARY} has no {cell.algo}"})
        return
    batch = common.make_batch(cell, args.seed, dtype)
    torch.manual_seed(args.seed)
    step, params = worker.build(cell, batch, dtype)
    rss_before = common.rss_mib()

    result = {"lib": args.lib, "library": worker.LIBRARY, "version": worker.version(), "cell": args.cell,
              "cell_spec": asdict(cell), "threads": torch.get_num_threads(),
              "meta_batch": cell.meta_batch, "dtype": str(dtype), "notes": getattr(worker, "NOTES", ""),
              "pid": os.getpid(), "python": sys.executable, "load_start": load_start}
    if args.dump_grad:
        step()
        torch.save([p.grad.detach().clone() if p.grad is not None else None for p in params], args.dump_grad)
        result["dumped"] = args.dump_grad
    if args.steps > 0:
        timing = common.time_steps(step, args.warmup, args.steps)
        result.update(timing)
        result["tasks_per_s"] = cell.meta_batch / timing["median_s"]
        result["tasks_per_cpu_s"] = cell.meta_batch / timing["median_cpu_s"]
    result["rss_before_mib"] = rss_before
    result["peak_rss_mib"] = common.peak_rss_mib()  # before the FLOP counter / profiler add their own
    if args.flops:
        result["flops"] = common.count_flops(step)
    if args.profile:
        result["profile"] = common.profile_step(step, args.profile)
    result["load_end"] = os.getloadavg()
    result["finished"] = time.time()
    common.emit(result)


if __name__ == "__main__":
    main()
