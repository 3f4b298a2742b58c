"""Reptile: the outer step equals eps * mean(phi - theta), phi computed by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F

from quickstudy.algorithms import Reptile
from _toy import class_batch as _class_batch, tiny_mlp


def class_batch(B=3, **kwargs):
    return _class_batch(B=B, **kwargs)


def adapted_by_hand(model, x, y, steps, make_opt):
    clone = copy.deepcopy(model)
    opt = make_opt(clone.parameters())
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clone(x), y).backward()
        opt.step()
    return [p.detach() for p in clone.parameters()]


@pytest.mark.parametrize(
    "optimizer, make_opt",
    [("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
     ("adam", lambda ps: torch.optim.Adam(ps, lr=0.1, betas=(0.0, 0.999)))],
)
def test_reptile_step_is_outer_lr_times_mean_of_adapted_minus_initial(optimizer, make_opt):
    model = tiny_mlp()
    reptile = Reptile(model, inner_lr=0.1, inner_steps=3, inner_optimizer=optimizer)
    batch = class_batch()
    theta = [p.detach().clone() for p in model.parameters()]
    phis = [adapted_by_hand(model, t.support_x, t.support_y, 3, make_opt) for t in batch]
    eps = 0.25
    outer = torch.optim.SGD(reptile.parameters(), lr=eps)
    outer.zero_grad()
    metrics = reptile.meta_backward(batch)
    outer.step()
    for i, p in enumerate(model.parameters()):
        mean_phi = sum(phi[i] for phi in phis) / len(phis)
        torch.testing.assert_close(p.detach(), theta[i] + eps * (mean_phi - theta[i]), rtol=1e-12, atol=1e-14)
    assert set(metrics) == {"loss", "accuracy"}


def test_meta_backward_writes_and_accumulates_the_reptile_direction():
    model = tiny_mlp(1)
    reptile = Reptile(model, inner_lr=0.1, inner_steps=2, inner_optimizer="sgd")
    batch = class_batch(seed=1)
    reptile.meta_backward(batch)
    first = [p.grad.clone() for p in model.parameters()]
    phis = [adapted_by_hand(model, t.support_x, t.support_y, 2, lambda ps: torch.optim.SGD(ps, lr=0.1)) for t in batch]
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(first[i], p.detach() - sum(phi[i] for phi in phis) / 3, rtol=1e-12, atol=1e-14)
    reptile.meta_backward(batch)  # accumulates like loss.backward()
    for g, p in zip(first, model.parameters()):
        torch.testing.assert_close(p.grad, 2 * g)


def test_support_plus_query_uses_the_query_in_the_inner_loop():
    batch = class_batch(seed=2)
    model = tiny_mlp(2)
    reptile = Reptile(model, inner_lr=0.1, inner_steps=2, inner_optimizer="sgd", inner_data="support+query")
    reptile.meta_backward(batch)
    phis = [adapted_by_hand(model, torch.cat([t.support_x, t.query_x]), torch.cat([t.support_y, t.query_y]), 2,
                            lambda ps: torch.optim.SGD(ps, lr=0.1)) for t in batch]
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.grad, p.detach() - sum(phi[i] for phi in phis) / 3)


def test_meta_loss_explains_why_it_does_not_exist():
    with pytest.raises(NotImplementedError, match="not the gradient of a loss"):
        Reptile(tiny_mlp()).meta_loss(class_batch())


def test_adapt_uses_eval_steps_and_predict_matches():
    model = tiny_mlp(3)
    reptile = Reptile(model, inner_lr=0.05, inner_steps=2, eval_steps=4, inner_optimizer="sgd")
    batch = class_batch(seed=3)
    task = batch.task(0)
    predictor = reptile.adapt(task.support_x, task.support_y)
    assert len(predictor.support_losses) == 4
    phi = adapted_by_hand(model, task.support_x, task.support_y, 4, lambda ps: torch.optim.SGD(ps, lr=0.05))
    expected = F.linear(F.relu(F.linear(task.query_x, phi[0], phi[1])), phi[2], phi[3])
    torch.testing.assert_close(predictor(task.query_x), expected)
    outputs = reptile.predict(batch)
    assert outputs.shape == (3, 6, 3) and not outputs.requires_grad
    torch.testing.assert_close(outputs[0], expected)
    torch.testing.assert_close(reptile.predict(batch, steps=0)[1], model(batch.query_x[1]).detach())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, pattern",
    [(dict(inner_lr=0), "inner_lr"), (dict(inner_steps=0), "inner_steps must be a positive integer, got 0"),
     (dict(inner_optimizer="adagrad"), "inner_optimizer must be one of 'adam', 'adamw', 'sgd', 'rmsprop'; got 'adagrad'"),
     (dict(inner_data="query"), "inner_data"), (dict(adam_beta1=1.0), "adam_beta1"), (dict(loss="l1"), "loss")],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        Reptile(tiny_mlp(), **kwargs)


def test_non_finite_adaptation_raises():
    task = class_batch().task(0)
    x = task.support_x.clone()
    x[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite"):
        Reptile(tiny_mlp(), inner_optimizer="sgd").adapt(x, task.support_y)


def test_inner_batch_steps_on_mini_batches_that_cover_the_set_once_per_epoch():
    """inner_batch=2 on 6 support examples, 3 steps: each step sees the next 2 of a random permutation;
    meta_backward uses inner_batch, adapt uses eval_batch."""
    model = tiny_mlp(4)
    batch = class_batch(B=1, seed=4)
    task = batch.task(0)
    torch.manual_seed(7)
    order = torch.randperm(6)
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), lr=0.1)
    for step in range(3):
        index = order[2 * step: 2 * step + 2]
        opt.zero_grad()
        F.cross_entropy(clone(task.support_x[index]), task.support_y[index]).backward()
        opt.step()
    phi = [p.detach() for p in clone.parameters()]
    reptile = Reptile(model, inner_lr=0.1, inner_steps=3, inner_optimizer="sgd", inner_batch=2)
    torch.manual_seed(7)
    reptile.meta_backward(batch)
    for p, q in zip(model.parameters(), phi):
        torch.testing.assert_close(p.grad, p.detach() - q)
    evaluator = Reptile(model, inner_lr=0.1, inner_steps=3, inner_optimizer="sgd", eval_batch=2)
    torch.manual_seed(7)
    predictor = evaluator.adapt(task.support_x, task.support_y)
    torch.testing.assert_close(predictor(task.query_x), clone(task.query_x).detach())
    full = Reptile(model, inner_lr=0.1, inner_steps=3, inner_optimizer="sgd").adapt(task.support_x, task.support_y)
    assert not torch.allclose(predictor(task.query_x), full(task.query_x))


def test_inner_batch_at_least_the_set_size_is_the_whole_set_and_eval_batch_applies_to_adapt():
    model = tiny_mlp(5)
    batch = class_batch(seed=5)
    whole = Reptile(model, inner_lr=0.1, inner_steps=2, inner_optimizer="sgd")
    big = Reptile(model, inner_lr=0.1, inner_steps=2, inner_optimizer="sgd", inner_batch=6, eval_batch=100)
    task = batch.task(0)
    torch.testing.assert_close(big.adapt(task.support_x, task.support_y)(task.query_x),
                               whole.adapt(task.support_x, task.support_y)(task.query_x))
    whole.meta_backward(batch)
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    big.meta_backward(batch)
    for g, p in zip(expected, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    small_eval = Reptile(model, inner_lr=0.1, inner_steps=2, inner_optimizer="sgd", eval_batch=1)
    assert not torch.allclose(small_eval.adapt(task.support_x, task.support_y)(task.query_x),
                              whole.adapt(task.support_x, task.support_y)(task.query_x))
    with pytest.raises(ValueError, match="inner_batch"):
        Reptile(tiny_mlp(), inner_batch=0)


def test_evaluation_with_eval_mini_batches_is_repeatable_and_leaves_the_global_generator_alone():
    from quickstudy.training.evaluate import evaluate

    batch = class_batch(B=4, K=3, seed=6)
    reptile = Reptile(tiny_mlp(6), inner_lr=0.5, inner_steps=3, inner_optimizer="sgd", eval_batch=2)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    first = evaluate(reptile, [batch], episodes=4, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(2)
    second = evaluate(reptile, [batch], episodes=4, progress=False)
    assert first.per_episode == second.per_episode
