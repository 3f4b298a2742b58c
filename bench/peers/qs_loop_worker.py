"""quickstudy with ``strategy="loop"`` forced: the per-task loop (one backward per task, graphs freed
task by task), whatever ``"auto"`` would pick. On CUDA ``"auto"`` is vmap, so this row shows what
quickstudy's loop costs on the GPU next to the plain loop and the peers; on CPU with >= 2 threads "auto"
is the threaded loop, and this row is the single-threaded task loop. Everything else as
``quickstudy_worker``. Reptile has no strategy (it is always a loop): no cell.
"""

from __future__ import annotations

from bench.peers import quickstudy_worker

LIBRARY = "quickstudy (loop)"
SUPPORTS = {"maml", "protonet", "imaml", "matchingnet", "relationnet"}
MODELS = quickstudy_worker.MODELS
NOTES = "quickstudy defaults with strategy='loop' (per-task backward) instead of 'auto'"
DETAILS = quickstudy_worker.DETAILS
version = quickstudy_worker.version


def build(cell, batch, dtype):
    return quickstudy_worker.build(cell, batch, dtype, strategy="loop")
