"""Backbones, the Learner wrapper and the primitive-ops batch norm."""

import pytest
import torch
from torch import nn

from quickstudy.models import (
    MODELS,
    Conv4,
    Learner,
    MLP,
    ResNet12,
    TaskBatchNorm,
    TaskBatchNorm2d,
    build_model,
)


@pytest.mark.parametrize("primitive", [True, False])
def test_task_batch_norm_equals_native_in_training_mode_forward_and_backward(primitive):
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    ours = TaskBatchNorm2d(3).double()
    ours.primitive = primitive
    native = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        for bn in (ours, native):
            bn.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
            bn.bias.copy_(torch.tensor([0.1, -0.3, 0.7]))
    w = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    out_ours, out_native = ours(x), native(x)
    torch.testing.assert_close(out_ours, out_native, rtol=1e-12, atol=1e-12)
    g_ours = torch.autograd.grad((out_ours * w).sum(), [x, ours.weight, ours.bias], create_graph=True)
    g_native = torch.autograd.grad((out_native * w).sum(), [x, native.weight, native.bias], create_graph=True)
    for a, b in zip(g_ours, g_native):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # second order (outside vmap the native double backward is right, so it is the reference here)
    v = torch.randn_like(x)
    h_ours = torch.autograd.grad((g_ours[0] * v).sum(), [x, ours.weight])
    h_native = torch.autograd.grad((g_native[0] * v).sum(), [x, native.weight])
    for a, b in zip(h_ours, h_native):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_task_batch_norm_takes_the_primitive_form_inside_vmap():
    torch.manual_seed(0)
    bn = TaskBatchNorm2d(3).double()
    x = torch.randn(4, 6, 3, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(bn)(x), torch.stack([bn(t) for t in x]))
    running = TaskBatchNorm2d(3, policy="running").double()
    with pytest.raises(RuntimeError, match="cannot update its running statistics"):
        torch.func.vmap(running)(x)


@pytest.mark.parametrize("primitive", [True, False])
def test_running_policy_tracks_statistics_like_native_and_uses_them_in_eval(primitive):
    torch.manual_seed(1)
    ours = TaskBatchNorm2d(2, policy="running").double()
    ours.primitive = primitive
    native = nn.BatchNorm2d(2).double()
    for _ in range(3):
        x = torch.randn(4, 2, 3, 3, dtype=torch.float64) * 2 + 1
        ours(x), native(x)
    torch.testing.assert_close(ours.running_mean, native.running_mean)
    torch.testing.assert_close(ours.running_var, native.running_var)
    ours.eval(), native.eval()
    x = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), native(x))
    # eval mode: a prediction depends on that example alone
    torch.testing.assert_close(ours(x[:1]), ours(x)[:1])


@pytest.mark.parametrize("primitive", [True, False])
def test_transductive_policy_uses_batch_statistics_in_eval_mode_too(primitive):
    bn = TaskBatchNorm2d(2).double().eval()
    bn.primitive = primitive
    x = torch.randn(5, 2, 3, 3, dtype=torch.float64) * 3 + 2
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert not dict(bn.named_buffers())  # keeps no running statistics


def test_task_batch_norm_checks_its_input_and_arguments():
    with pytest.raises(ValueError, match="expects"):
        TaskBatchNorm2d(3)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="policy"):
        TaskBatchNorm(3, policy="per-step")
    assert TaskBatchNorm(4)(torch.randn(5, 4)).shape == (5, 4)  # 1-d features work with the base class


@pytest.mark.parametrize(
    "kwargs, shape, features",
    [
        (dict(), (3, 1, 28, 28), 64),  # Omniglot, max-pool: 28 -> 1
        (dict(stride_variant=True), (3, 1, 28, 28), 64),  # MAML's Omniglot net: averaged features
        (dict(in_channels=3, hidden=32, image_size=84), (2, 3, 84, 84), 800),  # MAML mini-ImageNet
        (dict(in_channels=3, image_size=84), (2, 3, 84, 84), 1600),  # ProtoNet mini-ImageNet
    ],
)
def test_conv4_shapes(kwargs, shape, features):
    model = Conv4(ways=5, **kwargs)
    assert model.feature_dim == features
    assert model(torch.randn(*shape)).shape == (shape[0], 5)
    embed = Conv4(ways=None, **kwargs)
    assert embed.head is None and embed.out_features == features
    assert embed(torch.randn(*shape)).shape == (shape[0], features)


