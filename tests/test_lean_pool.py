"""The lean max-pool and batch norm -> max-pool of second-order inner loops (kernels/lean_pool.py,
kernels/batchnorm_grad.batch_norm_pool_train): torch's values and derivatives, for less kept memory."""

import pytest
import torch
import torch.nn.functional as F

import quickstudy as qs
from quickstudy.kernels import batch_norm_pool_train, batch_norm_train, lean_max_pool2x2
from quickstudy.models.fast_path import lean_norm_then_pool


def _input(channels_last: bool, shape=(3, 4, 6, 8), tie: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    if tie:  # the first of the window wins (finite differences are undefined there)
        x[0, 0, 0, 0] = x[0, 0, 0, 1] = x[0, 0, :2, :2].max() + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


def _third_derivative(pool, x: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2, dtype=x.dtype,
                          generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad((pool(x.tanh()) ** 3 * weights).sum(), x, create_graph=True)
    (grad2,) = torch.autograd.grad((grad ** 2).sum(), x, create_graph=True)
    (grad3,) = torch.autograd.grad(grad2.sin().sum(), x)
    return grad3


@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_pool_has_torchs_values_and_derivatives_to_third_order(channels_last):
    tied = _input(channels_last, tie=True)
    out = lean_max_pool2x2(tied)
    assert torch.equal(out, F.max_pool2d(tied, 2))
    (grad,) = torch.autograd.grad(out.sum(), tied)
    assert grad[0, 0, 0, 0] == 1 and grad[0, 0, 0, 1] == 0  # the tie went to the first, as torch's
    x = _input(channels_last)
    assert torch.autograd.gradcheck(lean_max_pool2x2, (x,))
    assert torch.autograd.gradgradcheck(lean_max_pool2x2, (x,))
    torch.testing.assert_close(_third_derivative(lean_max_pool2x2, x),
                               _third_derivative(lambda t: F.max_pool2d(t, 2), x), rtol=0, atol=1e-12)


def test_lean_pool_drops_the_odd_row_and_column_as_torchs():
    x = _input(True, shape=(2, 3, 7, 5))
    assert torch.equal(lean_max_pool2x2(x), F.max_pool2d(x, 2))
    (ours,) = torch.autograd.grad((lean_max_pool2x2(x) ** 2).sum(), x)
    (torchs,) = torch.autograd.grad((F.max_pool2d(x, 2) ** 2).sum(), x)
    assert torch.equal(ours, torchs)


def _bn_params(channels: int):
    gen = torch.Generator().manual_seed(2)
    weight = (torch.rand(channels, dtype=torch.float64, generator=gen) - 0.3).requires_grad_()  # some negative
    bias = torch.randn(channels, dtype=torch.float64, generator=gen).requires_grad_()
    return weight, bias


@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_pool_has_the_first_and_second_derivatives_of_batch_norm_then_pool(channels_last):
    x = _input(channels_last)
    weight, bias = _bn_params(x.shape[1])

    def reference(x, weight, bias):
        return F.max_pool2d(F.batch_norm(x, None, None, weight, bias, training=True), 2)

    assert torch.allclose(batch_norm_pool_train(x, weight, bias), reference(x, weight, bias), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(batch_norm_pool_train, (x, weight, bias))
    assert torch.autograd.gradgradcheck(batch_norm_pool_train, (x, weight, bias))
    # the second derivative the inner loop differentiates, against torch's own composite
    probe = torch.randn(3, 4, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for fn in (batch_norm_pool_train, reference):
        grads = torch.autograd.grad((fn(x, weight, bias).tanh() * probe).sum(), (x, weight, bias), create_graph=True)
        results.append(torch.autograd.grad(sum((g ** 2).sum() for g in grads), (x, weight, bias)))
    for ours, torchs in zip(*results):
        torch.testing.assert_close(ours, torchs, rtol=1e-10, atol=1e-12)


def test_batch_norm_pool_refuses_a_third_derivative():
    x = _input(True)
    weight, bias = _bn_params(x.shape[1])
    (grad,) = torch.autograd.grad(batch_norm_pool_train(x, weight, bias).pow(2).sum(), x, create_graph=True)
    torch.autograd.grad(grad.pow(2).sum(), x, retain_graph=True)  # a second derivative is fine
    with pytest.raises(RuntimeError, match="third derivative"):  # a graph for a third one is refused
        torch.autograd.grad(grad.pow(2).sum(), x, create_graph=True)


def test_batch_norm_pool_updates_running_statistics_as_batch_norm():
    x = _input(True)
    weight, bias = _bn_params(x.shape[1])
    stats = [(torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)) for _ in range(2)]
    batch_norm_pool_train(x, weight, bias, *stats[0], momentum=0.3)
    batch_norm_train(x, weight, bias, *stats[1], momentum=0.3)
    assert torch.equal(stats[0][0], stats[1][0]) and torch.equal(stats[0][1], stats[1][1])


def _saved_bytes_of_a_second_order_graph(fn, x, *params) -> tuple[int, list[torch.Size]]:
    """Bytes kept by the graph of ``grad(fn(x).sum(), x, create_graph=True)`` and the shapes of the kept
    floating tensors as large as ``x`` other than ``x`` itself."""
    kept: dict[int, torch.Tensor] = {}

    def pack(t):
        kept.setdefault(t.untyped_storage().data_ptr(), t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x, *params)
        torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
    full = [t.shape for ptr, t in kept.items() if t.is_floating_point() and t.numel() >= x.numel()
            and ptr != x.untyped_storage().data_ptr()]
    return sum(t.untyped_storage().nbytes() for t in kept.values()), full


def test_the_second_order_graph_keeps_no_full_size_tensor_but_the_input():
    x = torch.randn(25, 64, 28, 28).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    ours, ours_full = _saved_bytes_of_a_second_order_graph(batch_norm_pool_train, x, weight, bias)
    native, native_full = _saved_bytes_of_a_second_order_graph(
        lambda x, w, b: F.max_pool2d(batch_norm_train(x, w, b), 2), x, weight, bias)
    assert ours_full == [] and len(native_full) >= 2  # torch's keeps the batch-norm output and its gradient
    assert ours < 0.5 * native


def test_maml_meta_gradient_is_the_same_with_and_without_the_lean_pool():
    gen = torch.Generator().manual_seed(0)
    tasks, ways, shots, queries = 2, 5, 2, 3
    batch = qs.TaskBatch(
        support_x=torch.randn(tasks, ways * shots, 1, 28, 28, generator=gen, dtype=torch.float64),
        support_y=torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1),
        query_x=torch.randn(tasks, ways * queries, 1, 28, 28, generator=gen, dtype=torch.float64),
        query_y=torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1), ways=ways)
    torch.manual_seed(0)
    maml = qs.MAML(qs.models.Conv4(in_channels=1, ways=ways).double(), inner_lr=0.4, inner_steps=3, strategy="loop")
    grads = {}
    for on in (True, False):
        maml.model.kernels = frozenset(qs.models.fast_path.KERNELS) - (set() if on else {"lean_pool"})
        maml.zero_grad()
        maml.meta_backward(batch)
        grads[on] = torch.cat([p.grad.flatten() for p in maml.parameters()])
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("policy,training", [("transductive", True), ("running", True), ("running", False)])
def test_task_batch_norm_then_pool_equals_the_two_layers(policy, training):
    torch.manual_seed(0)
    norm = qs.models.TaskBatchNorm2d(4, policy=policy).double().train(training)
    twin = qs.models.TaskBatchNorm2d(4, policy=policy).double().train(training)
    twin.load_state_dict(norm.state_dict())
    x = _input(True)
    ours, theirs = lean_norm_then_pool(x, norm), F.max_pool2d(twin(x), 2)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    probe = torch.randn_like(ours)
    grads = [torch.autograd.grad((y * probe).sum(), [x, *m.parameters()]) for y, m in ((ours, norm), (theirs, twin))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    if policy == "running":
        assert torch.equal(norm.running_mean, twin.running_mean) and torch.equal(norm.running_var, twin.running_var)
