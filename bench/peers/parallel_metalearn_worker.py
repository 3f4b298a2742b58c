"""parallel-metalearn 0.5.6 (PyPI ``parallel-metalearn``, import name ``metalearn``), used as its README's minimal
example (runs in .peers/venv): vmap over the tasks of a meta-batch, in chunks.

MAML::

    model = MAML_Model(backbone, head)                    # the user's model, split before its last layer
    inner = InnerSGD(model.get_fast_weights(), first_order, inner_lr, max_inner_steps=steps, learn_lr=False)
    maml = MAML(model=model, optimizer=Adam(model.parameters(), 1e-3), inner_optimizer=inner,
                support_loss_fn=CrossEntropy(metric_fn=CategoricalAccuracy()), inner_steps=steps, chunk_size=B, backend="vmap")
    one meta-step: maml.step(iter([(support_x, {"labels": support_y}, query_x, {"labels": query_y})]))

``step`` zeroes the gradients, maps the tasks with ``torch.func.vmap`` (inner gradients by ``torch.func.grad``),
backpropagates each chunk's mean and steps the optimizer. ``chunk_size`` = the meta-batch: one chunk, its
default mode (full vectorisation). Its ``MAML_Model`` calls ``backbone(x, **kwargs)`` and ``head(z, **kwargs)``
(``training``, ``num_step``), which a plain ``nn.Sequential`` does not take, so the user's layers are wrapped in a
module that drops those keywords. No ProtoNet or Reptile cell (its prototypical and Reptile learners take other
model wrappers; not benchmarked here).
"""

from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms import MAML
from metalearn.inner_optimizers import InnerSGD
from metalearn.loss import CategoricalAccuracy, CrossEntropy
from metalearn.model_wrappers import MAML_Model

from bench.peers.common import reference_model

LIBRARY = "parallel-metalearn"
SUPPORTS = {"maml"}
MODELS = ("conv4", "resnet12")
NOTES = "metalearn.algorithms.MAML, backend='vmap', chunk_size = meta-batch (one chunk), InnerSGD, CrossEntropy(metric_fn=CategoricalAccuracy()) as its README"


def version() -> str:
    from importlib.metadata import version as installed

    return installed("parallel-metalearn")


class _DropsKeywords(nn.Module):
    """``module(x)`` for a call ``forward(x, training=..., num_step=...)``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x, **kwargs):
        return self.module(x)


class _Features(nn.Module):
    """The user's ResNet-12 without its head: blocks, then the spatial mean."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.features = model.features

    def forward(self, x, **kwargs):
        return self.features(x).mean(dim=(2, 3))


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    user = reference_model(cell, cell.ways).to(sx.device, dtype)
    if isinstance(user, nn.Sequential):  # conv4_sequential: [..., Flatten, Linear]
        backbone, head = _DropsKeywords(nn.Sequential(*list(user)[:-1])), _DropsKeywords(user[-1])
    else:
        backbone, head = _Features(user), _DropsKeywords(user.head)
    model = MAML_Model(backbone=backbone, head=head)
    inner = InnerSGD(initial_fast_weights=model.get_fast_weights(), first_order=cell.first_order,
                     inner_lr=cell.inner_lr, max_inner_steps=max(cell.steps, 1), learn_lr=False)
    maml = MAML(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=cell.outer_lr), inner_optimizer=inner,
                support_loss_fn=CrossEntropy(metric_fn=CategoricalAccuracy()), inner_steps=cell.steps, chunk_size=cell.meta_batch,
                device=sx.device, backend="vmap")
    data = (sx, {"labels": sy}, qx, {"labels": qy})

    def step():
        maml.step(iter([data]))

    return step, list(model.parameters())