def test_conv4_stride_variant_has_no_max_pool_and_stride_two():
    model = Conv4(stride_variant=True)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, TaskBatchNorm2d) for m in model.modules()) == 4


def test_conv4_batch_norm_policies():
    assert not any(isinstance(m, TaskBatchNorm) for m in Conv4(batch_norm="none").modules())
    bns = [m for m in Conv4(batch_norm="running").modules() if isinstance(m, TaskBatchNorm)]
    assert len(bns) == 4 and all(m.policy == "running" for m in bns)


def test_models_reject_bad_input_with_a_message():
    with pytest.raises(ValueError, match="in_channels=1"):
        Conv4()(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="image_size"):
        Conv4()(torch.randn(2, 1, 84, 84))
    with pytest.raises(ValueError, match="in_features=1"):
        MLP()(torch.randn(4, 2))
    with pytest.raises(ValueError, match="batch_norm"):
        Conv4(batch_norm="batch")
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=[40, 0])
    with pytest.raises(ValueError, match="ways"):
        Conv4(ways=0)


def test_mlp_is_the_maml_sinusoid_network():
    model = MLP()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1, 40), (40, 40), (40, 1)]
    assert model(torch.randn(7, 1)).shape == (7, 1)
    assert MLP(in_features=3, out_features=None, hidden=[8]).forward(torch.randn(2, 3)).shape == (2, 8)


def test_resnet12_shapes():
    model = ResNet12(in_channels=3, ways=5, channels=[4, 6, 8, 10])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert ResNet12(ways=None, channels=[4, 6, 8, 10])(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert sum(isinstance(m, TaskBatchNorm2d) for m in model.modules()) == 16


def test_learner_functional_apply_equals_module_with_those_weights():
    torch.manual_seed(0)
    model = MLP(in_features=2, out_features=3, hidden=[4]).double()
    learner = Learner(model)
    x = torch.randn(5, 2, dtype=torch.float64)
    fast = {k: v + 0.1 * torch.randn_like(v) for k, v in learner.params().items()}
    out = learner(fast, x)
    reference = MLP(in_features=2, out_features=3, hidden=[4]).double()
    reference.load_state_dict({k: v.detach() for k, v in fast.items()})
    torch.testing.assert_close(out, reference(x))
    torch.testing.assert_close(learner(learner.params(), x), model(x))  # own parameters untouched
    # a partial dict takes the rest from the module; frozen parameters are not "params"
    model.features[0].weight.requires_grad_(False)
    assert "features.0.weight" not in learner.params()
    torch.testing.assert_close(learner({"head.bias": fast["head.bias"]}, x),
                               model(x) - model.head.bias + fast["head.bias"])
    with pytest.raises(TypeError):
        Learner(object())


def test_registry_builds_from_plain_arguments():
    assert set(MODELS) == {"conv4", "mlp", "resnet12", "melu"}
    model = build_model("conv4", in_channels=1, ways=5, hidden=32, stride_variant=True)
    assert isinstance(model, Conv4) and model.hidden == 32
    with pytest.raises(ValueError, match="'conv5'"):
        build_model("conv5")


@pytest.mark.parametrize("kwargs", [dict(), dict(stride_variant=True), dict(batch_norm="running"), dict(in_channels=3)])
def test_conv4_channels_last_on_cpu_equals_the_default_layout_in_float64(kwargs):
    """Conv4 runs in channels_last on CPU (and pools before the ReLU): same outputs and gradients, up to
    summation order, as the plain NCHW network with ReLU before pool."""

    torch.manual_seed(0)
    model = Conv4(ways=5, hidden=8, image_size=28, **kwargs).double()
    x = torch.randn(6, model.in_channels, 28, 28, dtype=torch.float64)

    def reference(module, inputs):  # the textbook order, NCHW, without the fast path
        blocks = list(module.features)
        h = inputs
        for i in range(0, len(blocks), 3 if module.stride_variant else 4):
            conv, norm = blocks[i], blocks[i + 1]
            h = torch.relu(norm(conv(h)))
            if not module.stride_variant:
                h = nn.functional.max_pool2d(h, 2)
        h = h.mean(dim=(2, 3)) if module.stride_variant else h.flatten(1)
        return module.head(h)

    results = []
    for channels_last in (True, False):
        copy_ = __import__("copy").deepcopy(model)
        out = copy_(x) if channels_last else reference(copy_, x)
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in copy_.named_parameters()},
                        {n: b.clone() for n, b in copy_.named_buffers()}))
    (out_a, grads_a, bufs_a), (out_b, grads_b, bufs_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=1e-12, atol=1e-12)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-10, atol=1e-12)
    for name in bufs_a:
        torch.testing.assert_close(bufs_a[name], bufs_b[name], rtol=1e-12, atol=1e-12)


