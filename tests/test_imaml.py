"""iMAML's implicit meta-gradient against the exact gradient on a quadratic inner problem (where the implicit
function theorem holds exactly, so they must agree), and its memory flat in the number of inner steps."""

import pytest
import torch
from torch import nn

from quickstudy.algorithms import IMAML, MAML
from quickstudy.algorithms.imaml import conjugate_gradient
from quickstudy.models import Conv4
from quickstudy.tasks.batch import TaskBatch


def regression_batch(B=3, K=6, Q=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(B, d, 1, generator=g, dtype=torch.float64)
    sx = torch.randn(B, K, d, generator=g, dtype=torch.float64) * 0.5
    qx = torch.randn(B, Q, d, generator=g, dtype=torch.float64) * 0.5
    return TaskBatch(sx, sx @ w + 0.3, qx, qx @ w + 0.3)


def exact_meta_gradient(model: nn.Linear, batch: TaskBatch, lam: float) -> list[torch.Tensor]:
    """d/d theta of mean_i L_Q(phi_i*(theta)) with phi* = argmin L_S(phi) + lam/2 ||phi - theta||^2 solved in
    closed form: L_S = 1/K ||A phi - y||^2, A = [x, 1], so (2/K A^T A + lam I) phi* = 2/K A^T y + lam theta."""
    theta = torch.cat([model.weight.flatten(), model.bias]).detach().requires_grad_()
    total = 0
    for task in batch:
        a = torch.cat([task.support_x, torch.ones(len(task.support_x), 1, dtype=torch.float64)], 1)
        k = len(a)
        system = 2 / k * a.T @ a + lam * torch.eye(a.shape[1], dtype=torch.float64)
        phi = torch.linalg.solve(system, 2 / k * a.T @ task.support_y.squeeze(-1) + lam * theta)
        aq = torch.cat([task.query_x, torch.ones(len(task.query_x), 1, dtype=torch.float64)], 1)
        total = total + ((aq @ phi - task.query_y.squeeze(-1)) ** 2).mean()
    (grad,) = torch.autograd.grad(total / batch.batch_size, theta)
    return [grad[:-1].view_as(model.weight), grad[-1:]]


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 1).double()


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_implicit_meta_gradient_equals_the_exact_gradient_on_a_quadratic(strategy):
    batch, lam = regression_batch(), 2.0
    model = linear_model()
    expected = exact_meta_gradient(model, batch, lam)
    # the inner problem converged (400 steps at 1/L) and CG run past the 4 unknowns: both exact
    learner = IMAML(model, lam=lam, inner_lr=0.2, inner_steps=400, cg_steps=8, loss="mse", strategy=strategy)
    learner.meta_backward(batch)
    torch.testing.assert_close(model.weight.grad, expected[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.bias.grad, expected[1], rtol=1e-9, atol=1e-12)


def damped_meta_gradient(model: nn.Linear, batch: TaskBatch, lam: float, shift: float, scale: float):
    """mean_i ((shift I + H_i / scale)^{-1} grad L_Q(phi_i*)) by torch.linalg.solve: H_i = 2/K A^T A, the Hessian of
    the quadratic support loss, and phi_i* the closed-form inner optimum of exact_meta_gradient."""
    theta = torch.cat([model.weight.flatten(), model.bias]).detach()
    total = 0
    for task in batch:
        a = torch.cat([task.support_x, torch.ones(len(task.support_x), 1, dtype=torch.float64)], 1)
        k, n = len(a), a.shape[1]
        hessian = 2 / k * a.T @ a
        phi = torch.linalg.solve(hessian + lam * torch.eye(n, dtype=torch.float64),
                                 2 / k * a.T @ task.support_y.squeeze(-1) + lam * theta)
        aq = torch.cat([task.query_x, torch.ones(len(task.query_x), 1, dtype=torch.float64)], 1)
        query_grad = 2 / len(aq) * aq.T @ (aq @ phi - task.query_y.squeeze(-1))
        total = total + torch.linalg.solve(shift * torch.eye(n, dtype=torch.float64) + hessian / scale, query_grad)
    grad = total / batch.batch_size
    return [grad[:-1].view_as(model.weight), grad[-1:]]


def test_damped_system_of_the_authors_code_by_hand():
    """cg_damping=1, hessian_damping=10 (the authors' released code) solve (2 I + H / (lam + 10)) v = grad L_Q."""
    batch, lam = regression_batch(), 2.0
    model = linear_model()
    expected = damped_meta_gradient(model, batch, lam, shift=2.0, scale=lam + 10.0)
    IMAML(model, lam=lam, inner_lr=0.2, inner_steps=400, cg_steps=8, cg_damping=1.0, hessian_damping=10.0,
          loss="mse").meta_backward(batch)
    torch.testing.assert_close(model.weight.grad, expected[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.bias.grad, expected[1], rtol=1e-9, atol=1e-12)
    # and the undamped helper is the exact gradient (the check is of the damping, not of the helper)
    torch.testing.assert_close(damped_meta_gradient(model, batch, lam, 1.0, lam)[0],
                               exact_meta_gradient(model, batch, lam)[0])


def test_first_order_differs_from_the_exact_gradient_there():
    """The check above discriminates: without the CG solve (v = grad L_Q, first order) the gradient is off."""
    batch, lam = regression_batch(), 2.0
    model = linear_model()
    expected = exact_meta_gradient(model, batch, lam)
    IMAML(model, lam=lam, inner_lr=0.2, inner_steps=400, cg_steps=0, loss="mse").meta_backward(batch)
    assert float((model.weight.grad - expected[0]).abs().max()) > 1e-3


def test_conjugate_gradient_solves_a_small_spd_system():
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x = conjugate_gradient(lambda v: {"x": a @ v["x"]}, {"x": b}, steps=2)["x"]
    torch.testing.assert_close(x, torch.tensor([1 / 11, 7 / 11], dtype=torch.float64))


class LiveSavedBytes:
    """The peak bytes of tensors saved for backward that are alive at once (autograd's saved-tensor hooks)."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, tensor):
        return _Held(tensor, self)

    @staticmethod
    def unpack(held):
        return held.tensor


class _Held:
    def __init__(self, tensor, meter):
        self.tensor, self.meter, self.bytes = tensor, meter, tensor.numel() * tensor.element_size()
        meter.live += self.bytes
        meter.peak = max(meter.peak, meter.live)

    def __del__(self):
        self.meter.live -= self.bytes


def peak_saved_bytes(make, steps):
    torch.manual_seed(0)
    learner = make(Conv4(ways=3, hidden=4, image_size=16).double(), steps)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(2).repeat(2, 1)
    batch = TaskBatch(torch.randn(2, 6, 1, 16, 16, generator=g, dtype=torch.float64), y,
                      torch.randn(2, 6, 1, 16, 16, generator=g, dtype=torch.float64), y, ways=3)
    meter = LiveSavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        learner.meta_backward(batch)
    return meter.peak


def test_memory_is_flat_in_the_number_of_inner_steps():
    imaml = {k: peak_saved_bytes(lambda m, k: IMAML(m, inner_steps=k, cg_steps=3, strategy="loop"), k)
             for k in (1, 4, 16)}
    maml = {k: peak_saved_bytes(lambda m, k: MAML(m, inner_lr=0.1, inner_steps=k, strategy="loop"), k)
            for k in (1, 4)}
    assert imaml[16] == imaml[4] == imaml[1]
    assert maml[4] > 2 * maml[1]  # the measurement sees MAML's graph grow with the steps
