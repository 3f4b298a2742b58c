"""quickstudy, used as its README says (runs in the project venv).

MAML:     ``learner = qs.MAML(qs.models.Conv4(in_channels=1, ways=5), inner_lr, inner_steps, first_order)``
          (default strategy "auto" = the per-task loop on CPU; default batch norm policy "transductive")
ProtoNet: ``qs.ProtoNet(qs.models.Conv4(in_channels=1, ways=None))``
Reptile:  ``qs.Reptile(qs.models.Conv4(in_channels=1, ways=5), inner_lr=1e-3, inner_steps=5)`` (inner Adam,
          betas (0, 0.999), inner data = the support set: its defaults)

One meta-step: ``optimizer.zero_grad(); learner.meta_backward(batch); optimizer.step()`` with
``Adam(learner.parameters(), 1e-3)``; ``batch`` is a ``qs.TaskBatch`` built once from the shared tensors.
Weights start from the reference Conv4 (copied in parameter order; TaskBatchNorm2d has the same
weight/bias as nn.BatchNorm2d).

Environment knobs (for experiments, not for the comparison): ``QS_BENCH_STRATEGY=loop|vmap`` overrides
the strategy.
"""

from __future__ import annotations

import os

import torch

import quickstudy as qs
from common import load_reference

LIBRARY = "quickstudy"
SUPPORTS = {"maml", "protonet", "reptile"}
NOTES = "qs.MAML/FOMAML/ProtoNet/Reptile defaults (strategy auto -> loop on CPU, TaskBatchNorm2d transductive)"


def version() -> str:
    return qs.__version__


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    task_batch = qs.TaskBatch(support_x=sx, support_y=sy, query_x=qx, query_y=qy, ways=cell.ways, shots=cell.shots)
    strategy = os.environ.get("QS_BENCH_STRATEGY", "auto")
    if cell.algo == "maml":
        model = load_reference(qs.models.Conv4(in_channels=1, ways=cell.ways), cell.ways)
        learner = qs.MAML(model, inner_lr=cell.inner_lr, inner_steps=cell.steps, first_order=cell.first_order,
                          strategy=strategy)
    elif cell.algo == "protonet":
        model = load_reference(qs.models.Conv4(in_channels=1, ways=None), None)
        learner = qs.ProtoNet(model, strategy=strategy)
    else:
        model = load_reference(qs.models.Conv4(in_channels=1, ways=cell.ways), cell.ways)
        learner = qs.Reptile(model, inner_lr=cell.inner_lr, inner_steps=cell.steps)
    learner = learner.to(dtype)
    opt = torch.optim.Adam(learner.parameters(), lr=cell.outer_lr)

    def step():
        opt.zero_grad()
        learner.meta_backward(task_batch)
        opt.step()

    return step, list(model.parameters())
