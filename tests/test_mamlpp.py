"""MAML++: the multi-step loss with learned per-layer per-step rates against a hand-unrolled version, the
annealed loss weights by hand, per-step batch-norm parameters and statistics, derivative-order annealing."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from quickstudy.algorithms import MAMLPlusPlus
from quickstudy.algorithms.mamlpp import msl_weights
from quickstudy.models import Conv4

from _toy import class_batch, tiny_mlp


def test_msl_weights_by_hand():
    assert msl_weights(3, 0, 10) == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    assert msl_weights(3, 5, 10) == pytest.approx([1 / 6, 1 / 6, 2 / 3])      # 1/3 - 0.5/3; 1/3 + 0.5 * 2/3
    assert msl_weights(3, 97, 100) == pytest.approx([0.01, 0.01, 0.98])       # the floors 0.03/3 and 1 - 2 * 0.01
    assert msl_weights(3, 10, 10) == [0.0, 0.0, 1.0]                          # after the annealing: last step only
    assert msl_weights(1, 0, 10) == [1.0]


def hand_unrolled(model, rates, batch, weights):
    """sum_j v_j CE(f(Q.x; phi^j), Q.y), phi^{j+1} = phi^j - alpha_{l,j} grad L_S(phi^j), mean over tasks."""
    theta = dict(model.named_parameters())
    total = 0
    for task in batch:
        phi = dict(theta)
        for j, v in enumerate(weights):
            support_loss = F.cross_entropy(functional_call(model, phi, (task.support_x,)), task.support_y)
            grads = torch.autograd.grad(support_loss, list(phi.values()), create_graph=True)
            phi = {n: phi[n] - rates[n][j] * g for n, g in zip(phi, grads)}
            total = total + v * F.cross_entropy(functional_call(model, phi, (task.query_x,)), task.query_y)
    return total / batch.batch_size


def test_multi_step_loss_equals_the_hand_unrolled_loss_and_gradients():
    model, batch = tiny_mlp(), class_batch()
    learner = MAMLPlusPlus(model, inner_lr=0.1, inner_steps=3, msl_iterations=10, strategy="loop").double()
    with torch.no_grad():  # distinct rates per layer and per step, so an index mix-up shows
        for i, rate in enumerate(learner.lrs.values()):
            rate.copy_(torch.tensor([0.1, 0.25, 0.4], dtype=torch.float64) * (i + 1))
    learner.iteration.fill_(5)
    reference_model = copy.deepcopy(model)
    rates = {n: learner.lrs[n.replace(".", "__")].detach().clone().requires_grad_()
             for n, _ in model.named_parameters()}
    expected = hand_unrolled(reference_model, rates, batch, [1 / 6, 1 / 6, 2 / 3])
    loss, _ = learner.meta_loss(batch)
    assert int(learner.iteration) == 6  # meta_loss in training mode advanced the schedule
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-14)
    expected.backward()
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, dict(reference_model.named_parameters())[name].grad)
        torch.testing.assert_close(learner.lrs[name.replace(".", "__")].grad, rates[name].grad)


def running_bn_learner(**kwargs):
    torch.manual_seed(0)
    model = Conv4(ways=3, hidden=4, image_size=16, batch_norm="running").double()
    return model, MAMLPlusPlus(model, inner_lr=0.1, inner_steps=2, msl_iterations=0, strategy="loop", **kwargs).double()


def image_batch(seed=0):
    from test_methods_strategies import image_batch as make
    return make(B=2, seed=seed)


def test_per_step_batch_norm_parameters_and_statistics():
    model, learner = running_bn_learner()
    before = {n: b.clone() for n, b in model.named_buffers()}
    learner.meta_backward(image_batch())
    # the model's own statistics are untouched; each step's copy moved, and differently
    for n, b in model.named_buffers():
        torch.testing.assert_close(b, before[n])
    mean0, mean1 = learner.get_buffer("stats__0__features__1__running_mean"), learner.get_buffer(
        "stats__1__features__1__running_mean")
    assert not torch.equal(mean0, before["features.1.running_mean"]) and not torch.equal(mean0, mean1)
    # per-step gamma and beta are learned, one set per step, and the inner loop leaves them alone
    bn = learner.meta_parameters()["bn"]
    assert len(bn) == 2 and bn[0]["features.1.weight"] is not bn[1]["features.1.weight"]
    assert bn[0]["features.1.weight"].grad is not None and bn[1]["features.1.weight"].grad is not None
    assert "features.1.weight" not in learner.meta_parameters()["params"]
    # at evaluation step j normalises with step j's statistics, not the model's
    learner.eval()
    batch = image_batch(seed=1)
    reference = learner.predict(batch, steps=2)
    with torch.no_grad():
        model.get_buffer("features.1.running_mean").add_(1.0)
    torch.testing.assert_close(learner.predict(batch, steps=2), reference)
    with torch.no_grad():
        learner.get_buffer("stats__1__features__1__running_mean").add_(1.0)
    assert not torch.allclose(learner.predict(batch, steps=2), reference)


def test_derivative_order_annealing_runs_first_order_first():
    batch = class_batch()
    grads = {}
    for name, kwargs in {"annealed": {"first_order_iterations": 1}, "first": {"first_order": True},
                         "second": {}}.items():
        learner = MAMLPlusPlus(tiny_mlp(), inner_steps=2, msl_iterations=0, strategy="loop", **kwargs).double()
        learner.meta_backward(batch)
        grads[name] = torch.cat([p.grad.flatten() for p in learner.model.parameters()])
    torch.testing.assert_close(grads["annealed"], grads["first"])
    assert not torch.allclose(grads["first"], grads["second"])
