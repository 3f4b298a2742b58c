"""Plain PyTorch, a per-task loop: the baseline the issue's peers were all within ~20% of.

No library: the Conv4 is written with ``torch.nn.functional`` on a flat list of parameter tensors
(:func:`common.conv4_functional`, native ``F.batch_norm`` with batch statistics), so there is no module
machinery at all.

MAML, per task i (tasks one after another)::

    fast = theta
    repeat steps:  g = autograd.grad(CE(f(sx_i; fast), sy_i), fast, create_graph=not first_order)
                   fast = [w - lr * g]                      # first order: g is a constant
    (CE(f(qx_i; fast), qy_i) / B).backward()                 # frees task i's graph

ProtoNet, per task: embed support and query (two forwards, so batch norm sees each set on its own, as
quickstudy does), class means, logits = -squared distances, ``(CE / B).backward()``.

Reptile, per task: phi = detached copy of theta, ``steps`` Adam steps (betas (0, 0.999)) on the support
set, accumulate phi; the query loss of phi is evaluated without grad (quickstudy's Reptile does it for its
metrics, so the work is the same); then ``theta.grad = theta - mean(phi)``.

iMAML, per task: phi = detached copy of theta, ``steps`` SGD steps on CE(f(sx_i; phi), sy_i) + lam/2 ||phi - theta||^2
(gradients without a graph), g = grad of the query loss at phi, then ``cg_steps`` iterations of conjugate gradient
from 0 on (I + H / lam) v = g, H v by double backward of the support loss at phi; ``theta.grad += v / B``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.peers.common import conv4_functional, proto_logits, reference_state

LIBRARY = "plain torch loop"
SUPPORTS = {"maml", "protonet", "reptile", "imaml"}
NOTES = "functional Conv4 (F.conv2d, F.batch_norm with batch stats), per-task backward"


def version() -> str:
    return torch.__version__


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    ways = cell.ways if cell.algo != "protonet" else None
    theta = [p.to(sx.device, dtype).requires_grad_() for p in reference_state(ways)]
    opt = torch.optim.Adam(theta, lr=cell.outer_lr)
    b = cell.meta_batch

    if cell.algo == "maml":
        create_graph = not cell.first_order

        def step():
            opt.zero_grad()
            for i in range(b):
                fast = theta
                for _ in range(cell.steps):
                    loss = F.cross_entropy(conv4_functional(fast, sx[i]), sy[i])
                    grads = torch.autograd.grad(loss, fast, create_graph=create_graph)
                    fast = [w - cell.inner_lr * g for w, g in zip(fast, grads)]
                logits = conv4_functional(fast, qx[i])
                (F.cross_entropy(logits, qy[i]) / b).backward()
                (logits.detach().argmax(-1) == qy[i]).float().mean()  # accuracy, as every library reports
            opt.step()

    elif cell.algo == "protonet":

        def step():
            opt.zero_grad()
            for i in range(b):
                logits = proto_logits(conv4_functional(theta, sx[i]), sy[i], conv4_functional(theta, qx[i]), cell.ways)
                (F.cross_entropy(logits, qy[i]) / b).backward()
            opt.step()

    elif cell.algo == "imaml":

        def step():
            opt.zero_grad()
            for i in range(b):
                phi = [p.detach().clone().requires_grad_() for p in theta]
                for _ in range(cell.steps):
                    loss = F.cross_entropy(conv4_functional(phi, sx[i]), sy[i])
                    grads = torch.autograd.grad(loss, phi)
                    with torch.no_grad():
                        for p, g, t in zip(phi, grads, theta):
                            p -= cell.inner_lr * (g + cell.lam * (p - t))
                logits = conv4_functional(phi, qx[i])
                g_query = torch.autograd.grad(F.cross_entropy(logits, qy[i]), phi)
                (logits.detach().argmax(-1) == qy[i]).float().mean()
                support_grad = torch.autograd.grad(F.cross_entropy(conv4_functional(phi, sx[i]), sy[i]), phi,
                                                   create_graph=True)

                def matvec(v):  # (I + H / lam) v
                    hv = torch.autograd.grad(support_grad, phi, v, retain_graph=True)
                    return [a + h / cell.lam for a, h in zip(v, hv)]

                v = _conjugate_gradient(matvec, list(g_query), cell.cg_steps)
                with torch.no_grad():
                    for p, vi in zip(theta, v):
                        p.grad = vi / b if p.grad is None else p.grad + vi / b
            opt.step()

    else:  # reptile

        def step():
            opt.zero_grad()
            total = [torch.zeros_like(p) for p in theta]
            for i in range(b):
                phi = [p.detach().clone().requires_grad_() for p in theta]
                inner = torch.optim.Adam(phi, lr=cell.inner_lr, betas=(0.0, 0.999))
                for _ in range(cell.steps):
                    loss = F.cross_entropy(conv4_functional(phi, sx[i]), sy[i])
                    for p, g in zip(phi, torch.autograd.grad(loss, phi)):
                        p.grad = g
                    inner.step()
                torch._foreach_add_(total, [p.detach() for p in phi])
                with torch.no_grad():
                    F.cross_entropy(conv4_functional(phi, qx[i]), qy[i])
            with torch.no_grad():
                for p, s in zip(theta, total):
                    p.grad = p.detach() - s / b
            opt.step()

    return step, theta


def _conjugate_gradient(matvec, rhs, steps):
    """``steps`` iterations of textbook conjugate gradient from 0 for A x = rhs (A symmetric, given by ``matvec``)."""
    dot = lambda a, c: sum((x * y).sum() for x, y in zip(a, c))  # noqa: E731
    x = [torch.zeros_like(r) for r in rhs]
    r, p = list(rhs), list(rhs)
    rs = dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        alpha = rs / dot(p, ap)
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs_next = dot(r, r)
        p = [ri + (rs_next / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_next
    return x
