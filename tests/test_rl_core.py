"""Meta-RL building blocks against closed forms: the policy-gradient estimator on a linear-Gaussian bandit,
GAE and discounted returns on a hand-computed example, the linear baseline, conjugate gradient, the TRPO
step's KL bound, and the vmap/loop strategies agreeing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quickstudy.rl import (Episodes, GaussianMLPPolicy, MAMLRL, Navigation2D, conjugate_gradient, discounted_returns,
                           fit_linear_baseline, gae, pg_loss, process_episodes, rollout)
from quickstudy.rl.policies import CategoricalMLPPolicy, policy_outputs, stack_params


class LinearGaussian(nn.Module):
    """a ~ N(w s + b, sigma^2): the bandit whose policy gradient has a closed form."""

    discrete = False
    log_prob = staticmethod(GaussianMLPPolicy.log_prob)
    kl = staticmethod(GaussianMLPPolicy.kl)
    sample = staticmethod(GaussianMLPPolicy.sample)

    def __init__(self, w: float, b: float, log_std: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[w]], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([b], dtype=torch.float64))
        self.log_std = nn.Parameter(torch.tensor([log_std], dtype=torch.float64))

    def forward(self, obs):
        mean = obs @ self.w.T + self.b
        return mean, self.log_std.expand_as(mean)


def _bandit_batch(policy, n: int, k: float, seed: int) -> Episodes:
    """n one-step episodes: s ~ N(0, 1), a ~ pi(.|s), r = -(a - k s)^2; shaped [1 task, n, 1 step]."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(1, n, 1, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = policy(obs)
        actions = policy.sample(out, g)
        logp = policy.log_prob(out, actions)
    rewards = -(actions - k * obs).pow(2).squeeze(-1)
    mask = torch.ones_like(rewards)
    return Episodes(obs=obs, actions=actions, rewards=rewards, mask=mask, logp=logp)


@pytest.mark.parametrize("with_baseline", [False, True])
def test_policy_gradient_matches_the_analytic_gradient(with_baseline):
    # J(w, b, log sigma) = E[-(a - k s)^2] = -((w - k)^2 + b^2 + sigma^2) for s ~ N(0, 1)
    w, b, log_std, k = 0.3, -0.4, math.log(0.7), 1.0
    policy = LinearGaussian(w, b, log_std)
    batch = _bandit_batch(policy, 200_000, k, seed=0)
    if with_baseline:  # linear feature baseline (features of s), no normalization: still unbiased
        batch = process_episodes(batch, gamma=1.0, gae_lambda=1.0, normalize=False)
    else:
        batch.advantages = batch.rewards.clone()
    params = stack_params(dict(policy.named_parameters()), 1)
    grads = torch.autograd.grad(-pg_loss(policy, params, batch), list(params.values()))
    sigma2 = math.exp(2 * log_std)
    analytic = {"w": -2 * (w - k), "b": -2 * b, "log_std": -2 * sigma2}
    estimate = {name: float(g.sum()) for name, g in zip(params, grads)}
    for name, value in analytic.items():
        assert estimate[name] == pytest.approx(value, abs=0.04 if with_baseline else 0.08), (name, estimate)


def test_discounted_returns_and_gae_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    mask = torch.ones(1, 3)
    assert torch.allclose(discounted_returns(rewards, mask, 0.5), torch.tensor([[2.75, 3.5, 3.0]]))
    # delta = [1 + .5 - .5, 2 + .75 - 1, 3 - 1.5] = [1, 1.75, 1.5]; A_t = delta_t + .25 A_{t+1}
    assert torch.allclose(gae(rewards, values, mask, 0.5, 0.5), torch.tensor([[1.53125, 2.125, 1.5]]))
    # the episode ends after step 1: no bootstrap from step 2, which is masked out
    ended = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(gae(rewards, values, ended, 0.5, 0.5), torch.tensor([[1.25, 1.0, 0.0]]))
    # lambda = 1: A = R - V
    assert torch.allclose(gae(rewards, values, mask, 0.5, 1.0), discounted_returns(rewards, mask, 0.5) - values)