def test_conv4_state_dict_keys_are_unchanged():
    keys = list(Conv4(ways=5, hidden=8).state_dict())
    assert keys == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                    "features.4.weight", "features.4.bias", "features.5.weight", "features.5.bias",
                    "features.8.weight", "features.8.bias", "features.9.weight", "features.9.bias",
                    "features.12.weight", "features.12.bias", "features.13.weight", "features.13.bias",
                    "head.weight", "head.bias"]


@pytest.mark.parametrize("in_channels,stride,padding,bias", [(1, 1, 1, True), (3, 1, 1, False), (1, 2, 1, True),
                                                              (3, 2, 0, True)])
def test_first_layer_as_a_matrix_product_equals_conv2d_to_second_order(in_channels, stride, padding, bias):
    from quickstudy.kernels import conv2d_as_gemm

    torch.manual_seed(0)
    x = torch.randn(4, in_channels, 9, 9, dtype=torch.float64)
    weight = torch.randn(5, in_channels, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True) if bias else None
    params = [weight] + ([b] if bias else [])
    probe = torch.randn(4, 5, (9 + 2 * padding - 3) // stride + 1, (9 + 2 * padding - 3) // stride + 1,
                        dtype=torch.float64)

    def outer(conv):  # a MAML-like scalar: the squared norm of the inner gradient of a nonlinear loss
        out = conv(x, weight, b)
        grads = torch.autograd.grad((out * probe).tanh().sum(), params, create_graph=True)
        return out, sum(g.pow(2).sum() for g in grads)

    out_gemm, outer_gemm = outer(lambda x_, w_, b_: conv2d_as_gemm(x_, w_, b_, stride, padding))
    out_ref, outer_ref = outer(lambda x_, w_, b_: nn.functional.conv2d(x_, w_, b_, stride=stride, padding=padding))
    assert out_gemm.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_gemm, out_ref, rtol=1e-12, atol=1e-12)
    for g_gemm, g_ref in zip(torch.autograd.grad(outer_gemm, params), torch.autograd.grad(outer_ref, params)):
        torch.testing.assert_close(g_gemm, g_ref, rtol=1e-10, atol=1e-12)


