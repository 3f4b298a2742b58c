"""In-process A/B of one of Conv4's kernels (quickstudy.kernels): MAML meta-steps alternating with the kernel
on and off through the model's switch (``Conv4.kernels``), in one process, so that machine noise hits both
alike. ``--switch fused-tail`` (default) is the fused batch norm -> max-pool -> ReLU of graphs backpropagated
once; ``--switch lean-pool`` the lean batch norm -> max-pool of second-order inner loops.

    python -m bench.fused_ab                       # 1-shot, 1 inner step, second order, meta-batch 32
    python -m bench.fused_ab --shots 5 --reps 8
    python -m bench.fused_ab --inner-steps 5 --first-order
    python -m bench.fused_ab --bfloat16            # under autocast, as Trainer(precision="bfloat16")
    python -m bench.fused_ab --switch lean-pool --shots 5 --inner-steps 5

Prints tasks/s of each and their ratio (median over the alternating repeats). Random 28x28 images, 5-way,
15 queries per class, Adam 1e-3, the default strategy (threads on CPU) and the caching allocator, as
bench/speed.py's quickstudy row.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import quickstudy as qs
from quickstudy.kernels.cpu_allocator import enable_caching_allocator

#: what --switch turns on and off: the kernel's name in Conv4.kernels
SWITCHES = {"fused-tail": "fused_tail", "lean-pool": "lean_pool"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bfloat16", action="store_true", help="meta-steps under bfloat16 autocast")
    parser.add_argument("--switch", choices=sorted(SWITCHES), default="fused-tail", help="what to turn on and off")
    parser.add_argument("--reps", type=int, default=6, help="timed meta-steps of each, alternating")
    args = parser.parse_args(argv)

    enable_caching_allocator()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    tasks, ways, queries = args.meta_batch, 5, 15
    batch = qs.TaskBatch(
        support_x=torch.randn(tasks, ways * args.shots, 1, 28, 28, generator=gen),
        support_y=torch.arange(ways).repeat_interleave(args.shots).repeat(tasks, 1),
        query_x=torch.randn(tasks, ways * queries, 1, 28, 28, generator=gen),
        query_y=torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1), ways=ways)
    torch.manual_seed(0)
    maml = qs.MAML(qs.models.Conv4(in_channels=1, ways=ways), inner_lr=0.4, inner_steps=args.inner_steps,
                   first_order=args.first_order)
    optimizer = torch.optim.Adam(maml.parameters(), 1e-3)

    def meta_step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bfloat16):
            maml.meta_backward(batch)
        optimizer.step()
        return time.perf_counter() - started

    every = frozenset(maml.model.kernels)
    kernels = {True: every, False: every - {SWITCHES[args.switch]}}
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for on in (True, False):  # warm-up: builds the kernel, fills the allocator's cache
        maml.model.kernels = kernels[on]
        meta_step()
    for _ in range(args.reps):
        for on in (True, False):
            maml.model.kernels = kernels[on]
            seconds[on].append(meta_step())
    fused_s, native_s = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"{args.shots}-shot, {args.inner_steps} step(s), {'first' if args.first_order else 'second'} order, "
          f"meta-batch {tasks}, {args.threads} threads{', bfloat16' if args.bfloat16 else ''}, {args.switch}: "
          f"on {tasks / fused_s:.2f} tasks/s, off {tasks / native_s:.2f} tasks/s, on / off {native_s / fused_s:.2f}x")


if __name__ == "__main__":
    main()
