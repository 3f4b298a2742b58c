r"""MAML for reinforcement learning (Finn, Abbeel & Levine, ICML 2017, section 3.2 and 5.3).

For each task ``T_i`` of a meta-batch, with ``K`` episodes ``D_i`` sampled by the policy ``pi_theta``::

    inner (vanilla policy gradient, REINFORCE with a linear baseline and GAE):
        L_i(phi; D) = - 1/|D| sum_{(s,a) in D} log pi_phi(a|s) A(s,a)
        phi_i = theta - alpha grad_theta L_i(theta; D_i)                           (inner_steps times)

    outer (TRPO, as the paper): with D'_i sampled by pi_{phi_i} and phi_i a function of theta,
        max_theta  1/B sum_i  E_{D'_i} [ pi_{phi_i(theta)}(a|s) / pi_{phi_i(theta_old)}(a|s) A'(s,a) ]
        s.t.       1/B sum_i  E_{D'_i} [ KL(pi_{phi_i(theta_old)}(.|s) || pi_{phi_i(theta)}(.|s)) ] <= delta

solved with conjugate gradient on Fisher-vector products (which differentiate through the inner update)
and a backtracking line search (:mod:`quickstudy.rl.trpo`). Options:

* ``outer="ppo"``: the clipped objective ``E[min(r A', clip(r, 1 - eps, 1 + eps) A')]`` maximised by a few Adam
  steps per meta-iteration, re-adapting from the new ``theta`` each step (ProMP-like: Rothfuss et al. 2019,
  without ProMP's inner-KL penalty);
* ``inner_objective="lvc"``: the inner loss ``-E[exp(log pi_phi - stopgrad log pi_phi) A]`` — the same value
  and gradient as REINFORCE, but its Hessian keeps the score-function term of the sampling distribution
  (ProMP's low-variance curvature estimator); ``"reinforce"`` (default) differentiates ``log pi A``, as the paper;
* ``first_order=True``: ``grad_theta phi_i = I`` (the inner gradient is treated as a constant).

Several processes (``reduce_mean``, set by the trainer's distributed update): each holds a share of the
meta-batch, and every mean over tasks the outer step uses (surrogate and KL at every line-search point, the
surrogate gradient, every Fisher-vector product, PPO's gradients) is averaged across the processes, weighted by
their task counts, before it is used. Conjugate gradient and the line search then run on identical numbers
everywhere, so every process takes the step one process would take on the whole meta-batch.

The inner update is :func:`quickstudy.algorithms.inner_loop.inner_gradients` + ``sgd_step`` applied to the
B tasks at once: the parameters are stacked per task (a differentiable ``expand`` of ``theta``), the loss is
the sum of the task losses, so one backward gives every task's gradient.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..algorithms.inner_loop import inner_gradients, sgd_step
from .._validation import check_bool, check_choice, check_int, check_number
from .policies import policy_outputs, stack_params
from .rollout import Episodes
from .trpo import backtracking_line_search, conjugate_gradient, flatten, unflatten

__all__ = ["MAMLRL", "pg_loss", "adapt_params"]

Params = dict[str, Tensor]


def _masked_task_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Per-task mean of ``values [B, E, H]`` over the valid steps -> ``[B]``."""
    return (values * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1.0)


def pg_loss(policy: nn.Module, params: Params, batch: Episodes, *, objective: str = "reinforce",
            strategy: str = "vmap") -> Tensor:
    """Sum over the B tasks of the vanilla policy-gradient loss ``-E[log pi(a|s) A]`` (``params`` stacked per
    task). Its gradient with respect to the stacked parameters is each task's REINFORCE gradient."""
    out = policy_outputs(policy, params, batch.obs, per_task=True, strategy=strategy)
    logp = policy.log_prob(out, batch.actions)
    term = logp if objective == "reinforce" else torch.exp(logp - logp.detach())
    return -_masked_task_mean(term * batch.advantages, batch.mask).sum()


def adapt_params(policy: nn.Module, params: Params, batches: Sequence[Episodes], lr: float, *, create_graph: bool,
                 objective: str = "reinforce", strategy: str = "vmap") -> Params:
    """Fast weights ``phi_i`` of every task after one VPG step per batch in ``batches`` (batch ``k`` sampled by
    the weights after ``k`` steps). ``params`` shared (stacked here) or already stacked ``[B, ...]``."""
    if not batches:
        return params
    tasks = batches[0].num_tasks
    fast = params
    name = next(iter(params))
    if params[name].dim() == dict(policy.named_parameters())[name].dim():  # shared: one copy per task
        fast = stack_params(params, tasks)
    for batch in batches:
        grads, _ = inner_gradients(lambda p: pg_loss(policy, p, batch, objective=objective, strategy=strategy),
                                   fast, create_graph=create_graph, use_func=False)
        fast = sgd_step(fast, grads, lr, use_func=False)
    return fast


