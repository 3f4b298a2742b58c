"""quickstudy with the user's own module (``conv4_sequential``, the peers' model) with the README's own loop:
``learner.meta_loss(batch)[0].backward()``. Everything else as ``quickstudy_worker``.
"""

from __future__ import annotations

from bench.peers import quickstudy_worker

LIBRARY = "quickstudy (user model, meta_loss)"
SUPPORTS = quickstudy_worker.SUPPORTS
MODELS = quickstudy_worker.MODELS
NOTES = 'quickstudy defaults; model="user", path="meta_loss"'
DETAILS = quickstudy_worker.DETAILS
version = quickstudy_worker.version


def build(cell, batch, dtype):
    return quickstudy_worker.build(cell, batch, dtype, model="user", path="meta_loss")
