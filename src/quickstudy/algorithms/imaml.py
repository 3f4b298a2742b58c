r"""iMAML — implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019, arXiv:1909.04630).

The inner problem is regularised towards the initialisation theta (``lam`` = lambda, the proximal weight):

    inner solve:   phi_i = argmin_phi  L_S(phi) + lam/2 * ||phi - theta||^2
                   (approximated by k = inner_steps gradient-descent steps from phi = theta, step ``inner_lr``)
    meta-gradient: d L_Q(phi_i) / d theta = (I + H_i / lam)^{-1} grad_phi L_Q(phi_i),   H_i = hessian of L_S at phi_i
                   (the implicit function theorem at the inner optimum; solved by ``cg_steps`` of conjugate gradient,
                    each one Hessian-vector product of the support loss)
    outer update:  theta <- theta - beta * 1/B * sum_i (I + H_i / lam)^{-1} grad_phi L_Q(phi_i)

The inner path is never differentiated: each inner step's graph is freed before the next, and the CG graph holds
one task's support-loss gradient graph, so memory does not grow with ``inner_steps`` (MAML's grows linearly).
``task_loss`` returns the query loss as a *surrogate* whose gradient with respect to theta is the implicit
meta-gradient: ``L_Q(phi).detach() + sum <v, theta> - sum <v, theta>.detach()`` with v the CG solution; its value is
the query loss. So every execution strategy (loop, threads, vmap, where the Hessian-vector products are
``torch.func.vjp`` of ``torch.func.grad``) and the Trainer run it unchanged.

``cg_damping`` and ``hessian_damping`` (default 0 and 0, the paper's equation) solve
((1 + cg_damping) I + H / (lam + hessian_damping)) v = g instead: the authors' released Omniglot code
(github.com/aravindr93/imaml_dev) solves it with cg_damping = 1 and hessian_damping = 10, which keeps CG stable
when H has large negative curvature and leans the meta-gradient towards the first-order one. Adaptation at
evaluation runs the same regularised inner loop with ``eval_lam`` (default ``lam``; that code evaluates with 0,
plain gradient descent) for ``eval_steps`` steps.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .._validation import check_int, check_number
from ..tasks.batch import Task
from .execution import Run
from .gradient import GradientMetaLearner
from .inner_loop import inner_gradients, sgd_step

__all__ = ["IMAML", "conjugate_gradient"]

Params = dict[str, Tensor]


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 where den is 0 (CG has converged: no data-dependent branch, so it runs under vmap)."""
    tiny = torch.finfo(den.dtype).tiny
    return torch.where(den.abs() > tiny, num / torch.where(den.abs() > tiny, den, torch.ones_like(den)),
                       torch.zeros_like(num))


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """``steps`` iterations of conjugate gradient for ``A x = b`` from x = 0 (A symmetric, given by ``matvec``)."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rs = _dot(r, r)
    for _ in range(steps):
        ap = matvec(p)
        alpha = _safe_ratio(rs, _dot(p, ap))
        x = {k: x[k] + alpha * p[k] for k in x}
        r = {k: r[k] - alpha * ap[k] for k in r}
        rs_next = _dot(r, r)
        beta = _safe_ratio(rs_next, rs)
        p = {k: r[k] + beta * p[k] for k in p}
        rs = rs_next
    return x


class IMAML(GradientMetaLearner):
    """``IMAML(model, lam=2.0, inner_lr=0.1, inner_steps=16, cg_steps=5, cg_damping=0.0, hessian_damping=0.0,
    loss="cross_entropy", strategy="auto", eval_steps=None, eval_lam=None)``.

    Args:
        model: any ``nn.Module``; its parameters are theta.
        lam: the proximal weight lambda (> 0) of the inner objective L_S(phi) + lam/2 ||phi - theta||^2.
        inner_lr, inner_steps: gradient descent on the inner objective (the paper's Omniglot runs: 0.1 and 16/25).
        cg_steps: conjugate-gradient iterations for the implicit meta-gradient (the paper: 5).
        cg_damping, hessian_damping: solve ((1 + cg_damping) I + H / (lam + hessian_damping)) v = g
            (0 and 0: the paper's equation; the authors' code: 1 and 10).
        eval_lam: lambda at adaptation (``adapt``/``predict``); default ``lam``.
        Other arguments as :class:`~.maml.MAML`.
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float = 2.0,
        inner_lr: float = 0.1,
        inner_steps: int = 16,
        cg_steps: int = 5,
        cg_damping: float = 0.0,
        hessian_damping: float = 0.0,
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        strategy: str = "auto",
        eval_steps: int | None = None,
        eval_lam: float | None = None,
        task_type: str | None = None,
    ) -> None:
        super().__init__(model, inner_lr=inner_lr, inner_steps=inner_steps, first_order=True, loss=loss,
                         strategy=strategy, eval_steps=eval_steps, task_type=task_type)
        self.lam = check_number("IMAML", "lam", lam)
        self.eval_lam = check_number("IMAML", "eval_lam", eval_lam, allow_zero=True, allow_none=True)
        self.cg_steps = check_int("IMAML", "cg_steps", cg_steps, minimum=0)
        self.cg_damping = check_number("IMAML", "cg_damping", cg_damping, allow_zero=True)
        self.hessian_damping = check_number("IMAML", "hessian_damping", hessian_damping, allow_zero=True)

    # ----------------------------------------------------------------- the maths of one task
    def _solve_inner(self, theta: Params, x: Tensor, y: Tensor, steps: int, lam: float, run: Run):
        """phi ~ argmin L_S(phi) + lam/2 ||phi - theta||^2 by gradient descent (no graph to theta is kept)."""
        anchor = {k: v.detach() for k, v in theta.items()}

        def objective(p: Params) -> Tensor:
            proximal = sum(((p[k] - anchor[k]) ** 2).sum() for k in p)
            return self.loss_fn(run(p, x), y) + 0.5 * lam * proximal

        fast, losses = dict(anchor), []
        for _ in range(steps):
            grads, value = inner_gradients(objective, fast, create_graph=False, use_func=run.use_func)
            fast = {k: v.detach() for k, v in sgd_step(fast, grads, self.inner_lr, use_func=run.use_func).items()}
            losses.append(value)
        return fast, losses

    def inner_adapt(self, meta, support_x, support_y, steps, create_graph, run):
        lam = self.lam if self.eval_lam is None else self.eval_lam
        return self._solve_inner(meta["params"], support_x, support_y, steps, lam, run)

    def forward_adapted(self, meta, fast, x, run):
        return run(fast, x)

    def _query_gradient(self, phi: Params, task: Task, run: Run) -> tuple[Params, Tensor, Tensor]:
        """(d L_Q / d phi, L_Q, query outputs), all detached."""
        def loss_and_outputs(p: Params):
            outputs = run(p, task.query_x)
            return self.loss_fn(outputs, task.query_y), outputs

        if run.use_func:
            grads, (loss, outputs) = torch.func.grad_and_value(loss_and_outputs, has_aux=True)(phi)
            return grads, loss.detach(), outputs.detach()
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in phi.items()}
            loss, outputs = loss_and_outputs(leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()), materialize_grads=True)
        return dict(zip(leaves, grads)), loss.detach(), outputs.detach()

    def _hessian_vector_product(self, phi: Params, task: Task, run: Run) -> Callable[[Params], Params]:
        """v -> H v, H the Hessian of the support loss at phi (its gradient graph built once, reused by CG)."""
        run = run.replace(backward_once=False)  # this graph is differentiated twice

        def support_loss(p: Params) -> Tensor:
            return self.loss_fn(run(p, task.support_x), task.support_y)

        if run.use_func:
            _, vjp = torch.func.vjp(torch.func.grad(support_loss), phi)
            return lambda v: vjp(v)[0]  # H is symmetric: v^T H = (H v)^T
        with torch.enable_grad():
            leaves = {k: v.detach().requires_grad_() for k, v in phi.items()}
            grads = torch.autograd.grad(support_loss(leaves), list(leaves.values()), create_graph=True)

        def hvp(v: Params) -> Params:
            with torch.enable_grad():
                out = torch.autograd.grad(grads, list(leaves.values()), grad_outputs=[v[k] for k in leaves],
                                          retain_graph=True, materialize_grads=True)
            return {k: t.detach() for k, t in zip(leaves, out)}

        return hvp

    def implicit_gradient(self, meta, task: Task, run: Run) -> tuple[Params, Tensor, Tensor]:
        """(v = (I + H/lam)^{-1} grad L_Q(phi), L_Q(phi), query outputs) for one task."""
        phi, _ = self._solve_inner(meta["params"], task.support_x, task.support_y, self.inner_steps, self.lam, run)
        g, loss, outputs = self._query_gradient(phi, task, run)
        if self.cg_steps == 0:
            return g, loss, outputs
        hvp = self._hessian_vector_product(phi, task, run)
        shift, curvature_scale = 1.0 + self.cg_damping, self.lam + self.hessian_damping

        def matvec(v: Params) -> Params:
            hv = hvp(v)
            return {k: shift * v[k] + hv[k] / curvature_scale for k in v}

        return conjugate_gradient(matvec, g, self.cg_steps), loss, outputs

    def task_loss(self, meta, task: Task, run: Run) -> tuple[Tensor, Tensor]:
        """The surrogate whose value is L_Q(phi) and whose gradient with respect to theta is the implicit one."""
        v, loss, outputs = self.implicit_gradient(meta, task, run)
        theta = meta["params"]
        linear = sum((v[k].detach() * theta[k]).sum() for k in theta)
        return loss + linear - linear.detach(), outputs

    def extra_repr(self) -> str:
        return (f"lam={self.lam}, inner_lr={self.inner_lr}, inner_steps={self.inner_steps}, cg_steps={self.cg_steps}, "
                f"cg_damping={self.cg_damping}, hessian_damping={self.hessian_damping}, loss={self.loss!r}, "
                f"strategy={self.strategy!r}")
