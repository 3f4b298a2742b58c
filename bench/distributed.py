"""Data-parallel meta-training: tasks/s on P processes (torch.distributed) against P threads in one process.

One cell, MAML (second order, one inner step of 0.4) on Conv4, 5-way 1-shot with 15 queries per class on
28x28 images, meta-batch 32, Adam; the images are random bytes (the arithmetic does not depend on them). For
each P in ``--procs``, side by side in one run, every point in fresh processes:

* ``processes``: P processes, one intra-op thread each, ``Trainer(distributed=True)`` over gloo (NCCL with
  ``--device cuda``, one GPU per process): each process takes 32 / P tasks of every meta-batch and the
  meta-gradients are all-reduced;
* ``threads``: one process with P intra-op threads and the ``"threads"`` strategy (the tasks of a meta-batch
  run on P worker threads), quickstudy's single-process way to use P cores.

Each point trains ``--warmup`` + ``--steps`` meta-steps through the Trainer and times the last ``--steps``
(rank 0's clock; every step ends with an all-reduce, so rank 0 waits for the slowest). Scaling efficiency is
``tasks/s(P processes) / (P * tasks/s(1 process))``. On a shared machine read ``tasks/CPU-s`` too: rank 0's
tasks per second of its own CPU time, which other processes on the cores disturb much less than wall time;
``CPU eff.`` is its ratio to one process (the work each process adds by being one of P: the all-reduce, the
indices of the whole meta-batch). Prints a table and writes JSON with the machine, the load
average before and after, and every point::

    .venv/bin/python -m bench.distributed                                  # P = 1, 2 (this machine: 2 cores)
    .venv/bin/python -m bench.distributed --procs 1,2,4,8 --out docs/bench/distributed_16core.json
    .venv/bin/python -m bench.distributed --device cuda --procs 1,2        # GPU processes (one GPU each)

Run it on an idle machine: another process on one of the cores slows every point that uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point(rank: int, world_size: int, port: int, spec: dict, result: str) -> None:
    """One process of one point: train, time the last ``steps`` meta-steps on rank 0, write its numbers."""
    import quickstudy as qs
    from quickstudy.data import ArrayDataset
    from quickstudy.models import Conv4
    from quickstudy.training import Callback

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    device = torch.device(spec["device"], rank) if spec["device"] == "cuda" else torch.device("cpu")
    if spec["mode"] == "processes":
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200 * 20, 1, 28, 28), dtype=torch.uint8, generator=g)
    data = ArrayDataset(images, torch.arange(200).repeat_interleave(20))
    tasks = qs.EpisodeSampler(data, ways=5, shots=1, queries=15, batch_size=spec["meta_batch"], seed=0)
    torch.manual_seed(0)
    learner = qs.MAML(Conv4(in_channels=1, ways=5), inner_lr=0.4, inner_steps=1, strategy=spec["strategy"])

    class Clock(Callback):
        def __init__(self) -> None:
            self.ticks: list[float] = []
            self.cpu: list[float] = []  # this process's CPU time: what other processes on the cores disturb less

        def on_step_end(self, trainer, step, metrics) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.ticks.append(time.perf_counter())
            self.cpu.append(time.process_time())

    clock = Clock()
    trainer = qs.Trainer(learner, tasks, steps=spec["warmup"] + spec["steps"], lr=1e-3, val_every=None,
                         log_every=10**6, checkpoint_every=None, progress=False, device=device, callbacks=[clock],
                         distributed=spec["mode"] == "processes")
    reduce, reduce_seconds = trainer.update.reduce_gradients, []
    if reduce is not None:  # time the all-reduce of each step (gradients, metrics) on its own

        def timed_reduce(*args):
            tick = time.perf_counter()
            out = reduce(*args)
            reduce_seconds.append(time.perf_counter() - tick)
            return out

        trainer.update.reduce_gradients = timed_reduce
    trainer.fit()
    if rank == 0:
        seconds = clock.ticks[-1] - clock.ticks[spec["warmup"] - 1]
        cpu_seconds = clock.cpu[-1] - clock.cpu[spec["warmup"] - 1]
        share = spec["meta_batch"] // world_size + (1 if spec["meta_batch"] % world_size else 0)  # rank 0's tasks
        Path(result).write_text(json.dumps({
            "seconds": seconds, "tasks_per_s": spec["meta_batch"] * spec["steps"] / seconds,
            "ms_per_step": 1e3 * seconds / spec["steps"], "cpu_s_rank0": cpu_seconds,
            "tasks_per_cpu_s": share * spec["steps"] / cpu_seconds,
            "allreduce_ms": 1e3 * sum(reduce_seconds[spec["warmup"]:]) / spec["steps"] if reduce_seconds else None,
            "strategy": trainer.learner.execution.resolve(spec["strategy"], threads_ok=True)}))
    if dist.is_initialized():
        dist.destroy_process_group()


def measure(mode: str, procs: int, args: argparse.Namespace) -> dict:
    spec = {"mode": mode, "meta_batch": args.meta_batch, "warmup": args.warmup, "steps": args.steps,
            "device": args.device, "threads": 1 if mode == "processes" else procs,
            "strategy": "loop" if mode == "processes" else "threads"}
    nprocs = procs if mode == "processes" else 1
    with tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "result.json"
        started = time.perf_counter()
        mp.start_processes(point, args=(nprocs, free_port(), spec, str(result)), nprocs=nprocs, start_method="spawn")
        row = {"mode": mode, "P": procs, **json.loads(result.read_text()),
               "wall_s_with_start": time.perf_counter() - started}
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", default="1,2", help="numbers of processes / threads, e.g. 1,2,4,8")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed meta-steps per point")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--no-threads", action="store_true", help="skip the threads points")
    parser.add_argument("--out", default=str(HERE / "out" / "distributed.json"))
    args = parser.parse_args(argv)
    counts = [int(p) for p in args.procs.split(",") if p.strip()]
    if args.device == "cuda" and max(counts) > torch.cuda.device_count():
        parser.error(f"--procs {args.procs}: {torch.cuda.device_count()} GPU(s) here, one per process")

    from quickstudy.runs import machine_info

    load_before = os.getloadavg()
    rows = []
    print(f"{'mode':<10}{'P':>3}{'tasks/s':>10}{'ms/step':>10}{'all-reduce ms':>15}{'efficiency':>12}"
          f"{'tasks/CPU-s':>13}{'CPU eff.':>10}  strategy", flush=True)
    for procs in counts:  # interleaved: both modes of one P close in time
        modes = ["processes"] + ([] if args.no_threads or args.device == "cuda" else ["threads"])
        for mode in modes:
            row = measure(mode, procs, args)
            base = next((r for r in rows if r["mode"] == "processes" and r["P"] == 1), None)
            if mode == "processes" and base is not None:
                row["scaling_efficiency"] = row["tasks_per_s"] / (procs * base["tasks_per_s"])
                row["cpu_efficiency"] = row["tasks_per_cpu_s"] / base["tasks_per_cpu_s"]
            rows.append(row)
            eff = f"{row['scaling_efficiency']:.2f}" if "scaling_efficiency" in row else ""
            cpu_eff = f"{row['cpu_efficiency']:.2f}" if "cpu_efficiency" in row else ""
            reduce = f"{row['allreduce_ms']:.1f}" if row.get("allreduce_ms") is not None else ""
            print(f"{mode:<10}{procs:>3}{row['tasks_per_s']:>10.2f}{row['ms_per_step']:>10.1f}{reduce:>15}{eff:>12}"
                  f"{row['tasks_per_cpu_s']:>13.2f}{cpu_eff:>10}  "
                  f"{row['strategy']}", flush=True)
    for procs in counts:
        pair = {r["mode"]: r for r in rows if r["P"] == procs}
        if len(pair) == 2:
            print(f"P={procs}: processes / threads = {pair['processes']['tasks_per_s'] / pair['threads']['tasks_per_s']:.2f}x")
    payload = {"cell": "MAML second order, Conv4, 5-way 1-shot, 15 queries/class, 28x28, one inner step",
               "meta_batch": args.meta_batch, "warmup": args.warmup, "steps": args.steps, "device": args.device,
               "machine": machine_info(), "load_before": load_before, "load_after": os.getloadavg(), "points": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
