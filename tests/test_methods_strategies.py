"""The methods of issue 25 on every execution strategy: vmap and worker threads give the per-task loop's
meta-gradients and predictions (float64, batch norm in the model), and meta_loss's backward equals meta_backward."""

import pytest
import torch

from quickstudy.algorithms import (BOIL, IMAML, MAMLPlusPlus, MatchingNet, MetaOptNet, ProtoMAML, RelationNet)
from quickstudy.models import Conv4
from quickstudy.tasks.batch import TaskBatch


def image_batch(B=3, N=3, K=2, Q=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).repeat(B, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(B, 1)
    sx = torch.randn(B, N * K, 1, size, size, generator=g, dtype=torch.float64)
    qx = torch.randn(B, N * Q, 1, size, size, generator=g, dtype=torch.float64)
    return TaskBatch(sx + sy.view(B, -1, 1, 1, 1) * 0.3, sy, qx + qy.view(B, -1, 1, 1, 1) * 0.3, qy, ways=N)


def conv4(ways=3, **kwargs):
    torch.manual_seed(0)
    return Conv4(ways=ways, hidden=4, image_size=16, **kwargs)


def seeded(make):
    def build(strategy):
        torch.manual_seed(1)
        return make(strategy).double()
    return build


LEARNERS = {
    "matchingnet": seeded(lambda s: MatchingNet(conv4(None), strategy=s)),
    "matchingnet-fce": seeded(lambda s: MatchingNet(conv4(None), fce=True, strategy=s)),
    "relationnet-maps": seeded(lambda s: RelationNet(conv4(None, pooled_blocks=2), strategy=s)),
    "relationnet-vectors": seeded(lambda s: RelationNet(conv4(None), strategy=s)),
    "metaoptnet-svm": seeded(lambda s: MetaOptNet(conv4(None), head="svm", svm_iterations=15, strategy=s)),
    "metaoptnet-ridge": seeded(lambda s: MetaOptNet(conv4(None), head="ridge", strategy=s)),
    "imaml": seeded(lambda s: IMAML(conv4(), lam=2.0, inner_lr=0.1, inner_steps=2, cg_steps=3, strategy=s)),
    "mamlpp": seeded(lambda s: MAMLPlusPlus(conv4(), inner_lr=0.1, inner_steps=2, msl_iterations=10, strategy=s)),
    "boil": seeded(lambda s: BOIL(conv4(), inner_lr=0.3, inner_steps=2, strategy=s)),
    "protomaml": seeded(lambda s: ProtoMAML(conv4(None), inner_lr=0.1, inner_steps=2, strategy=s)),
}


def run(name, strategy, batch):
    learner = LEARNERS[name](strategy)
    metrics = learner.meta_backward(batch)
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    return metrics, grads, learner.predict(batch)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_vmap_equals_loop_in_float64(name):
    batch = image_batch()
    (m_loop, g_loop, p_loop), (m_vmap, g_vmap, p_vmap) = run(name, "loop", batch), run(name, "vmap", batch)
    assert m_loop["loss"] == pytest.approx(m_vmap["loss"], rel=1e-10)
    assert g_loop and g_loop.keys() == g_vmap.keys()
    for n in g_loop:
        torch.testing.assert_close(g_vmap[n], g_loop[n], rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(p_vmap, p_loop, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("name", list(LEARNERS))
def test_threads_equal_loop_in_float64(name):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        (_, g_loop, _), (_, g_threads, _) = run(name, "loop", image_batch(B=4)), run(name, "threads", image_batch(B=4))
    finally:
        torch.set_num_threads(previous)
    assert g_loop.keys() == g_threads.keys()
    for n in g_loop:
        torch.testing.assert_close(g_threads[n], g_loop[n], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["matchingnet", "metaoptnet-svm", "imaml", "mamlpp", "protomaml"])
def test_meta_loss_backward_equals_meta_backward(name):
    batch = image_batch(seed=2)
    learner = LEARNERS[name]("loop")
    loss, _ = learner.meta_loss(batch)
    loss.backward()
    from_loss = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    learner = LEARNERS[name]("loop")
    learner.meta_backward(batch)
    for n, p in learner.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, from_loss[n], rtol=1e-9, atol=1e-12)
