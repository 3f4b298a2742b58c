"""``torch.func.vmap`` over the tasks of the meta-batch (plain torch.func, no library).

Batch norm is written from primitive ops (:func:`common.primitive_batch_norm`): the native
``F.batch_norm`` under vmap over a ``torch.func.grad`` inner loop gives silently wrong second-order
gradients in torch 2.13 (pytorch/functorch#534; see quickstudy.models.batchnorm). One task::

    def task_loss(theta, sx, sy, qx, qy):
        fast = theta
        repeat steps: fast = fast - lr * torch.func.grad(support_loss)(fast)   # first order: on detached fast
        return CE(f(qx; fast), qy)

    loss = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(theta, *batch).mean(); loss.backward()

Every task's graph is alive at once. No ProtoNet or Reptile.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.peers.common import conv4_functional, primitive_batch_norm, reference_state

LIBRARY = "torch.func vmap"
SUPPORTS = {"maml"}
NOTES = "vmap over tasks, torch.func.grad inner loop, batch norm from primitive ops, one backward"


def version() -> str:
    return torch.__version__


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    theta = [p.to(sx.device, dtype).requires_grad_() for p in reference_state(cell.ways)]
    opt = torch.optim.Adam(theta, lr=cell.outer_lr)

    def forward(params, x):
        return conv4_functional(params, x, bn=primitive_batch_norm)

    def support_loss(params, x, y):
        return F.cross_entropy(forward(params, x), y)

    def task_loss(params, x, y, xq, yq):
        fast = params
        for _ in range(cell.steps):
            if cell.first_order:
                grads = torch.func.grad(support_loss)([w.detach() for w in fast], x, y)
            else:
                grads = torch.func.grad(support_loss)(fast, x, y)
            fast = [w - cell.inner_lr * g for w, g in zip(fast, grads)]
        logits = forward(fast, xq)
        return F.cross_entropy(logits, yq), logits

    batched = torch.func.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))

    def step():
        opt.zero_grad()
        losses, logits = batched(theta, sx, sy, qx, qy)
        losses.mean().backward()
        (logits.detach().argmax(-1) == qy).float().mean()
        opt.step()

    return step, theta
