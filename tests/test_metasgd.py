"""Meta-SGD: learned per-parameter step sizes (known answers against MAML and the chain rule)."""

import pytest
import torch
import torch.nn.functional as F

from quickstudy.algorithms import MAML, MetaSGD
from _toy import class_batch, tiny_mlp


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_equal_fixed_rates_give_maml(first_order, strategy):
    batch = class_batch()
    maml = MAML(tiny_mlp(), inner_lr=0.3, inner_steps=2, first_order=first_order, strategy=strategy)
    msgd = MetaSGD(tiny_mlp(), inner_lr=0.3, inner_steps=2, first_order=first_order, strategy=strategy)
    msgd.lrs.requires_grad_(False)  # fixed, not learned
    m1, m2 = maml.meta_backward(batch), msgd.meta_backward(batch)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-12)
    for (n1, p1), (n2, p2) in zip(maml.model.named_parameters(), msgd.model.named_parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(msgd.predict(batch), maml.predict(batch))


def test_rate_gradient_is_minus_support_gradient_times_query_gradient():
    """One inner step phi = theta - alpha * g_S(theta): dL_Q/dalpha = -g_S * dL_Q/dphi, element-wise."""
    model = tiny_mlp(1)
    msgd = MetaSGD(model, inner_lr=0.2, inner_steps=1)
    with torch.no_grad():  # unequal rates, so a mix-up between tensors would show
        for i, p in enumerate(msgd.lrs.values()):
            p.mul_(1 + 0.1 * i)
    batch = class_batch(B=1, seed=1)
    msgd.meta_backward(batch)
    task = batch.task(0)
    names = [n for n, _ in model.named_parameters()]
    theta = list(model.parameters())
    alphas = [msgd.lrs[n.replace(".", "__")].detach() for n in names]
    g_s = torch.autograd.grad(F.cross_entropy(model(task.support_x), task.support_y), theta)
    phi = {n: (t - a * g).detach().requires_grad_() for n, t, a, g in zip(names, theta, alphas, g_s)}
    out = torch.func.functional_call(model, phi, (task.query_x,))
    g_q = torch.autograd.grad(F.cross_entropy(out, task.query_y), list(phi.values()))
    for n, gs, gq in zip(names, g_s, g_q):
        torch.testing.assert_close(msgd.lrs[n.replace(".", "__")].grad, -gs * gq, rtol=1e-10, atol=1e-12)


def test_rates_are_meta_parameters_with_the_shapes_of_the_weights():
    msgd = MetaSGD(tiny_mlp(), inner_lr=0.05)
    names = {n for n, _ in msgd.named_parameters()}
    assert "lrs.features__0__weight" in names and "model.features.0.weight" in names
    for n, p in msgd.model.named_parameters():
        rate = msgd.lrs[n.replace(".", "__")]
        assert rate.shape == p.shape and torch.all(rate == 0.05)
    with pytest.raises(ValueError, match="inner_lr"):
        MetaSGD(tiny_mlp(), inner_lr=-1)
