"""The fused batch norm -> max-pool -> ReLU: the same values and gradients as the three torch ops, less kept
for the backward, used by Conv4 only where a graph is differentiated once, and an error (not a wrong
number) for a second derivative."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import quickstudy as qs
import quickstudy.kernels.fused_tail as fused_block
from quickstudy.kernels.fused_tail import bn_pool_relu
from quickstudy.models import Learner

needs_kernel = pytest.mark.skipif(fused_block._ops() is None, reason="no C++ compiler to build the kernel")


def reference(x, weight, bias, running_mean=None, running_var=None):
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum=0.1, eps=1e-5)
    return F.relu(F.max_pool2d(y, 2))


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@needs_kernel
@pytest.mark.parametrize("shape", [(6, 16, 12, 12), (3, 8, 7, 5), (2, 4, 3, 3), (1, 3, 2, 2)])
def test_values_and_gradients_match_the_torch_ops_in_float64(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = channels_last(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5)
    weight = torch.randn(shape[1], generator=gen, dtype=torch.float64)  # some negative: the argmax flips
    bias = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen, dtype=torch.float64)
    ref_inputs = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = reference(*ref_inputs)
    expected.backward(grad)
    inputs = [(channels_last(t.float()) if t.dim() == 4 else t.float()).requires_grad_() for t in (x, weight, bias)]
    out = bn_pool_relu(*inputs)
    out.backward(grad.float())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) < 1e-5
    for got, want in zip(inputs, ref_inputs):
        assert relative_error(got.grad, want.grad) < 1e-5


@needs_kernel
def test_bfloat16_rounds_the_float_result_once_and_its_gradients_are_closer_than_torchs():
    """bfloat16 in, bfloat16 out (autocast's convolution outputs), arithmetic and statistics in float32."""
    gen = torch.Generator().manual_seed(7)
    x = channels_last(torch.randn(6, 16, 12, 12, generator=gen) * 2 + 0.5).bfloat16()
    weight, bias = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    grad = channels_last(torch.randn(6, 16, 6, 6, generator=gen)).bfloat16()
    exact = [t.double().requires_grad_() for t in (x, weight, bias)]
    expected = reference(*exact)
    expected.backward(grad.double())
    native = [t.clone().requires_grad_() for t in (x, weight, bias)]
    reference(*native).backward(grad)
    fused = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out = bn_pool_relu(*fused)
    out.backward(grad)
    assert out.dtype == fused[0].grad.dtype == torch.bfloat16 and fused[1].grad.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert relative_error(out, expected) <= 2 ** -8  # one rounding of the float result
    assert relative_error(fused[0].grad, exact[0].grad) <= 2 ** -8
    assert relative_error(fused[0].grad, exact[0].grad) <= relative_error(native[0].grad, exact[0].grad)
    for got, want in zip(fused[1:], exact[1:]):
        assert relative_error(got.grad, want.grad) < 1e-5  # sums in float32, not bfloat16


@needs_kernel
def test_ties_send_the_gradient_to_the_first_maximum_as_torch_does():
    x = channels_last(torch.randn(2, 3, 4, 4))
    x[:, :, :2, :2] = 1.5  # a window whose four values are equal (positive after normalisation)
    weight, bias = torch.ones(3), torch.full((3,), 2.0)
    grad = torch.randn(2, 3, 2, 2)
    ref_x = x.clone().requires_grad_()
    reference(ref_x, weight, bias).backward(grad)
    fused_x = x.clone().requires_grad_()
    bn_pool_relu(fused_x, weight, bias).backward(grad)
    torch.testing.assert_close(fused_x.grad, ref_x.grad, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_running_statistics_update_as_batch_norm_does():
    x = channels_last(torch.randn(4, 5, 6, 6) * 3 + 1)
    weight, bias = torch.rand(5) + 0.5, torch.randn(5)
    expected_mean, expected_var = torch.zeros(5), torch.ones(5)
    reference(x, weight, bias, expected_mean, expected_var)
    mean, var = torch.zeros(5), torch.ones(5)
    with torch.no_grad():
        bn_pool_relu(x, weight, bias, mean, var)
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(var, expected_var)


@needs_kernel
def test_a_second_derivative_raises_instead_of_being_wrong():
    x = channels_last(torch.randn(2, 3, 4, 4)).requires_grad_()
    weight, bias = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    loss = bn_pool_relu(x, weight, bias).square().sum()
    (grad_weight,) = torch.autograd.grad(loss, [weight], create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_weight.sum().backward()


def _graph_ops(output):
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return {node.name() for node in seen}


def _saved_bytes(fn):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@needs_kernel
def test_conv4_fuses_only_when_told_the_graph_is_backpropagated_once_and_keeps_far_less():
    torch.manual_seed(0)
    model = qs.models.Conv4(in_channels=1, ways=5)
    images = torch.randn(20, 1, 28, 28)
    plain = model(images)
    assert "_BnPoolReluBackward" not in _graph_ops(plain)  # a second derivative must stay possible
    fused = model(images, backward_once=True)
    assert "_BnPoolReluBackward" in _graph_ops(fused)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)
    lean_bytes = _saved_bytes(lambda: model(images))  # twice differentiable: the lean pool
    fused_bytes = _saved_bytes(lambda: model(images, backward_once=True))
    without = copy.deepcopy(model)
    without.kernels = frozenset({"channels_last", "gemm_conv"})  # the switch: no fused tail, no lean pool
    native_bytes = _saved_bytes(lambda: without(images, backward_once=True))
    assert fused_bytes < 0.6 * native_bytes  # no batch-norm output, no int64 pool indices
    assert fused_bytes < lean_bytes < native_bytes
    with torch.no_grad():  # evaluation uses it too
        torch.testing.assert_close(model(images), plain, rtol=1e-4, atol=1e-5)


@needs_kernel
def test_conv4_fuses_under_bfloat16_autocast_too():
    torch.manual_seed(0)
    model = qs.models.Conv4(in_channels=1, ways=5, image_size=16)  # small: bfloat16 convolutions can be slow
    images = torch.randn(10, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(images)
        fused = model(images, backward_once=True)
    assert "_BnPoolReluBackward" in _graph_ops(fused) and "_BnPoolReluBackward" not in _graph_ops(plain)
    assert fused.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), plain.float(), rtol=0.05, atol=0.05)
    fused.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_learner_passes_backward_once_only_to_models_that_take_it():
    """The flag travels in the call (no thread-local state): a Conv4 fuses, a plain module just runs."""
    torch.manual_seed(0)
    conv4, plain = qs.models.Conv4(in_channels=1, ways=5), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))
    images = torch.randn(6, 1, 28, 28)
    assert Learner(conv4).accepts_backward_once and not Learner(plain).accepts_backward_once
    out = Learner(conv4)(dict(conv4.named_parameters()), images, backward_once=True)
    assert "_BnPoolReluBackward" in _graph_ops(out)
    assert "_BnPoolReluBackward" not in _graph_ops(Learner(conv4)(dict(conv4.named_parameters()), images))
    torch.testing.assert_close(Learner(plain)(dict(plain.named_parameters()), images, backward_once=True),
                               plain(images))


