"""MAML / FOMAML: known-answer meta-gradients (finite differences, hand-unrolled autograd), first vs
second order, the interface (adapt, predict, metrics), argument checks, memory and a learning sanity run."""

import copy
import gc
import math
import os

import pytest
import torch
import torch.nn.functional as F

from quickstudy.algorithms import FOMAML, MAML
from quickstudy.models import Conv4, MLP
from quickstudy.tasks.batch import TaskBatch


def class_batch(B=2, N=3, K=2, Q=2, x_shape=(2,), seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(N).repeat_interleave(K).repeat(B, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(B, 1)
    sx = torch.randn(B, N * K, *x_shape, generator=g, dtype=dtype) + sy.view(B, N * K, *[1] * len(x_shape))
    qx = torch.randn(B, N * Q, *x_shape, generator=g, dtype=dtype) + qy.view(B, N * Q, *[1] * len(x_shape))
    return TaskBatch(sx, sy, qx, qy, ways=N, shots=K)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(in_features=2, out_features=3, hidden=[5]).double()


def grads_of(module):
    return {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def meta_grad(learner, batch, use_backward=True):
    learner.zero_grad()
    if use_backward:
        learner.meta_backward(batch)
    else:
        learner.meta_loss(batch)[0].backward()
    return grads_of(learner)


def hand_unrolled(model, batch, lr, steps, first_order):
    """MAML written out with plain autograd on the MLP's four tensors (no library code)."""
    theta = [model.features[0].weight, model.features[0].bias, model.head.weight, model.head.bias]

    def f(w, x):
        return F.relu(x @ w[0].T + w[1]) @ w[2].T + w[3]

    total = 0.0
    for task in batch:
        phi = theta
        for _ in range(steps):
            g = torch.autograd.grad(F.cross_entropy(f(phi, task.support_x), task.support_y), phi, create_graph=True)
            if first_order:
                g = [gi.detach() for gi in g]
            phi = [p - lr * gi for p, gi in zip(phi, g)]
        total = total + F.cross_entropy(f(phi, task.query_x), task.query_y)
    total = total / len(batch)
    names = ["features.0.weight", "features.0.bias", "head.weight", "head.bias"]
    return dict(zip(names, torch.autograd.grad(total, theta))), total.item()


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_equals_finite_differences(steps):
    model = tiny_mlp()
    maml = MAML(model, inner_lr=0.5, inner_steps=steps, strategy="loop")
    batch = class_batch()
    grads = meta_grad(maml, batch)
    eps = 1e-6
    for name, p in model.named_parameters():
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = float(maml.meta_loss(batch)[0])
                p.view(-1)[i] -= 2 * eps
                down = float(maml.meta_loss(batch)[0])
                p.view(-1)[i] += eps
            fd.view(-1)[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(grads["model." + name], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("use_backward", [False, True])
def test_meta_gradient_equals_hand_unrolled_autograd(first_order, use_backward):
    model = tiny_mlp(1)
    maml = MAML(model, inner_lr=0.3, inner_steps=2, first_order=first_order, strategy="loop")
    batch = class_batch(B=3, seed=1)
    grads = meta_grad(maml, batch, use_backward=use_backward)
    expected, expected_loss = hand_unrolled(model, batch, 0.3, 2, first_order)
    for name, g in expected.items():
        torch.testing.assert_close(grads["model." + name], g, rtol=1e-10, atol=1e-12)
    assert maml.meta_loss(batch)[1]["loss"] == pytest.approx(expected_loss, rel=1e-12)


def test_first_order_differs_from_second_order_and_fomaml_is_first_order():
    batch = class_batch(seed=2)
    second = meta_grad(MAML(tiny_mlp(2), inner_lr=0.5, inner_steps=2), batch)
    first = meta_grad(MAML(tiny_mlp(2), inner_lr=0.5, inner_steps=2, first_order=True), batch)
    fomaml = meta_grad(FOMAML(tiny_mlp(2), inner_lr=0.5, inner_steps=2), batch)
    for name in first:
        torch.testing.assert_close(first[name], fomaml[name], rtol=0, atol=0)
    assert not torch.allclose(first["model.features.0.weight"], second["model.features.0.weight"], rtol=1e-3)


def test_zero_inner_steps_is_plain_supervised_gradient_on_the_query_set():
    model = tiny_mlp(3)
    batch = class_batch(seed=3)
    grads = meta_grad(MAML(model, inner_steps=0), batch)
    loss = sum(F.cross_entropy(model(t.query_x), t.query_y) for t in batch) / len(batch)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), g in zip(model.named_parameters(), expected):
        torch.testing.assert_close(grads["model." + name], g)


def test_adapt_and_predict_agree_and_carry_no_graph():
    model = tiny_mlp(4)
    maml = MAML(model, inner_lr=0.4, inner_steps=1, eval_steps=3)
    batch = class_batch(B=2, seed=4)
    outputs = maml.predict(batch)
    assert outputs.shape == (2, 6, 3) and not outputs.requires_grad
    for i, task in enumerate(batch):
        predictor = maml.adapt(task.support_x, task.support_y)  # eval_steps = 3
        out = predictor(task.query_x)
        assert not out.requires_grad
        torch.testing.assert_close(out, outputs[i])
        assert len(predictor.support_losses) == 3
        assert predictor.support_losses[-1] < predictor.support_losses[0]
    # steps=0: the unadapted model
    torch.testing.assert_close(maml.predict(batch, steps=0), torch.stack([model(t.query_x) for t in batch]).detach())
    with torch.no_grad():  # the trainer may predict under no_grad: the inner loop still differentiates
        torch.testing.assert_close(maml.predict(batch), outputs)
    assert all(p.grad is None for p in maml.parameters())


def test_metrics_are_python_floats_and_honest_about_nan():
    maml = MAML(tiny_mlp(), inner_lr=0.4)
    batch = class_batch()
    loss, metrics = maml.meta_loss(batch)
    assert set(metrics) == {"loss", "accuracy"} and all(type(v) is float for v in metrics.values())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] == pytest.approx(float(loss.detach()))
    bad = TaskBatch(batch.support_x.clone(), batch.support_y, batch.query_x, batch.query_y, ways=3)
    bad.support_x[0, 0, 0] = float("nan")
    assert math.isnan(maml.meta_backward(bad)["loss"])
    with pytest.raises(FloatingPointError, match="non-finite"):
        maml.adapt(bad.support_x[0], bad.support_y[0])


def test_regression_with_mse_and_task_type_checks():
    torch.manual_seed(0)
    model = MLP().double()
    maml = MAML(model, inner_lr=0.01, inner_steps=2, loss="mse")
    assert maml.task_type == "regression"
    x = torch.rand(3, 10, 1, dtype=torch.float64) * 10 - 5
    batch = TaskBatch(x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]))
    metrics = maml.meta_backward(batch)
    assert set(metrics) == {"loss"} and metrics["loss"] > 0
    assert maml.predict(batch).shape == (3, 5, 1)
    with pytest.raises(ValueError, match="regression"):
        maml.meta_loss(class_batch())
    with pytest.raises(ValueError, match="must match"):  # [n] targets against [n, 1] outputs
        MAML(MLP().double(), loss="mse").adapt(x[0], x[0, :, 0])
    with pytest.raises(ValueError, match="classification"):
        MAML(tiny_mlp()).meta_loss(batch)


def test_custom_loss_callable():
    calls = []

    def loss(out, y):
        calls.append(1)
        return F.cross_entropy(out, y, label_smoothing=0.1)

    maml = MAML(tiny_mlp(), loss=loss, inner_steps=1, strategy="loop")
    maml.meta_backward(class_batch())
    assert maml.task_type == "classification" and len(calls) == 4  # 2 tasks x (inner + outer)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(inner_lr=0), "inner_lr must be a finite number > 0, got 0"),
        (dict(inner_lr=-0.1), "inner_lr"),
        (dict(inner_lr=float("nan")), "inner_lr"),
        (dict(inner_steps=-1), "inner_steps must be an integer >= 0, got -1"),
        (dict(inner_steps=1.5), "inner_steps"),
        (dict(inner_steps=True), "inner_steps"),
        (dict(first_order="yes"), "first_order"),
        (dict(loss="hinge"), "loss must be one of 'cross_entropy', 'mse'"),
        (dict(strategy="parallel"), "strategy must be one of 'auto', 'loop', 'vmap', 'threads'; got 'parallel'"),
        (dict(eval_steps=-2), "eval_steps"),
        (dict(task_type="ranking"), "task_type"),
    ],
)
def test_bad_arguments_fail_naming_argument_and_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        MAML(tiny_mlp(), **kwargs)


