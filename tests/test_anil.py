"""ANIL: only the head adapts; the body is meta-learned through the outer loss."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quickstudy.algorithms import ANIL, MetaSGD
from quickstudy.algorithms.execution import Run
from _toy import class_batch
from _toy import tiny_mlp as _tiny_mlp


def tiny_mlp(seed=0):
    return _tiny_mlp(seed, hidden=(5, 4))


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_equals_meta_sgd_with_zero_body_rates(first_order):
    """Adapting only the head == Meta-SGD whose step sizes are 0 on the body: same meta-gradient."""
    batch = class_batch()
    anil = ANIL(tiny_mlp(), inner_lr=0.4, inner_steps=2, first_order=first_order)
    assert anil.head == "head"
    ref = MetaSGD(tiny_mlp(), inner_lr=0.4, inner_steps=2, first_order=first_order)
    with torch.no_grad():
        for name, rate in ref.lrs.items():
            if not name.startswith("head"):
                rate.zero_()
    ref.lrs.requires_grad_(False)
    assert anil.meta_backward(batch)["loss"] == pytest.approx(ref.meta_backward(batch)["loss"], rel=1e-12)
    for (n, p), (_, q) in zip(anil.model.named_parameters(), ref.model.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, n  # the body learns (outer loss)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(anil.predict(batch), ref.predict(batch))


def test_inner_loop_changes_only_the_head_and_reuses_body_features():
    model = tiny_mlp(1)
    anil = ANIL(model, inner_lr=0.4, inner_steps=3)
    task = class_batch(seed=1).task(0)
    calls = []
    handle = model.features.register_forward_hook(lambda *a: calls.append(1))
    meta = anil.meta_parameters()
    fast, losses = anil.inner_adapt(meta, task.support_x, task.support_y, 3, True, Run(anil.learner))
    handle.remove()
    assert set(fast) == {"head.weight", "head.bias"} and len(losses) == 3
    assert len(calls) == 1  # body run once for 3 inner steps
    assert not torch.equal(fast["head.weight"], model.head.weight)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    predictor = anil.adapt(task.support_x, task.support_y)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])  # adapt never writes the meta-parameters
    z = model.features(task.query_x)
    torch.testing.assert_close(predictor(task.query_x), F.linear(z, fast["head.weight"], fast["head.bias"]).detach())


def test_head_option_and_errors():
    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    assert ANIL(copy.deepcopy(model)).head == "4"
    anil = ANIL(model, head="2")  # a hidden layer is not the model's output
    with pytest.raises(ValueError, match="must produce the model's output"):
        anil.meta_loss(class_batch())
    with pytest.raises(ValueError, match="head must name a submodule"):
        ANIL(model, head="classifier")
    with pytest.raises(ValueError, match="no nn.Linear"):
        ANIL(nn.Sequential(nn.Conv2d(1, 2, 3)))
    assert not any(k.startswith("_head") for k in ANIL(copy.deepcopy(model)).state_dict())
