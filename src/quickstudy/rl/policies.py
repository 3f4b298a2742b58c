r"""Stochastic policies as plain modules plus pure distribution maths (Finn et al. 2017, section 5.3).

A policy maps observations to the parameters of an action distribution; it is applied with
``torch.func.functional_call`` over a parameter dict, so the inner loop can differentiate through fast
weights exactly as supervised MAML does. The distribution maths are pure functions of those outputs:

* :class:`GaussianMLPPolicy` — ``a ~ N(mu(s), diag sigma^2)``, ``mu`` an MLP (100-100 ReLU for locomotion
  and navigation, as the paper), ``log sigma`` a state-independent parameter (initial ``sigma`` = 1)::

      log pi(a|s) = -1/2 sum_j ((a_j - mu_j) / sigma_j)^2 - sum_j log sigma_j - d/2 log(2 pi)
      KL(p || q)  =  sum_j log(sigma_q / sigma_p) + (sigma_p^2 + (mu_p - mu_q)^2) / (2 sigma_q^2) - 1/2

* :class:`CategoricalMLPPolicy` — ``a ~ Cat(softmax(logits(s)))`` for discrete actions::

      log pi(a|s) = log_softmax(logits)_a,     KL(p || q) = sum_a p_a (log p_a - log q_a)

:func:`policy_outputs` evaluates a policy on observations shaped ``[B, ..., obs_dim]`` with either one
parameter dict shared by the B tasks or per-task (stacked) parameters whose leading axis is B; the
per-task case runs as one batched computation (``torch.func.vmap``) or as a loop over the tasks.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_int_sequence, check_number

__all__ = ["GaussianMLPPolicy", "CategoricalMLPPolicy", "policy_outputs", "stack_params", "task_params"]

Params = dict[str, Tensor]
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def _mlp(owner: str, in_dim: int, out_dim: int, hidden: Sequence[int], activation: str) -> nn.Sequential:
    check_int(owner, "obs_dim", in_dim)
    check_int(owner, "action_dim", out_dim)
    sizes = check_int_sequence(owner, "hidden", hidden)
    check_choice(owner, "activation", activation, _ACTIVATIONS)
    layers: list[nn.Module] = []
    width = in_dim
    for size in sizes:
        layers += [nn.Linear(width, size), _ACTIVATIONS[activation]()]
        width = size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class GaussianMLPPolicy(nn.Module):
    """``forward(obs [..., obs_dim]) -> (mean [..., action_dim], log_std [..., action_dim])``."""

    discrete = False

    def __init__(self, obs_dim: int, action_dim: int, hidden: Sequence[int] = (100, 100), activation: str = "relu",
                 init_std: float = 1.0, min_log_std: float = -6.0) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.mean = _mlp("GaussianMLPPolicy", obs_dim, action_dim, hidden, activation)
        std = check_number("GaussianMLPPolicy", "init_std", init_std)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(std)))
        self.min_log_std = float(min_log_std)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(obs)
        log_std = self.log_std.clamp(min=self.min_log_std).expand_as(mean)
        return mean, log_std

    @staticmethod
    def log_prob(out: tuple[Tensor, Tensor], actions: Tensor) -> Tensor:
        mean, log_std = out
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std).sum(-1) - 0.5 * mean.shape[-1] * math.log(2 * math.pi)

    @staticmethod
    def kl(old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Tensor:
        (mu_p, ls_p), (mu_q, ls_q) = old, new
        var_p, var_q = torch.exp(2 * ls_p), torch.exp(2 * ls_q)
        return (ls_q - ls_p + (var_p + (mu_p - mu_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)

    @staticmethod
    def sample(out: tuple[Tensor, Tensor], generator: torch.Generator | None = None) -> Tensor:
        mean, log_std = out
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise

    @staticmethod
    def entropy(out: tuple[Tensor, Tensor]) -> Tensor:
        _, log_std = out
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


class CategoricalMLPPolicy(nn.Module):
    """``forward(obs [..., obs_dim]) -> logits [..., num_actions]``; actions are integer tensors ``[...]``."""

    discrete = True

    def __init__(self, obs_dim: int, num_actions: int, hidden: Sequence[int] = (100, 100),
                 activation: str = "relu") -> None:
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, num_actions
        self.logits = _mlp("CategoricalMLPPolicy", obs_dim, num_actions, hidden, activation)

    def forward(self, obs: Tensor) -> Tensor:
        return self.logits(obs)

    @staticmethod
    def log_prob(out: Tensor, actions: Tensor) -> Tensor:
        return torch.log_softmax(out, -1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def kl(old: Tensor, new: Tensor) -> Tensor:
        lp, lq = torch.log_softmax(old, -1), torch.log_softmax(new, -1)
        return (lp.exp() * (lp - lq)).sum(-1)

    @staticmethod
    def sample(out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.softmax(out, -1)
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])

    @staticmethod
    def entropy(out: Tensor) -> Tensor:
        lp = torch.log_softmax(out, -1)
        return -(lp.exp() * lp).sum(-1)


def stack_params(params: Params, tasks: int) -> Params:
    """``tasks`` copies of ``params`` along a new leading axis, as a differentiable view (``expand``): the
    gradient of a sum of per-task losses with respect to it is the stack of the per-task gradients."""
    return {k: v.unsqueeze(0).expand(tasks, *v.shape) for k, v in params.items()}


def task_params(params: Params, index: int) -> Params:
    """The parameters of task ``index`` from a stacked dict."""
    return {k: v[index] for k, v in params.items()}


def policy_outputs(policy: nn.Module, params: Params, obs: Tensor, *, per_task: bool, strategy: str = "vmap"):
    """``policy`` applied with ``params`` to ``obs [B, ..., obs_dim]``.

    ``per_task=False``: one dict shared by all B tasks (one call). ``per_task=True``: ``params`` stacked
    ``[B, ...]``; ``strategy`` ``"vmap"`` batches the B calls into one (``torch.func.vmap``), ``"loop"``
    calls the policy task by task and stacks the outputs.
    """
    call = torch.func.functional_call
    if not per_task:
        return call(policy, params, (obs,))
    if strategy == "vmap":
        return torch.func.vmap(lambda p, o: call(policy, p, (o,)))(params, obs)
    if strategy != "loop":
        raise ValueError(f"policy_outputs: strategy must be 'vmap' or 'loop', got {strategy!r}")
    # one unbind per parameter, not B selects: a select's backward writes a full [B, ...] zero tensor per task
    columns = {k: v.unbind(0) for k, v in params.items()}
    outs = [call(policy, {k: column[i] for k, column in columns.items()}, (task_obs,))
            for i, task_obs in enumerate(obs.unbind(0))]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*outs))
    return torch.stack(outs)
