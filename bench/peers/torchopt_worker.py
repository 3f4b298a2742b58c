"""TorchOpt 0.7.3 (runs in .peers/venv). Its C++ ops (torchopt._C) do not load with torch 2.13 (ABI):
TorchOpt runs its pure-PyTorch path, which is its default (``use_accelerated_op=False``) anyway.

Second order, the OOP API as in its examples/few-shot/maml_omniglot.py::

    inner_opt = torchopt.MetaSGD(model, lr=inner_lr)
    net_state = torchopt.extract_state_dict(model); opt_state = torchopt.extract_state_dict(inner_opt)
    per task: steps x inner_opt.step(CE(model(sx), sy))
              (CE(model(qx), qy) / B).backward()
              torchopt.recover_state_dict(model, net_state); torchopt.recover_state_dict(inner_opt, opt_state)

First order: ``MetaSGD.step`` always differentiates with ``create_graph=True``, so the first-order
variant uses the functional API: ``torch.func.functional_call`` on a params tuple, inner gradients by
``torch.autograd.grad`` without a graph, ``torchopt.sgd(lr).update(..., inplace=False)`` and
``torchopt.apply_updates(..., inplace=False)`` (d phi / d theta = I). No ProtoNet or Reptile.

iMAML, its implicit differentiation as in its examples/iMAML/imaml_omniglot_functional.py: the inner solver
(``steps`` of ``torchopt.sgd`` on CE + lam/2 ||phi - theta||^2 from theta) decorated with
``torchopt.diff.implicit.custom_root(torch.func.grad(objective), argnums=1, solve=...)``, per task
``(CE(f(qx_i; phi_i), qy_i) / B).backward()``. The example solves with ``solve_normal_cg`` (CG on the normal
equations: two Hessian-vector products per iteration); here ``linear_solve.solve_cg`` (one per iteration, for the
symmetric H + lam I, as quickstudy), ``cg_steps`` iterations from 0 with no early stop: the same maths and work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchopt
from torch.func import functional_call

from bench.peers.common import reference_model

LIBRARY = "TorchOpt"
SUPPORTS = {"maml", "imaml"}
MODELS = ("conv4", "resnet12")  # the user's model of the cell (common.reference_model)
NOTES = "2nd order: MetaSGD + extract/recover_state_dict; 1st order: functional sgd + apply_updates"


def version() -> str:
    return torchopt.__version__


def build(cell, batch, dtype):
    sx, sy, qx, qy = batch
    b = cell.meta_batch
    model = reference_model(cell, cell.ways).to(sx.device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cell.outer_lr)
    if cell.algo == "imaml":
        return _imaml(cell, model, opt, batch), list(model.parameters())

    if not cell.first_order:
        inner_opt = torchopt.MetaSGD(model, lr=cell.inner_lr)
        net_state = torchopt.extract_state_dict(model)
        opt_state = torchopt.extract_state_dict(inner_opt)

        def step():
            opt.zero_grad()
            for i in range(b):
                for _ in range(cell.steps):
                    inner_opt.step(F.cross_entropy(model(sx[i]), sy[i]))
                logits = model(qx[i])
                (F.cross_entropy(logits, qy[i]) / b).backward()
                (logits.detach().argmax(-1) == qy[i]).float().mean()
                torchopt.recover_state_dict(model, net_state)
                torchopt.recover_state_dict(inner_opt, opt_state)
            opt.step()

        return step, list(model.parameters())

    names = [n for n, _ in model.named_parameters()]
    theta = tuple(p for _, p in model.named_parameters())
    sgd = torchopt.sgd(lr=cell.inner_lr)

    def forward(params, x):
        return functional_call(model, dict(zip(names, params)), (x,))

    def step():
        opt.zero_grad()
        for i in range(b):
            fast = theta
            state = sgd.init(fast)
            for _ in range(cell.steps):
                grads = torch.autograd.grad(F.cross_entropy(forward(fast, sx[i]), sy[i]), fast)
                updates, state = sgd.update(grads, state, inplace=False)
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            logits = forward(fast, qx[i])
            (F.cross_entropy(logits, qy[i]) / b).backward()
            (logits.detach().argmax(-1) == qy[i]).float().mean()
        opt.step()

    return step, list(model.parameters())


def _imaml(cell, model, opt, batch):
    sx, sy, qx, qy = batch
    b = cell.meta_batch
    names = [n for n, _ in model.named_parameters()]
    meta_params = tuple(p for _, p in model.named_parameters())

    def forward(params, x):
        return functional_call(model, dict(zip(names, params)), (x,))

    def objective(params, meta, x, y):
        proximal = sum(((p - m) ** 2).sum() for p, m in zip(params, meta))
        return F.cross_entropy(forward(params, x), y) + 0.5 * cell.lam * proximal

    solve = torchopt.linear_solve.solve_cg(maxiter=cell.cg_steps, rtol=0.0, atol=0.0)

    @torchopt.diff.implicit.custom_root(torch.func.grad(objective, argnums=0), argnums=1, solve=solve)
    def inner_solve(params, meta, x, y):
        sgd = torchopt.sgd(lr=cell.inner_lr)
        state = sgd.init(params)
        with torch.enable_grad():
            for _ in range(cell.steps):
                grads = torch.autograd.grad(objective(params, meta, x, y), params)
                updates, state = sgd.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
        return params

    def step():
        opt.zero_grad()
        for i in range(b):
            start = tuple(p.detach().clone().requires_grad_() for p in meta_params)
            phi = inner_solve(start, meta_params, sx[i], sy[i])
            logits = forward(phi, qx[i])
            (F.cross_entropy(logits, qy[i]) / b).backward()
            (logits.detach().argmax(-1) == qy[i]).float().mean()
        opt.step()

    return step
