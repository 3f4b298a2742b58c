"""quickstudy with the user's own module (``conv4_sequential``, the peers' model), through ``meta_backward``: the
meta-learner runs its patterns on the kernels. Everything else as ``quickstudy_worker``.
"""

from __future__ import annotations

from bench.peers import quickstudy_worker

LIBRARY = "quickstudy (user model)"
SUPPORTS = quickstudy_worker.SUPPORTS
MODELS = quickstudy_worker.MODELS
NOTES = 'quickstudy defaults; model="user", path="meta_backward"'
DETAILS = quickstudy_worker.DETAILS
version = quickstudy_worker.version


def build(cell, batch, dtype):
    return quickstudy_worker.build(cell, batch, dtype, model="user", path="meta_backward")