def _meta_gradient(learner, batch):
    learner.zero_grad()
    learner.meta_backward(batch)
    return torch.cat([p.grad.flatten() for p in learner.parameters()]).double()


def _assert_as_accurate_as_native(learner, batch):
    """The fused meta-gradient is as close to the float64 one as the native ops' float32 meta-gradient."""
    exact_batch = qs.TaskBatch(support_x=batch.support_x.double(), support_y=batch.support_y,
                               query_x=batch.query_x.double(), query_y=batch.query_y, ways=batch.ways)
    exact = _meta_gradient(copy.deepcopy(learner).double(), exact_batch)
    native = copy.deepcopy(learner)
    native.model.kernels = native.model.kernels - {"fused_tail"}
    native_error = (_meta_gradient(native, batch) - exact).norm() / exact.norm()
    fused_error = (_meta_gradient(learner, batch) - exact).norm() / exact.norm()
    # Both are usually ~3e-6 off; a max-pool window whose two largest values differ by less than float32
    # rounding (there are ~1e5 windows here) sends its gradient to the other pixel in one implementation or
    # the other, 3e-4 to 1e-2 off (measured over seeds: the native ops 4 times in 8, the fused 3). A wrong
    # formula is off by 0.1 or more.
    assert fused_error <= max(2 * native_error, 1e-2), (fused_error, native_error)


def _tasks(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return qs.TaskBatch(support_x=torch.randn(count, 5, 1, 28, 28, generator=gen),
                        support_y=torch.arange(5).repeat(count, 1),
                        query_x=torch.randn(count, 10, 1, 28, 28, generator=gen),
                        query_y=torch.arange(5).repeat(count, 2), ways=5)


@needs_kernel
@pytest.mark.parametrize("first_order,strategy", [(False, "loop"), (True, "loop"), (False, "threads")])
def test_maml_meta_gradient_with_the_fused_query_pass_is_as_accurate_as_native(first_order, strategy):
    torch.manual_seed(1)
    maml = qs.MAML(qs.models.Conv4(in_channels=1, ways=5), inner_lr=0.4, inner_steps=2, first_order=first_order,
                   strategy=strategy)
    _assert_as_accurate_as_native(maml, _tasks(3, seed=1))


@needs_kernel
def test_protonet_and_reptile_gradients_with_fusion_are_as_accurate_as_native():
    torch.manual_seed(2)
    _assert_as_accurate_as_native(qs.ProtoNet(qs.models.Conv4(in_channels=1, ways=None)), _tasks(2, seed=2))
    reptile = qs.Reptile(qs.models.Conv4(in_channels=1, ways=5), inner_lr=0.01, inner_steps=2,
                         inner_optimizer="sgd")  # Adam would blow the conv biases' zero-gradient noise up
    _assert_as_accurate_as_native(reptile, _tasks(2, seed=3))


def test_without_a_compiler_conv4_warns_once_and_uses_the_torch_ops(monkeypatch):
    from quickstudy.kernels import native

    def no_compiler():
        raise native.CompilerNotFoundError("no compiler here")

    monkeypatch.setattr(fused_block, "_OPS", None)
    monkeypatch.setattr(fused_block, "_UNAVAILABLE", None)
    monkeypatch.setattr(native, "compiler", no_compiler)
    monkeypatch.setattr(native, "build_library", lambda *a, **k: no_compiler())
    model = qs.models.Conv4(in_channels=1, ways=5)
    with pytest.warns(RuntimeWarning, match="fused Conv4 blocks unavailable.*no compiler here"), torch.no_grad():
        out = model(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        model(torch.randn(4, 1, 28, 28), backward_once=True).sum().backward()