def test_bad_ways_and_bad_steps_fail_clearly():
    maml = MAML(tiny_mlp())  # a 3-way head
    with pytest.raises(ValueError, match="3 outputs but the batch is 4-way"):
        maml.meta_loss(class_batch(N=4))
    with pytest.raises(ValueError, match="steps"):
        maml.predict(class_batch(), steps=-1)
    with pytest.raises(ValueError, match="one task"):
        maml.adapt(class_batch().support_x, class_batch().support_y[0])


def test_running_batch_norm_statistics_update_in_the_loop():
    torch.manual_seed(0)
    model = Conv4(ways=3, hidden=4, image_size=16, batch_norm="running").double()
    maml = MAML(model, inner_lr=0.1, inner_steps=1)
    before = model.features[1].running_mean.clone()
    maml.meta_backward(class_batch(x_shape=(1, 16, 16)))
    assert not torch.equal(before, model.features[1].running_mean)
    model.eval()
    assert maml.predict(class_batch(x_shape=(1, 16, 16))).shape == (2, 6, 3)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm (Linux)")
def test_no_memory_growth_over_200_meta_steps():
    torch.manual_seed(0)
    maml = MAML(MLP(in_features=2, out_features=3, hidden=[16, 16]), inner_lr=0.1, inner_steps=2)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    batch = class_batch(B=4, N=3, K=5, Q=5, dtype=torch.float32)
    rss = {}
    for step in range(1, 201):
        opt.zero_grad()
        metrics = maml.meta_backward(batch)
        opt.step()
        if step in (20, 200):
            gc.collect()
            rss[step] = _rss_bytes()
    assert math.isfinite(metrics["loss"])
    assert rss[200] - rss[20] < 5 * 2**20, f"resident memory grew by {(rss[200] - rss[20]) / 2**20:.1f} MiB"