def test_only_small_plain_convolutions_run_as_a_matrix_product():
    from quickstudy.models.fast_path import gemm_conv_applies

    assert gemm_conv_applies(nn.Conv2d(1, 64, 3, padding=1))
    assert gemm_conv_applies(nn.Conv2d(3, 64, 3, stride=2, padding=1))
    assert not gemm_conv_applies(nn.Conv2d(64, 64, 3, padding=1))  # wide: oneDNN's kernel is the fast one
    assert not gemm_conv_applies(nn.Conv2d(2, 4, 3, padding=1, groups=2))
    assert not gemm_conv_applies(nn.Conv2d(1, 4, 3, padding=1, dilation=2))
    assert not gemm_conv_applies(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"))
    assert not gemm_conv_applies(nn.Conv2d(1, 4, 3, padding="same"))
    assert not gemm_conv_applies(nn.Linear(3, 3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_batch_norm_double_backward_equals_native_in_float64(channels_last):
    """batch_norm_train's hand-written double backward against torch's own, through a MAML-like outer loss."""
    from quickstudy.kernels import batch_norm_train

    torch.manual_seed(0)
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weight = torch.tensor([0.5, 1.5, -2.0], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.1, -0.3, 0.7], dtype=torch.float64, requires_grad=True)
    probe = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    directions = [torch.randn(6, 3, 5, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
                  torch.randn(3, dtype=torch.float64)]

    def second_order(norm):
        inner = torch.autograd.grad((norm(x, weight, bias) * probe).tanh().sum(), (x, weight, bias),
                                    create_graph=True)
        return torch.autograd.grad(sum((g * d).sum() for g, d in zip(inner, directions)), (x, weight, bias))

    ours = second_order(batch_norm_train)
    native = second_order(lambda x_, w_, b_: nn.functional.batch_norm(x_, None, None, w_, b_, training=True))
    for a, b in zip(ours, native):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(batch_norm_train, (x, weight, bias))


def test_lean_batch_norm_in_bfloat16_matches_the_float64_second_order_gradient():
    """Under autocast the convolutions hand batch norm bfloat16 activations (float32 weights): the lean double
    backward computes in float32, so its second-order gradients are the float64 ones to bfloat16 rounding."""
    from quickstudy.kernels import batch_norm_train

    torch.manual_seed(2)
    x64 = torch.randn(10, 4, 6, 6, dtype=torch.float64).bfloat16().double()  # values exact in bfloat16
    weight64 = torch.tensor([0.5, 1.5, -2.0, 1.0], dtype=torch.float64)
    bias64 = torch.tensor([0.1, -0.3, 0.7, 0.0], dtype=torch.float64)
    probe = torch.randn(10, 4, 6, 6, dtype=torch.float64).bfloat16().double()

    def second_order(norm, x, weight, bias):
        x, weight, bias = (t.clone().requires_grad_() for t in (x, weight, bias))
        inner = torch.autograd.grad((norm(x, weight, bias).to(probe.dtype) * probe).sin().sum(), (x, weight, bias),
                                    create_graph=True)
        return torch.autograd.grad(sum(g.double().pow(2).sum() for g in inner), (x, weight, bias))

    def native(x_, w_, b_):
        return nn.functional.batch_norm(x_, None, None, w_, b_, training=True)

    reference = second_order(native, x64, weight64, bias64)
    ours = second_order(batch_norm_train, x64.bfloat16(), weight64.float(), bias64.float())
    torchs = second_order(native, x64.bfloat16(), weight64.float(), bias64.float())  # torch's own, in bfloat16
    assert [g.dtype for g in ours] == [torch.bfloat16, torch.float32, torch.float32]
    for a, t, b in zip(ours, torchs, reference):
        error, torch_error = (((g.double() - b).norm() / b.norm()).item() for g in (a, t))
        assert error < 3e-2 and error <= 1.25 * torch_error + 1e-3  # bfloat16 rounding, no worse than torch's

    bn = TaskBatchNorm2d(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bn(x64.bfloat16().requires_grad_())
    assert type(y.grad_fn).__name__ == "_BatchNormTrainBackward"  # the lean path, not torch's composite


def test_lean_batch_norm_updates_running_statistics_and_refuses_a_third_derivative():
    from quickstudy.kernels import batch_norm_train

    torch.manual_seed(1)
    x = torch.randn(8, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.ones(4, dtype=torch.float64, requires_grad=True), torch.zeros(4, dtype=torch.float64)
    stats = [torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)]
    native_stats = [s.clone() for s in stats]
    y = batch_norm_train(x, weight, bias, *stats, momentum=0.3)
    nn.functional.batch_norm(x, *native_stats, weight, bias, training=True, momentum=0.3)
    for ours, native in zip(stats, native_stats):
        torch.testing.assert_close(ours, native)
    (g,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
    torch.autograd.grad(g.pow(2).sum(), x, retain_graph=True)  # second order: fine
    with pytest.raises(RuntimeError, match="third derivative"):  # a graph for a third: refused, not wrong
        torch.autograd.grad(g.pow(2).sum(), x, create_graph=True)
