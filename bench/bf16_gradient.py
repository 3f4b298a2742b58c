"""How far the bfloat16 mode's MAML meta-gradient is from the exact one, per benchmark cell.

For each cell (shots, inner steps, order) it computes the meta-gradient of one meta-batch three ways on
the same Conv4 weights: float64 (the reference), float32 (quickstudy's exact mode) and float32 weights
under ``torch.autocast("cpu", bfloat16)`` (``train.precision: bfloat16``), and prints the relative error
``|g - g64| / |g64|`` and the cosine to the reference. Two kinds of tasks: real Omniglot episodes
(5-way, 15 queries per class; needs the data set, see README "Data") and the speed bench's synthetic
ones (uniform-noise images, bench/peers/common.py), both from freshly initialised weights.

    python -m bench.bf16_gradient [--meta-batch 8] [--json bench/out/bf16_gradient.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import torch
import torch.nn.functional as F

import quickstudy as qs

from bench.peers import common

HERE = os.path.dirname(os.path.abspath(__file__))

CELLS = [(1, 1, False), (1, 1, True), (1, 5, False), (5, 1, False)]  # shots, inner steps, first order


def meta_gradient(learner: qs.MAML, batch: qs.TaskBatch, dtype: torch.dtype, bf16: bool) -> torch.Tensor:
    learner.to(dtype)
    batch = qs.TaskBatch(batch.support_x.to(dtype), batch.support_y, batch.query_x.to(dtype), batch.query_y,
                         ways=batch.ways, shots=batch.shots)
    learner.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        learner.meta_backward(batch)
    return torch.cat([p.grad.flatten().double() for p in learner.parameters()])


def compare(batch: qs.TaskBatch, steps: int, first_order: bool, seed: int) -> dict:
    torch.manual_seed(seed)
    learner = qs.MAML(qs.models.Conv4(in_channels=1, ways=5), inner_lr=0.4, inner_steps=steps,
                      first_order=first_order, strategy="loop")
    reference = meta_gradient(learner, batch, torch.float64, False)
    row = {}
    for name, dtype, bf16 in (("float32", torch.float32, False), ("bfloat16", torch.float32, True)):
        g = meta_gradient(learner, batch, dtype, bf16)
        row[name] = {"rel_error": ((g - reference).norm() / reference.norm()).item(),
                     "cosine": F.cosine_similarity(g, reference, dim=0).item()}
    return row


def omniglot_batch(shots: int, meta_batch: int) -> qs.TaskBatch | None:
    try:
        data = qs.data.Omniglot(split="train", download=False)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"Omniglot rows skipped: {error}")
        return None
    return qs.EpisodeSampler(data, ways=5, shots=shots, queries=15, batch_size=meta_batch, seed=0)[0]


def synthetic_batch(shots: int, steps: int, meta_batch: int) -> qs.TaskBatch:
    cell = common.Cell("x", "maml", shots, steps, False).replace(meta_batch=meta_batch)
    sx, sy, qx, qy = common.make_batch(cell)
    return qs.TaskBatch(support_x=sx, support_y=sy, query_x=qx, query_y=qy, ways=5, shots=shots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial Conv4 weights")
    parser.add_argument("--json", default=os.path.join(HERE, "out", "bf16_gradient.json"))
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = []
    print(f"{'tasks':10} {'cell':28} {'float32 rel err':>16} {'cos':>9} {'bfloat16 rel err':>17} {'cos':>9}")
    for shots, steps, first_order in CELLS:
        cell = f"{shots}-shot, {steps} step{'s' if steps > 1 else ''}, {'1st' if first_order else '2nd'} order"
        batches = {"omniglot": omniglot_batch(shots, args.meta_batch),
                   "synthetic": synthetic_batch(shots, steps, args.meta_batch)}
        for tasks, batch in batches.items():
            if batch is None:
                continue
            row = compare(batch, steps, first_order, args.seed)
            rows.append({"tasks": tasks, "shots": shots, "inner_steps": steps, "first_order": first_order, **row})
            print(f"{tasks:10} {cell:28} {row['float32']['rel_error']:16.2e} {row['float32']['cosine']:9.5f} "
                  f"{row['bfloat16']['rel_error']:17.2e} {row['bfloat16']['cosine']:9.5f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                   "meta_batch": args.meta_batch, "seed": args.seed, "rows": rows}, handle, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
