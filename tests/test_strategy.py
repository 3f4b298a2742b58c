"""Execution strategies: vmap over tasks equals the per-task loop (float64, second order, batch norm),
and the choice of strategy refuses the combinations that would give wrong answers."""

import copy

import pytest
import torch


from torch import nn

from quickstudy.algorithms import ANIL, MAML, MetaSGD, ProtoNet
from quickstudy.algorithms.execution import Execution
from quickstudy.models import MLP, Conv4
from quickstudy.tasks.batch import TaskBatch


def resolve_strategy(owner, strategy, model, threads_ok=False):
    return Execution(owner, model).resolve(strategy, threads_ok)


def image_batch(B=3, N=3, K=2, Q=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).repeat(B, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(B, 1)
    sx = torch.randn(B, N * K, 1, size, size, generator=g, dtype=torch.float64)
    qx = torch.randn(B, N * Q, 1, size, size, generator=g, dtype=torch.float64)
    return TaskBatch(sx + sy.view(B, -1, 1, 1, 1) * 0.3, sy, qx + qy.view(B, -1, 1, 1, 1) * 0.3, qy, ways=N)


def conv4(ways=3, **kwargs):
    torch.manual_seed(0)
    return Conv4(ways=ways, hidden=4, image_size=16, **kwargs).double()


LEARNERS = {
    "maml": lambda s: MAML(conv4(), inner_lr=0.3, inner_steps=2, strategy=s),
    "maml-stride": lambda s: MAML(conv4(stride_variant=True), inner_lr=0.3, inner_steps=2, strategy=s),
    "fomaml": lambda s: MAML(conv4(), inner_lr=0.3, inner_steps=2, first_order=True, strategy=s),
    "metasgd": lambda s: MetaSGD(conv4(), inner_lr=0.3, inner_steps=2, strategy=s),
    "anil": lambda s: ANIL(conv4(), inner_lr=0.3, inner_steps=2, strategy=s),
    "protonet": lambda s: ProtoNet(conv4(ways=None), strategy=s),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_vmap_equals_loop_in_float64_with_batch_norm(name):
    batch = image_batch()
    results = {}
    for strategy in ("loop", "vmap"):
        learner = LEARNERS[name](strategy)
        learner.zero_grad()
        metrics = learner.meta_backward(batch)
        results[strategy] = (metrics, {n: p.grad.clone() for n, p in learner.named_parameters()},
                             learner.predict(batch))
    (m_loop, g_loop, p_loop), (m_vmap, g_vmap, p_vmap) = results["loop"], results["vmap"]
    assert m_loop["loss"] == pytest.approx(m_vmap["loss"], rel=1e-12)
    for n in g_loop:
        torch.testing.assert_close(g_vmap[n], g_loop[n], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p_vmap, p_loop, rtol=1e-9, atol=1e-12)


def test_meta_loss_backward_equals_meta_backward_for_both_strategies():
    batch = image_batch(seed=1)
    grads = []
    for strategy in ("loop", "vmap"):
        for use_backward in (True, False):
            maml = LEARNERS["maml"](strategy)
            maml.zero_grad()
            if use_backward:
                maml.meta_backward(batch)
            else:
                maml.meta_loss(batch)[0].backward()
            grads.append([p.grad.clone() for p in maml.parameters()])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_auto_on_cpu_is_loop_for_convnets_and_vmap_for_mlps():
    assert resolve_strategy("MAML", "auto", conv4()) == "loop"
    assert resolve_strategy("MAML", "vmap", conv4()) == "vmap"
    assert resolve_strategy("MAML", "auto", MLP(1, 1, [40, 40])) == "vmap"


def test_vmap_refuses_native_batch_norm_in_training_mode():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(ValueError, match="BatchNorm2d.*silently wrong"):
        resolve_strategy("MAML", "vmap", model)
    model.eval()  # running statistics, no batch statistics: fine
    assert resolve_strategy("MAML", "vmap", model) == "vmap"


def test_running_batch_norm_forces_the_loop_while_training():
    model = conv4(batch_norm="running")
    with pytest.raises(ValueError, match="running"):
        MAML(model, strategy="vmap").meta_loss(image_batch())
    assert resolve_strategy("MAML", "auto", model) == "loop"
    model.eval()
    assert resolve_strategy("MAML", "vmap", model) == "vmap"
    loop = MAML(copy.deepcopy(model), strategy="loop").predict(image_batch())
    vmap = MAML(copy.deepcopy(model), strategy="vmap").predict(image_batch())
    torch.testing.assert_close(vmap, loop)


@pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="documents a torch 2.13 behaviour")
def test_native_batch_norm_under_vmap_is_wrong_at_second_order_which_is_why_vmap_refuses_it(monkeypatch):
    """The torch 2.13 pitfall (pytorch/functorch#534), reproduced: swap the primitive batch norm for nn.BatchNorm2d, bypass the
    refusal, and vmap's second-order meta-gradient no longer matches the loop (first order still does).
    If this starts failing, torch fixed it and ``execution.vmap_obstacle`` may stop refusing native BN."""
    import quickstudy.algorithms.execution as execution

    model = conv4()
    for i, module in enumerate(model.features):
        if type(module).__name__ == "TaskBatchNorm2d":
            model.features[i] = nn.BatchNorm2d(4, track_running_stats=False).double()
    monkeypatch.setattr(execution, "vmap_obstacle", lambda module: None)
    batch = image_batch()
    errors = {}
    for first_order in (False, True):
        grads = []
        for s in ("loop", "vmap"):
            maml = MAML(copy.deepcopy(model), inner_lr=0.3, inner_steps=2, first_order=first_order, strategy=s)
            maml.meta_backward(batch)
            grads.append(torch.cat([p.grad.flatten() for p in maml.parameters()]))
        errors[first_order] = float((grads[0] - grads[1]).norm() / grads[0].norm())
    assert errors[True] < 1e-12
    assert errors[False] > 1e-4, f"native BN under vmap now agrees with the loop ({errors[False]:.2e})"


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "maml-stride", "protonet"])
def test_threads_equal_loop_in_float64_and_are_deterministic(name):
    """strategy='threads' (tasks split over 2 worker threads, each on its own module structure) gives the
    loop's meta-gradient up to summation order, and the same bits run to run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for strategy in ("loop", "threads", "threads"):
            learner = LEARNERS[name](strategy)
            metrics = learner.meta_backward(image_batch(B=5))
            grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
            results.append((metrics, grads))
        assert torch.get_num_threads() == 2  # restored after the workers ran with one thread each
    finally:
        torch.set_num_threads(previous)
    (loop_metrics, loop_grads), (a_metrics, a_grads), (b_metrics, b_grads) = results
    assert loop_grads.keys() == a_grads.keys() == b_grads.keys()
    scale = max(g.abs().max().item() for g in loop_grads.values())
    for n in loop_grads:
        torch.testing.assert_close(a_grads[n], loop_grads[n], rtol=1e-10, atol=1e-12 * scale)
        assert torch.equal(a_grads[n], b_grads[n]), n
    assert a_metrics == pytest.approx(loop_metrics, rel=1e-12)
    assert a_metrics == b_metrics


def test_threads_accumulate_into_existing_grads_like_the_loop():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for strategy in ("loop", "threads"):
            learner = LEARNERS["maml"](strategy)
            learner.meta_backward(image_batch(B=4, seed=1))
            learner.meta_backward(image_batch(B=4, seed=2))
            grads.append({n: p.grad.clone() for n, p in learner.named_parameters()})
    finally:
        torch.set_num_threads(previous)
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-10, atol=1e-14)


def test_auto_chooses_threads_on_cpu_for_convolutional_models_with_two_threads():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        expected = "threads" if (__import__("os").cpu_count() or 1) >= 2 else "loop"
        assert resolve_strategy("MAML", "auto", conv4(), threads_ok=True) == expected
        assert resolve_strategy("MAML", "auto", conv4()) == "loop"  # callers without per-thread task functions
        assert resolve_strategy("MAML", "auto", MLP(1, 1, [40, 40]), threads_ok=True) == "vmap"
        torch.set_num_threads(1)
        assert resolve_strategy("MAML", "auto", conv4(), threads_ok=True) == "loop"
    finally:
        torch.set_num_threads(previous)


def test_threads_refuse_shared_running_statistics():
    model = conv4(batch_norm="running")
    with pytest.raises(ValueError, match="running"):
        MAML(model, strategy="threads").meta_backward(image_batch())
    assert resolve_strategy("MAML", "auto", model, threads_ok=True) == "loop"
    with pytest.raises(ValueError, match="running"):
        ProtoNet(conv4(ways=None, batch_norm="running"), strategy="threads").meta_backward(image_batch())


def test_threads_learners_run_meta_loss_and_predict_as_the_loop():
    """Only meta_backward is threaded; meta_loss and predict of a 'threads' learner run as the loop."""
    batch = image_batch(B=3)
    for name in ("maml", "protonet"):
        threaded, looped = LEARNERS[name]("threads"), LEARNERS[name]("loop")
        loss_t, metrics_t = threaded.meta_loss(batch)
        loss_l, metrics_l = looped.meta_loss(batch)
        assert torch.equal(loss_t, loss_l) and metrics_t == metrics_l
        assert torch.equal(threaded.predict(batch), looped.predict(batch))


def test_protonet_auto_runs_meta_backward_on_worker_threads(monkeypatch):
    """strategy='auto' on a multi-core CPU splits ProtoNet's tasks over worker threads, as it does MAML's."""
    import quickstudy.algorithms.execution as execution

    if (__import__("os").cpu_count() or 1) < 2:
        pytest.skip("one core: 'auto' runs the loop")
    calls = []
    real = execution.Execution._threaded
    monkeypatch.setattr(execution.Execution, "_threaded", lambda *a, **k: calls.append(1) or real(*a, **k))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        LEARNERS["protonet"]("auto").meta_backward(image_batch(B=4))
    finally:
        torch.set_num_threads(previous)
    assert calls == [1]
