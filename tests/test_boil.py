"""BOIL adapts the body and leaves the head as it is: one inner step by hand."""

import torch
import torch.nn.functional as F
from torch.func import functional_call

from quickstudy.algorithms import BOIL
from quickstudy.algorithms.execution import Run

from _toy import class_batch, tiny_mlp


def test_one_inner_step_moves_the_body_only():
    model, task = tiny_mlp(), class_batch().task(0)
    learner = BOIL(model, inner_lr=0.3, inner_steps=1)
    params = dict(model.named_parameters())
    loss = F.cross_entropy(functional_call(model, params, (task.support_x,)), task.support_y)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    meta = learner.meta_parameters()
    fast, _ = learner.inner_adapt(meta, task.support_x, task.support_y, 1, False, Run(learner.learner))
    assert set(fast) == {"features.0.weight", "features.0.bias"}  # the head is not adapted
    for name in fast:
        torch.testing.assert_close(fast[name], params[name] - 0.3 * grads[name])
    expected = functional_call(model, {**{n: params[n] - 0.3 * grads[n] for n in fast}}, (task.query_x,))
    torch.testing.assert_close(learner.forward_adapted(meta, fast, task.query_x, Run(learner.learner)), expected)
