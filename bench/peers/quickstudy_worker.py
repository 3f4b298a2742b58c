"""quickstudy, used as its README says (runs in the project venv).

MAML:     ``learner = qs.MAML(model, inner_lr, inner_steps, first_order)`` (default strategy "auto": the per-task
          loop, or its threaded form with >= 2 threads, on CPU; vmap on CUDA)
ProtoNet: ``qs.ProtoNet(model)`` (``ways=None``: an embedding)
Reptile:  ``qs.Reptile(model, inner_lr=1e-3, inner_steps=5)`` (inner Adam, betas (0, 0.999), inner data = the
          support set: its defaults)
iMAML:    ``qs.IMAML(model, lam, inner_lr, inner_steps, cg_steps)`` (the paper's CG system, no damping)
Matching Networks: ``qs.MatchingNet(model, fce=True, normalize_query=False, feature_dim=64)`` (easyfsl's form)
Relation Networks: ``qs.RelationNet(model, feature_shape=(64, 7, 7))`` on ``Conv4(ways=None, pooled_blocks=2)``

``model`` is the built-in backbone (``qs.models.Conv4(in_channels=1, ways)``, or ``qs.models.ResNet12`` in the
``resnet12-*`` cells, ``TaskBatchNorm2d`` transductive), or with ``model="user"`` the user's own module that
every peer runs (``common.reference_model``: ``conv4_sequential``, a plain ``nn.Sequential``; the meta-learner
finds its patterns and runs them on the kernels, :mod:`quickstudy.models.accelerate`).

One meta-step, ``path="meta_backward"`` (what ``Trainer.fit`` does)::

    optimizer.zero_grad(); learner.meta_backward(batch); optimizer.step()

or ``path="meta_loss"`` (the README's own-loop example)::

    optimizer.zero_grad(); loss, metrics = learner.meta_loss(batch); loss.backward(); optimizer.step()

with ``Adam(learner.parameters(), 1e-3)``; ``batch`` is a ``qs.TaskBatch`` built once from the shared tensors.
Weights start from the reference weights (copied in parameter order).

On CUDA (``--device cuda``) the learner is moved to the batch's device (``learner.to(device, dtype)``);
``DETAILS["strategy"]`` records the strategy "auto" resolved to.

On CPU the worker first turns on quickstudy's caching allocator, as ``Trainer.fit`` does on a CPU device
(``train.cpu_caching_allocator``, on by default) and as the README's own-loop example does: freed tensors are
kept for reuse instead of going back to malloc. It changes no number, only page faults and the resident set.

Environment knobs (for experiments, not for the comparison): ``QS_BENCH_STRATEGY=loop|vmap`` overrides
the strategy (``qs_loop_worker`` passes ``strategy="loop"`` explicitly); ``QS_BENCH_ALLOCATOR=system`` leaves
the allocator to malloc.
"""

from __future__ import annotations

import os

import torch

import quickstudy as qs
from quickstudy.kernels.cpu_allocator import enable_caching_allocator

from bench.peers.common import RESNET12_CHANNELS, load_reference, reference_model

LIBRARY = "quickstudy"
SUPPORTS = {"maml", "protonet", "reptile", "imaml", "matchingnet", "relationnet"}
MODELS = ("conv4", "resnet12")
NOTES = ("qs.MAML/FOMAML/ProtoNet/Reptile defaults (strategy auto -> threads/loop on CPU, vmap on CUDA; "
         "TaskBatchNorm2d transductive; on CPU the caching allocator, as Trainer.fit enables it); meta_backward")
#: what the build resolved to (read by run.py on non-CPU devices)
DETAILS: dict = {}


def version() -> str:
    return qs.__version__


def builtin_model(cell, ways):
    """The built-in backbone of the cell's model, with the reference weights."""
    if cell.model == "resnet12":
        model = qs.models.ResNet12(in_channels=1, ways=ways, channels=RESNET12_CHANNELS)
    else:  # Relation Networks: feature maps, the same parameters
        model = qs.models.Conv4(in_channels=1, ways=ways, pooled_blocks=2 if cell.algo == "relationnet" else 4)
    return load_reference(model, ways, model=cell.model)


def build(cell, batch, dtype, strategy=None, model="builtin", path="meta_backward"):
    sx, sy, qx, qy = batch
    task_batch = qs.TaskBatch(support_x=sx, support_y=sy, query_x=qx, query_y=qy, ways=cell.ways, shots=cell.shots)
    strategy = strategy or os.environ.get("QS_BENCH_STRATEGY", "auto")
    allocator = "malloc"
    if sx.device.type == "cpu" and os.environ.get("QS_BENCH_ALLOCATOR", "caching") == "caching":
        enable_caching_allocator()  # what Trainer.fit does on a CPU device
        allocator = "caching"
    ways = None if cell.algo in ("protonet", "matchingnet", "relationnet") else cell.ways
    network = reference_model(cell, ways) if model == "user" else builtin_model(cell, ways)
    if cell.algo == "maml":
        learner = qs.MAML(network, inner_lr=cell.inner_lr, inner_steps=cell.steps, first_order=cell.first_order,
                          strategy=strategy)
    elif cell.algo == "protonet":
        learner = qs.ProtoNet(network, strategy=strategy)
    elif cell.algo == "relationnet":
        learner = qs.RelationNet(network, feature_shape=[64, 7, 7], strategy=strategy)
    elif cell.algo == "matchingnet":
        learner = qs.MatchingNet(network, fce=True, normalize_query=False, feature_dim=64, strategy=strategy)
    elif cell.algo == "imaml":
        learner = qs.IMAML(network, lam=cell.lam, inner_lr=cell.inner_lr, inner_steps=cell.steps,
                           cg_steps=cell.cg_steps, strategy=strategy)
    else:
        learner = qs.Reptile(network, inner_lr=cell.inner_lr, inner_steps=cell.steps)
    learner = learner.to(device=sx.device, dtype=dtype)
    opt = torch.optim.Adam(learner.parameters(), lr=cell.outer_lr)
    DETAILS.clear()
    DETAILS.update(requested_strategy=strategy if cell.algo != "reptile" else None, strategy=_resolved(cell, learner),
                   allocator=allocator, model=model, path=path)

    if path == "meta_loss":
        def step():
            opt.zero_grad()
            loss, _ = learner.meta_loss(task_batch)
            loss.backward()
            opt.step()
    else:
        def step():
            opt.zero_grad()
            learner.meta_backward(task_batch)
            opt.step()

    return step, list(network.parameters())


def _resolved(cell, learner) -> str:
    """The concrete strategy quickstudy will run (informative only: never fatal)."""
    if cell.algo == "reptile":
        return "loop (Reptile has no strategy)"
    try:
        return learner.execution.resolve(learner.strategy, threads_ok=True)
    except Exception as error:  # noqa: BLE001
        return f"? ({type(error).__name__}: {error})"