def test_a_few_meta_steps_reduce_the_adapted_query_loss():
    """Tasks: 2-way, class means at +-m_t along a task-specific direction. An initialisation that adapts
    quickly is learnable; 40 meta-steps must cut the post-adaptation query loss on held-out tasks."""
    torch.manual_seed(0)

    def tasks(B, seed):
        g = torch.Generator().manual_seed(seed)
        direction = F.normalize(torch.randn(B, 1, 2, generator=g), dim=-1)
        sign = torch.randint(0, 2, (B, 1, 1), generator=g) * 2 - 1  # the label assignment flips per task
        sy, qy = torch.tensor([0, 1] * 5).repeat(B, 1), torch.tensor([0, 1] * 10).repeat(B, 1)
        def points(y):
            return (y.unsqueeze(-1) * 2 - 1) * sign * direction * 2 + 0.5 * torch.randn(*y.shape, 2, generator=g)
        return TaskBatch(points(sy), sy, points(qy), qy, ways=2)

    maml = MAML(MLP(in_features=2, out_features=2, hidden=[32]), inner_lr=0.5, inner_steps=1)
    held_out = tasks(16, seed=123)
    before = maml.meta_loss(held_out)[1]["loss"]
    opt = torch.optim.Adam(maml.parameters(), lr=3e-3)
    for step in range(40):
        opt.zero_grad()
        maml.meta_backward(tasks(8, seed=step))
        opt.step()
    after = maml.meta_loss(held_out)[1]["loss"]
    assert after < 0.8 * before, (before, after)


def test_state_dict_round_trip_and_device_dtype_follow_the_module():
    maml = MAML(tiny_mlp())
    clone = MAML(copy.deepcopy(tiny_mlp(9)))
    clone.load_state_dict(maml.state_dict())
    batch = class_batch()
    torch.testing.assert_close(clone.predict(batch), maml.predict(batch))
    assert all(k.startswith("model.") for k in maml.state_dict())
