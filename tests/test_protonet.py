"""Prototypical Networks: logits are minus squared distances to the class means of the support embeddings."""

import pytest
import torch
import torch.nn.functional as F

from quickstudy.algorithms import ProtoNet
from quickstudy.models import MLP
from quickstudy.tasks.batch import TaskBatch


def class_batch(B=2, N=3, K=3, Q=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).repeat(B, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(B, 1)
    # shuffle the support order so that "the first K belong to class 0" would be a wrong assumption
    perm = torch.randperm(N * K, generator=g)
    sy = sy[:, perm]
    sx = torch.randn(B, N * K, 2, generator=g, dtype=torch.float64) + sy.unsqueeze(-1)
    qx = torch.randn(B, N * Q, 2, generator=g, dtype=torch.float64) + qy.unsqueeze(-1)
    return TaskBatch(sx, sy, qx, qy, ways=N)


def embedding(seed=0):
    torch.manual_seed(seed)
    return MLP(in_features=2, out_features=None, hidden=[6, 4]).double()


def test_logits_are_minus_squared_distances_to_class_means():
    model = embedding()
    protonet = ProtoNet(model)
    batch = class_batch()
    logits = protonet.predict(batch)
    for b, task in enumerate(batch):
        zs, zq = model(task.support_x), model(task.query_x)
        means = torch.stack([zs[task.support_y == n].mean(0) for n in range(3)])
        expected = -torch.cdist(zq, means) ** 2
        torch.testing.assert_close(logits[b], expected.detach())
        torch.testing.assert_close(protonet.adapt(task.support_x, task.support_y)(task.query_x), expected.detach())


def test_meta_loss_is_cross_entropy_of_those_logits_and_gradients_flow():
    model = embedding(1)
    protonet = ProtoNet(model)
    batch = class_batch(seed=1)
    loss, metrics = protonet.meta_loss(batch)
    expected = sum(F.cross_entropy(protonet.predict(batch)[b], batch.query_y[b]) for b in range(2)) / 2
    assert loss.detach().item() == pytest.approx(expected.item(), rel=1e-12)
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-12) and 0 <= metrics["accuracy"] <= 1
    protonet.meta_backward(batch)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    protonet = ProtoNet(MLP(in_features=2, out_features=None, hidden=[16, 8]))
    batch = class_batch(B=4).inputs_to(torch.float32)
    opt = torch.optim.Adam(protonet.parameters(), lr=1e-2)
    before = protonet.meta_loss(batch)[1]["loss"]
    for _ in range(30):
        opt.zero_grad()
        protonet.meta_backward(batch)
        opt.step()
    assert protonet.meta_loss(batch)[1]["loss"] < 0.7 * before


def test_bad_inputs():
    protonet = ProtoNet(embedding())
    task = class_batch().task(0)
    keep = task.support_y != 1
    with pytest.raises(ValueError, match="missing \\[1\\]"):
        protonet.adapt(task.support_x[keep], task.support_y[keep])
    with pytest.raises(ValueError, match="strategy"):
        ProtoNet(embedding(), strategy="pmap")
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="classification"):
        protonet.meta_loss(TaskBatch(x, x[..., :1], x, x[..., :1]))