class MAMLRL:
    """MAML-RL with a TRPO (default) or PPO-clipped outer step; see the module docstring for the maths.

    ``learner.adapt(batches)`` -> per-task fast weights; ``learner.step(train_batches, valid_batch)`` -> one
    meta-update of ``policy``'s parameters in place, returning diagnostics (surrogate gain, KL, ...).
    """

    OUTERS = ("trpo", "ppo")
    OBJECTIVES = ("reinforce", "lvc")

    def __init__(self, policy: nn.Module, *, inner_lr: float = 0.1, inner_steps: int = 1, first_order: bool = False,
                 outer: str = "trpo", inner_objective: str = "reinforce", max_kl: float = 0.01, cg_iters: int = 10,
                 cg_damping: float = 1e-5, ls_ratio: float = 0.8, ls_max_steps: int = 15, ppo_clip: float = 0.2,
                 ppo_epochs: int = 5, ppo_lr: float = 1e-3, strategy: str = "vmap") -> None:
        owner = "MAMLRL"
        if not isinstance(policy, nn.Module):
            raise TypeError(f"{owner}: policy must be a torch.nn.Module, got {type(policy).__name__}")
        self.policy = policy
        self.inner_lr = check_number(owner, "inner_lr", inner_lr)
        self.inner_steps = check_int(owner, "inner_steps", inner_steps, minimum=0)
        self.first_order = check_bool(owner, "first_order", first_order)
        self.outer = check_choice(owner, "outer", outer, self.OUTERS)
        self.inner_objective = check_choice(owner, "inner_objective", inner_objective, self.OBJECTIVES)
        self.max_kl = check_number(owner, "max_kl", max_kl)
        self.cg_iters = check_int(owner, "cg_iters", cg_iters)
        self.cg_damping = check_number(owner, "cg_damping", cg_damping, allow_zero=True)
        self.ls_ratio = check_number(owner, "ls_ratio", ls_ratio)
        if not self.ls_ratio < 1:
            raise ValueError(f"{owner}: ls_ratio must be in (0, 1), got {ls_ratio!r}")
        self.ls_max_steps = check_int(owner, "ls_max_steps", ls_max_steps)
        self.ppo_clip = check_number(owner, "ppo_clip", ppo_clip)
        self.ppo_epochs = check_int(owner, "ppo_epochs", ppo_epochs)
        self.ppo_lr = check_number(owner, "ppo_lr", ppo_lr)
        self.strategy = check_choice(owner, "strategy", strategy, ("vmap", "loop"))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.ppo_lr) if self.outer == "ppo" else None
        #: ``reduce_mean(t)``: this process's mean over its tasks -> the mean over the whole meta-batch (None: alone)
        self.reduce_mean: Callable[[Tensor], Tensor] | None = None

    def _mean(self, value: Tensor) -> Tensor:
        return value if self.reduce_mean is None else self.reduce_mean(value.detach().clone())

    # ------------------------------------------------------------------ functional pieces
    def params(self) -> Params:
        return {k: v for k, v in self.policy.named_parameters()}

    def adapt(self, batches: Sequence[Episodes], params: Params | None = None, create_graph: bool = False) -> Params:
        """Per-task fast weights after one inner step per batch (detached unless ``create_graph``)."""
        theta = self.params() if params is None else params
        if not create_graph:
            theta = {k: v.detach() for k, v in theta.items()}
        fast = adapt_params(self.policy, theta, batches, self.inner_lr, create_graph=create_graph,
                            objective=self.inner_objective, strategy=self.strategy)
        return fast if create_graph else {k: v.detach() for k, v in fast.items()}

    def _outer_graph(self, theta: Params, trains: Sequence[Episodes]) -> Params:
        return adapt_params(self.policy, theta, trains, self.inner_lr, create_graph=not self.first_order,
                            objective=self.inner_objective, strategy=self.strategy)

    def _outputs(self, fast: Params, valid: Episodes):
        return policy_outputs(self.policy, fast, valid.obs, per_task=True, strategy=self.strategy)

    def _surrogate_kl(self, out, old_out, valid: Episodes) -> tuple[Tensor, Tensor, Tensor]:
        logp = self.policy.log_prob(out, valid.actions)
        ratio = torch.exp(logp - valid.logp)
        surrogate = _masked_task_mean(ratio * valid.advantages, valid.mask).mean()
        kl = _masked_task_mean(self.policy.kl(old_out, out), valid.mask).mean()
        return surrogate, kl, ratio

    # ------------------------------------------------------------------ the meta-update
    def step(self, trains: Sequence[Episodes], valid: Episodes) -> dict[str, float]:
        if len(trains) != self.inner_steps:
            raise ValueError(f"MAMLRL.step: expected {self.inner_steps} inner batches (one per inner step), got "
                             f"{len(trains)}")
        if valid.advantages is None or any(t.advantages is None for t in trains):
            raise ValueError("MAMLRL.step: the batches have no advantages; run process_episodes on them first")
        return self._trpo_step(trains, valid) if self.outer == "trpo" else self._ppo_step(trains, valid)

    def _trpo_step(self, trains: Sequence[Episodes], valid: Episodes) -> dict[str, float]:
        names = list(self.params())
        theta0 = {k: v.detach().clone() for k, v in self.params().items()}
        theta = {k: v.clone().requires_grad_() for k, v in theta0.items()}
        with torch.enable_grad():
            out = self._outputs(self._outer_graph(theta, trains), valid)
            old_out = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
            surrogate, kl, _ = self._surrogate_kl(out, old_out, valid)
            leaves = [theta[k] for k in names]
            grad = self._mean(flatten(torch.autograd.grad(surrogate, leaves, retain_graph=True)))
            kl_grad = flatten(torch.autograd.grad(kl, leaves, create_graph=True))

            def fisher(v: Tensor) -> Tensor:
                hv = torch.autograd.grad(kl_grad.dot(v), leaves, retain_graph=True)
                return self._mean(flatten(hv)) + self.cg_damping * v

            direction = conjugate_gradient(fisher, grad, self.cg_iters)
            curvature = float(direction.dot(fisher(direction)))
        surrogate0 = float(self._mean(surrogate.detach()))
        if not (math.isfinite(curvature) and curvature > 0):
            return {"surrogate": surrogate0, "surrogate_gain": 0.0, "kl": 0.0, "ls_steps": -1,
                    "grad_norm": float(grad.norm())}
        step = math.sqrt(2.0 * self.max_kl / curvature) * direction
        x0 = flatten(theta0)

        def evaluate(x: Tensor) -> tuple[float, float]:
            candidate = unflatten(x, theta0)
            fast = self.adapt(trains, candidate, create_graph=False)
            with torch.no_grad():
                s, k, _ = self._surrogate_kl(self._outputs(fast, valid), old_out, valid)
                s, k = self._mean(torch.stack([s, k])).tolist()
            return float(s), float(k)

        x, steps, new_surrogate, new_kl = backtracking_line_search(evaluate, x0, step, surrogate0, self.max_kl,
                                                                   self.ls_ratio, self.ls_max_steps)
        with torch.no_grad():
            for key, value in unflatten(x, theta0).items():
                dict(self.policy.named_parameters())[key].copy_(value)
        return {"surrogate": surrogate0, "surrogate_gain": new_surrogate - surrogate0, "kl": new_kl,
                "ls_steps": steps, "grad_norm": float(grad.norm())}

    def _ppo_step(self, trains: Sequence[Episodes], valid: Episodes) -> dict[str, float]:
        assert self.optimizer is not None
        first = None
        kl = torch.zeros(())
        old_out = None
        for _ in range(self.ppo_epochs):
            out = self._outputs(self._outer_graph(self.params(), trains), valid)
            if old_out is None:
                old_out = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
            surrogate, kl, ratio = self._surrogate_kl(out, old_out, valid)
            clipped = torch.minimum(ratio * valid.advantages,
                                    ratio.clamp(1 - self.ppo_clip, 1 + self.ppo_clip) * valid.advantages)
            objective = _masked_task_mean(clipped, valid.mask).mean()
            first = float(self._mean(objective.detach())) if first is None else first
            self.optimizer.zero_grad(set_to_none=True)
            (-objective).backward()
            if self.reduce_mean is not None:
                params = [p for p in self.policy.parameters() if p.grad is not None]
                averaged = self._mean(flatten([p.grad for p in params])).split([p.numel() for p in params])
                for p, g in zip(params, averaged):
                    p.grad.copy_(g.view_as(p.grad))
            self.optimizer.step()
        with torch.no_grad():
            fast = self.adapt(trains)
            s, k, _ = self._surrogate_kl(self._outputs(fast, valid), old_out, valid)
            s, k = self._mean(torch.stack([s, k]))
        return {"surrogate": first, "surrogate_gain": float(s) - first, "kl": float(k), "ls_steps": 0,
                "grad_norm": float("nan")}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = {"policy": self.policy.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
