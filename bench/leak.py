"""Memory leak check: RSS of one process across many quickstudy meta-steps.

Runs ``--steps`` meta-steps (default 10,000) of a quickstudy learner on the fixed synthetic batch of
bench/peers/common.py, samples the RSS (/proc/self/statm) and the number of live tensors (gc) every
``--every`` steps, prints the curve, and exits 1 if the RSS grew by more than ``--tolerance-mib`` between
the first and the last third of the samples after ``--settle`` steps (medians: the RSS of a torch process
jitters by tens of MiB; allocator warm-up happens before ``--settle``), or if the live-tensor count grew.

    .venv/bin/python -m bench.leak                               # MAML 1-shot 1-step 2nd order, B=1 (~25 min)
    .venv/bin/python -m bench.leak --steps 600 --every 100       # a few minutes
    .venv/bin/python -m bench.leak --cell protonet-1shot --meta-batch 8
    .venv/bin/python -m bench.leak --steps 300 --every 50 --meta-batch 2 --json bench/out/leak.json

The meta-batch is 1 by default (10,000 steps x 32 tasks would take hours); a leak per meta-step or per
task shows at any batch size.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import statistics
import sys
import time



def live_tensors() -> int:
    import warnings

    import torch

    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=250, help="sample the RSS every this many meta-steps")
    parser.add_argument("--settle", type=int, default=None, help="steps before the baseline sample (default: --every)")
    parser.add_argument("--cell", default="maml-1shot-1step-2nd")
    parser.add_argument("--lib", default="quickstudy", help="worker module in bench/peers (default quickstudy)")
    parser.add_argument("--meta-batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tolerance-mib", type=float, default=32.0)
    parser.add_argument("--json", default=None, help="write the curve as JSON here")
    args = parser.parse_args(argv)
    settle = args.every if args.settle is None else args.settle

    import torch

    from bench.peers import common

    common.set_threads(args.threads)
    cell = common.CELLS[args.cell].with_meta_batch(args.meta_batch)
    worker = importlib.import_module(f"bench.peers.{args.lib}_worker")
    step, _ = worker.build(cell, common.make_batch(cell), torch.float32)

    print(f"{args.lib} {cell.name} meta-batch {cell.meta_batch}, {args.steps} meta-steps, threads {args.threads}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'step':>8}{'RSS MiB':>10}{'tensors':>9}{'s/step':>9}")
    samples = []
    t0 = time.perf_counter()
    last = t0
    for i in range(1, args.steps + 1):
        step()
        if i % args.every == 0 or i == args.steps or i == settle:
            gc.collect()
            now = time.perf_counter()
            sample = {"step": i, "rss_mib": common.rss_mib(), "tensors": live_tensors(),
                      "s_per_step": (now - last) / (i - (samples[-1]["step"] if samples else 0))}
            last = now
            samples.append(sample)
            print(f"{i:>8}{sample['rss_mib']:>10.1f}{sample['tensors']:>9}{sample['s_per_step']:>9.3f}", flush=True)

    # The RSS of a torch process jitters by tens of MiB (the allocator maps and returns big blocks), so compare
    # the median of the first third of the samples after settling with the median of the last third.
    settled = [s for s in samples if s["step"] >= settle] or samples
    third = max(len(settled) // 3, 1)
    first, last = settled[:third], settled[-third:]
    base_rss = statistics.median(s["rss_mib"] for s in first)
    end_rss = statistics.median(s["rss_mib"] for s in last)
    growth = end_rss - base_rss
    tensor_growth = last[-1]["tensors"] - first[0]["tensors"]
    span = max(statistics.median(s["step"] for s in last) - statistics.median(s["step"] for s in first), 1)
    ok = growth <= args.tolerance_mib and tensor_growth <= 0
    print(f"RSS median {base_rss:.1f} MiB over steps {first[0]['step']}-{first[-1]['step']} -> {end_rss:.1f} MiB over "
          f"steps {last[0]['step']}-{last[-1]['step']}: {growth:+.1f} MiB ({1000 * growth / span:+.2f} MiB per 1000 "
          f"steps); live tensors {tensor_growth:+d}; peak RSS {common.peak_rss_mib():.1f} MiB; tolerance "
          f"{args.tolerance_mib} MiB: {'OK' if ok else 'LEAK?'}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"argv": sys.argv[1:], "lib": args.lib, "cell": cell.name, "meta_batch": cell.meta_batch,
                       "threads": args.threads, "samples": samples, "growth_mib": growth,
                       "tensor_growth": tensor_growth, "ok": ok, "elapsed_s": time.perf_counter() - t0,
                       "load_end": os.getloadavg()}, handle, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
