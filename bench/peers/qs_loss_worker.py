"""quickstudy with the built-in model, one meta-step as the README's own loop writes it: ``loss, metrics =
learner.meta_loss(batch); loss.backward()``. Everything else as ``quickstudy_worker``.
"""

from __future__ import annotations

from bench.peers import quickstudy_worker

LIBRARY = "quickstudy (meta_loss)"
SUPPORTS = quickstudy_worker.SUPPORTS
MODELS = quickstudy_worker.MODELS
NOTES = 'quickstudy defaults; model="builtin", path="meta_loss"'
DETAILS = quickstudy_worker.DETAILS
version = quickstudy_worker.version


def build(cell, batch, dtype):
    return quickstudy_worker.build(cell, batch, dtype, model="builtin", path="meta_loss")
