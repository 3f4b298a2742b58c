"""higher 0.2.1, used as in its examples/maml-omniglot.py (runs in .peers/venv).

MAML, per task::

    with higher.innerloop_ctx(model, SGD(model.parameters(), lr=inner_lr), copy_initial_weights=False)
            as (fmodel, diffopt):
        steps x diffopt.step(CE(fmodel(sx), sy))            # first order: grad_callback detaches the grads
        (CE(fmodel(qx), qy) / B).backward()

First order: ``track_higher_grads=False`` would cut the path to the initial weights altogether, so the
first-order variant keeps the graph and passes ``grad_callback=lambda gs: [g.detach() for g in gs]``
(d phi / d theta = I, as FOMAML). higher has no ProtoNet or Reptile.
"""

from __future__ import annotations

import higher
import torch
import torch.nn.functional as F

from bench.peers.common import reference_model

LIBRARY = "higher"
SUPPORTS = {"maml"}
MODELS = ("conv4", "resnet12")  # the user's model of the cell (common.reference_model)
NOTES = "higher.innerloop_ctx per task (copy_initial_weights=False); FO via grad_callback=detach"


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v("higher")
    except Exception:
        return "?"


def _detach(grads):
    return [g.detach() if g is not None else None for g in grads]


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    b = cell.meta_batch
    model = reference_model(cell, cell.ways).to(sx.device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cell.outer_lr)
    inner_opt = torch.optim.SGD(model.parameters(), lr=cell.inner_lr)
    callback = _detach if cell.first_order else None

    def step():
        opt.zero_grad()
        for i in range(b):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(cell.steps):
                    diffopt.step(F.cross_entropy(fmodel(sx[i]), sy[i]), grad_callback=callback)
                logits = fmodel(qx[i])
                (F.cross_entropy(logits, qy[i]) / b).backward()
                (logits.detach().argmax(-1) == qy[i]).float().mean()
        opt.step()

    return step, list(model.parameters())
