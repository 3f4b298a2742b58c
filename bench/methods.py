"""Meta-training speed of each method beside its nearest relative: tasks per second of ``meta_backward`` (or, for
the fine-tuning baselines, of adaptation and prediction at test time), same process, same synthetic Omniglot-shaped
tasks (28x28, 5-way 1-shot, 5 queries per class), the default strategy ("auto").

    .venv/bin/python -m bench.methods                      # every pair, 8 tasks per batch, 2 warm-up + 5 timed steps
    .venv/bin/python -m bench.methods --pairs imaml-steps  # one group
    .venv/bin/python -m bench.methods --quick              # smoke check: tiny network and images, 1 timed step

Groups (each row's "relative" is the first row of its group):

* ``maml-family``: MAML (second order, strided Conv4, 1 inner step) vs BOIL and Proto-MAML with the same body
* ``imaml-steps``: iMAML (5 CG steps) vs MAML at 1, 5 and 10 inner steps (MAML's cost grows with the unrolled
  path, iMAML's by one forward/backward per step)
* ``mamlpp``: MAML++ (5 steps, LSLR, per-step batch norm, multi-step loss) vs MAML with 5 steps (Conv4, max-pool)
* ``metric``: ProtoNet vs MetaOptNet (SVM, 100 iterations; ridge), Matching Networks (with and without FCE) and
  Relation Networks (Conv4 with two pooled blocks), all on Conv4 embeddings
* ``finetune``: adaptation + prediction per test task: FineTune (100 SGD steps on the head) vs SimpleShot and
  transductive fine-tuning (25 Adam steps on the whole network)

Timings go to bench/out/methods_speed.json with the machine's load averages before and after (a loaded machine
gives fewer tasks per second: compare rows of one run, not across runs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import torch

import quickstudy as qs
from quickstudy.models import Conv4


def batch(tasks: int, size: int = 28, ways: int = 5, shots: int = 1, queries: int = 5, classes: int = 64,
          seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    ids = torch.stack([torch.randperm(classes, generator=g)[:ways] for _ in range(tasks)])
    return qs.TaskBatch(torch.rand(tasks, ways * shots, 1, size, size, generator=g), sy,
                        torch.rand(tasks, ways * queries, 1, size, size, generator=g), qy, ways=ways, shots=shots,
                        classes=ids)


def groups(hidden: int, size: int = 28) -> dict[str, list[tuple[str, callable]]]:
    def conv(**kw):
        torch.manual_seed(0)
        return Conv4(hidden=hidden, image_size=size, **kw)

    strided = dict(stride_variant=True)
    return {
        "maml-family": [
            ("MAML", lambda: qs.MAML(conv(ways=5, **strided), inner_lr=0.4, inner_steps=1)),
            ("BOIL", lambda: qs.BOIL(conv(ways=5, **strided), inner_lr=0.4, inner_steps=1)),
            ("ProtoMAML", lambda: qs.ProtoMAML(conv(ways=None, **strided), inner_lr=0.1, inner_steps=1)),
        ],
        "imaml-steps": [
            (f"{name} k={k}", make)
            for k in (1, 5, 10)
            for name, make in (
                ("MAML", lambda k=k: qs.MAML(conv(ways=5, **strided), inner_lr=0.1, inner_steps=k)),
                ("iMAML", lambda k=k: qs.IMAML(conv(ways=5, **strided), inner_lr=0.1, inner_steps=k, cg_steps=5)),
            )
        ],
        "mamlpp": [
            ("MAML k=5", lambda: qs.MAML(conv(ways=5), inner_lr=0.1, inner_steps=5)),
            ("MAML++ k=5", lambda: qs.MAMLPlusPlus(conv(ways=5), inner_lr=0.1, inner_steps=5, msl_iterations=5000)),
        ],
        "metric": [
            ("ProtoNet", lambda: qs.ProtoNet(conv(ways=None))),
            ("MetaOptNet-SVM", lambda: qs.MetaOptNet(conv(ways=None), head="svm", svm_iterations=100)),
            ("MetaOptNet-ridge", lambda: qs.MetaOptNet(conv(ways=None), head="ridge")),
            ("MatchingNet", lambda: qs.MatchingNet(conv(ways=None))),
            ("MatchingNet+FCE", lambda: qs.MatchingNet(conv(ways=None), fce=True)),
            ("RelationNet", lambda: qs.RelationNet(conv(ways=None, pooled_blocks=2))),
        ],
        "finetune": [
            ("FineTune", lambda: qs.FineTune(conv(ways=None), num_train_classes=64)),
            ("SimpleShot", lambda: qs.SimpleShot(conv(ways=None), num_train_classes=64)),
            ("TransductiveFineTune", lambda: qs.TransductiveFineTune(conv(ways=None), num_train_classes=64)),
        ],
    }


def time_steps(step, warmup: int, timed: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def measure(group: str, make, tasks, warmup: int, timed: int) -> float:
    """Median tasks per second."""
    learner = make()
    if group == "finetune":  # adaptation at test time: one task after another
        learner.eval()

        def step():
            for task in tasks:
                learner.adapt(task.support_x, task.support_y)(task.query_x)
    else:
        learner.train()

        def step():
            learner.zero_grad(set_to_none=True)
            learner.meta_backward(tasks)

    return tasks.batch_size / statistics.median(time_steps(step, warmup, timed))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="all", help="comma-separated groups (default: all)")
    parser.add_argument("--tasks", type=int, default=8, help="tasks per meta-batch")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 16x16 images, 4 filters, 2 tasks, no warm-up, 1 timed step")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "methods_speed.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden, size, tasks_n, warmup, timed = ((4, 16, 2, 0, 1) if args.quick else
                                            (64, 28, args.tasks, args.warmup, args.steps))
    table = groups(hidden, size)
    chosen = list(table) if args.pairs == "all" else args.pairs.split(",")
    unknown = [g for g in chosen if g not in table]
    if unknown:
        parser.error(f"--pairs: unknown group(s) {unknown}; choose from {', '.join(table)}")
    load_before = os.getloadavg()
    rows = []
    tasks = batch(tasks_n, size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load_before[0]:.1f}, "
          f"{tasks_n} tasks per batch")
    for group in chosen:
        base = None
        for name, make in table[group]:
            rate = measure(group, make, tasks, warmup, timed)
            relative = None
            if group == "imaml-steps":  # each iMAML row against MAML at the same number of steps
                relative = rate / rows[-1]["tasks_per_s"] if name.startswith("iMAML") else None
            else:
                base = base or rate
                relative = rate / base
            rows.append({"group": group, "method": name, "tasks_per_s": rate, "relative": relative})
            print(f"{group:<12} {name:<22} {rate:9.2f} tasks/s" + (f"   x{relative:.2f}" if relative else ""))
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "tasks": tasks_n, "hidden": hidden,
           "load_before": load_before, "load_after": os.getloadavg(), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"load {out['load_after'][0]:.1f} after; wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