def test_linear_baseline_recovers_a_linear_return():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(3, 4, 10, 2, generator=g)
    t = torch.arange(10, dtype=torch.float32) / 100
    target = 2 * obs[..., 0] - obs[..., 1] ** 2 + 3 * t + torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1)
    values = fit_linear_baseline(obs, target, torch.ones(3, 4, 10))
    assert torch.allclose(values, target, atol=1e-3)


def test_conjugate_gradient_solves_an_spd_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=40, tol=1e-20)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)


def test_categorical_policy_maths():
    policy = CategoricalMLPPolicy(3, 4, hidden=(8,))
    out = policy(torch.randn(5, 3))
    actions = policy.sample(out, torch.Generator().manual_seed(0))
    assert actions.shape == (5,) and actions.dtype == torch.int64
    assert torch.allclose(policy.log_prob(out, actions), torch.log_softmax(out, -1)[torch.arange(5), actions])
    assert torch.allclose(policy.kl(out, out), torch.zeros(5), atol=1e-6)


def _nav_problem(outer="trpo", first_order=False, strategy="vmap", seed=0):
    family = Navigation2D(horizon=20)
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden=(16, 16))
    learner = MAMLRL(policy, inner_lr=0.1, max_kl=0.01, outer=outer, first_order=first_order, strategy=strategy,
                     ppo_epochs=2)
    g = torch.Generator().manual_seed(seed)
    tasks = family.sample_tasks(3, g)
    train = process_episodes(rollout(family, tasks, policy, learner.params(), 5, g, per_task=False), 0.99, 1.0)
    fast = learner.adapt([train])
    valid = process_episodes(rollout(family, tasks, policy, fast, 5, g, per_task=True), 0.99, 1.0)
    return learner, train, valid


@pytest.mark.parametrize("first_order", [False, True])
def test_trpo_step_respects_the_kl_bound_and_improves_the_surrogate(first_order):
    learner, train, valid = _nav_problem(first_order=first_order)
    old_fast = learner.adapt([train])
    old_out = tuple(o.detach() for o in policy_outputs(learner.policy, old_fast, valid.obs, per_task=True))
    before = {k: v.detach().clone() for k, v in learner.params().items()}
    stats = learner.step([train], valid)
    assert stats["ls_steps"] >= 0, "the line search accepted no step"
    assert stats["surrogate_gain"] > 0
    new_out = policy_outputs(learner.policy, learner.adapt([train]), valid.obs, per_task=True)
    kl = ((learner.policy.kl(old_out, new_out) * valid.mask).sum((1, 2)) / valid.mask.sum((1, 2))).mean()
    assert float(kl) <= learner.max_kl * (1 + 1e-4)
    assert float(kl) == pytest.approx(stats["kl"], rel=1e-4)
    assert any(not torch.equal(before[k], v) for k, v in learner.params().items())


def test_ppo_outer_step_improves_the_surrogate():
    learner, train, valid = _nav_problem(outer="ppo")
    stats = learner.step([train], valid)
    assert stats["surrogate_gain"] > 0 and math.isfinite(stats["kl"])


def test_vmap_and_loop_strategies_agree():
    learner, train, valid = _nav_problem(strategy="vmap")
    fast_v = learner.adapt([train])
    learner.strategy = "loop"
    fast_l = learner.adapt([train])
    for key in fast_v:
        assert torch.allclose(fast_v[key], fast_l[key], atol=1e-5), key


def test_step_checks_its_inputs():
    learner, train, valid = _nav_problem()
    with pytest.raises(ValueError, match="expected 1 inner batches"):
        learner.step([train, train], valid)
    with pytest.raises(ValueError, match="inner_lr"):
        MAMLRL(learner.policy, inner_lr=-1.0)
    with pytest.raises(ValueError, match="outer"):
        MAMLRL(learner.policy, outer="sgd")
