"""Proto-MAML's initial head is the prototypes' linear form (W = 2c, b = -|c|^2), so with no inner step it predicts
as prototypical networks do; the meta-gradient reaches the embedding through the prototypes."""

import torch
from torch import nn

from quickstudy.algorithms import ProtoMAML, ProtoNet
from quickstudy.algorithms.protomaml import prototype_head
from quickstudy.models import MLP

from _toy import class_batch


def test_initial_head_is_twice_the_prototypes_and_minus_their_squared_norms():
    z = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    weight, bias = prototype_head(z, y, 2)
    c = torch.tensor([[2.0, 1.0], [1.0, 1.5]], dtype=torch.float64)  # the class means, by hand
    torch.testing.assert_close(weight, 2 * c)
    torch.testing.assert_close(bias, torch.tensor([-5.0, -3.25], dtype=torch.float64))


def embedding(seed=0):
    torch.manual_seed(seed)
    return MLP(in_features=2, out_features=None, hidden=[5]).double()


def test_zero_steps_predict_as_prototypical_networks():
    """2 c.z - |c|^2 = -|z - c|^2 + |z|^2: the same softmax as ProtoNet's logits, shifted by |z|^2 per query."""
    batch = class_batch()
    model = embedding()
    proto = ProtoMAML(model, inner_steps=0).predict(batch)
    reference = ProtoNet(model).predict(batch)
    with torch.no_grad():
        z = torch.stack([model(x) for x in batch.query_x])
    torch.testing.assert_close(proto, reference + (z * z).sum(-1, keepdim=True))


def test_meta_gradient_flows_through_the_prototypes():
    """First order with no inner step: the only path from the loss to the support embedding is the initial head."""
    batch = class_batch()
    batch.support_x.requires_grad_()
    learner = ProtoMAML(embedding(), inner_steps=0, first_order=True, strategy="loop")
    loss, _ = learner.meta_loss(batch)
    (support_grad,) = torch.autograd.grad(loss, [batch.support_x], allow_unused=True)
    assert support_grad is not None and support_grad.abs().sum() > 0


def test_adapt_takes_any_number_of_ways():
    learner = ProtoMAML(embedding(), inner_lr=0.1, inner_steps=2)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 2, generator=g, dtype=torch.float64), torch.arange(4).repeat(2)
    assert learner.adapt(x, y)(x).shape == (8, 4)
    assert isinstance(learner.model, nn.Module) and ProtoMAML.embedding_model
