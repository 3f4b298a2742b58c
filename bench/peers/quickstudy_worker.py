"""quickstudy, used as its README says (runs in the project venv).

MAML:     ``learner = qs.MAML(qs.models.Conv4(in_channels=1, ways=5), inner_lr, inner_steps, first_order)``
          (default strategy "auto": the per-task loop, or its threaded form with >= 2 threads, on CPU; vmap on
          CUDA; default batch norm policy "transductive")
ProtoNet: ``qs.ProtoNet(qs.models.Conv4(in_channels=1, ways=None))``
Reptile:  ``qs.Reptile(qs.models.Conv4(in_channels=1, ways=5), inner_lr=1e-3, inner_steps=5)`` (inner Adam,
          betas (0, 0.999), inner data = the support set: its defaults)

One meta-step: ``optimizer.zero_grad(); learner.meta_backward(batch); optimizer.step()`` with
``Adam(learner.parameters(), 1e-3)``; ``batch`` is a ``qs.TaskBatch`` built once from the shared tensors.
Weights start from the reference Conv4 (copied in parameter order; TaskBatchNorm2d has the same
weight/bias as nn.BatchNorm2d).

On CUDA (``--device cuda``) the learner is moved to the batch's device (``learner.to(device, dtype)``);
``DETAILS["strategy"]`` records the strategy "auto" resolved to.

On CPU the worker first calls ``qs.enable_caching_allocator()``, as ``Trainer.fit`` does on a CPU device
(``train.cpu_caching_allocator``, on by default): freed tensors are kept for reuse instead of going back to
malloc. It changes no number, only page faults and the resident set.

Environment knobs (for experiments, not for the comparison): ``QS_BENCH_STRATEGY=loop|vmap`` overrides
the strategy (``qs_loop_worker`` passes ``strategy="loop"`` explicitly); ``QS_BENCH_ALLOCATOR=system`` leaves
the allocator to malloc.

quickstudy comes from the interpreter's environment (the project venv) or, failing that, from ``src/`` of
this checkout (PYTHONPATH=src, or the fallback below: the GPU machine runs every worker with one python3).
"""

from __future__ import annotations

import os
import sys

import torch

try:
    import quickstudy as qs
except ModuleNotFoundError as _error:  # not installed in this interpreter: use the checkout's sources
    if _error.name != "quickstudy":
        raise
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "src"))
    import quickstudy as qs

from common import load_reference  # noqa: E402

LIBRARY = "quickstudy"
SUPPORTS = {"maml", "protonet", "reptile"}
NOTES = ("qs.MAML/FOMAML/ProtoNet/Reptile defaults (strategy auto -> threads/loop on CPU, vmap on CUDA; "
         "TaskBatchNorm2d transductive; on CPU the caching allocator, as Trainer.fit enables it)")
#: what the build resolved to (read by run.py on non-CPU devices)
DETAILS: dict = {}


def version() -> str:
    return qs.__version__


def build(cell, batch, dtype, strategy=None):
    sx, sy, qx, qy = batch
    task_batch = qs.TaskBatch(support_x=sx, support_y=sy, query_x=qx, query_y=qy, ways=cell.ways, shots=cell.shots)
    strategy = strategy or os.environ.get("QS_BENCH_STRATEGY", "auto")
    allocator = "malloc"
    if sx.device.type == "cpu" and os.environ.get("QS_BENCH_ALLOCATOR", "caching") == "caching":
        qs.enable_caching_allocator()  # what Trainer.fit does on a CPU device
        allocator = "caching"
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
    learner = learner.to(device=sx.device, dtype=dtype)
    opt = torch.optim.Adam(learner.parameters(), lr=cell.outer_lr)
    DETAILS.clear()
    DETAILS.update(requested_strategy=strategy if cell.algo != "reptile" else None, strategy=_resolved(cell, learner),
                   allocator=allocator)

    def step():
        opt.zero_grad()
        learner.meta_backward(task_batch)
        opt.step()

    return step, list(model.parameters())


def _resolved(cell, learner) -> str:
    """The concrete strategy quickstudy will run (informative only: never fatal)."""
    if cell.algo == "reptile":
        return "loop (Reptile has no strategy)"
    try:
        from quickstudy.algorithms.strategy import resolve_strategy

        owner = "MAML" if cell.algo == "maml" else "ProtoNet"
        return resolve_strategy(owner, learner.strategy, learner.model, threads_ok=cell.algo == "maml")
    except Exception as error:  # noqa: BLE001
        return f"? ({type(error).__name__}: {error})"
