"""A user's own model on quickstudy's kernels (qs.models.accelerate, and the meta-learners through Learner): the
same outputs, gradients and second-order meta-gradients as the plain module in float64, for every pattern
served; layers without a kernel run as they are and the listing names them; the module is untouched."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import quickstudy as qs
import quickstudy.kernels.fused_tail as fused_tail
from quickstudy.models import Learner, accelerate, acceleration_report, conv4_sequential

needs_kernel = pytest.mark.skipif(fused_tail._ops() is None, reason="no C++ compiler to build the fused kernel")


class FunctionalBlocks(nn.Module):
    """Conv -> BN -> F.relu -> F.max_pool2d(x, 2), written with functions in forward, no bias, then a head."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, track_running_stats=False)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False)
        self.head = nn.Linear(6 * 4 * 4, 5, bias=False)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = self.bn2(self.conv2(x)).relu()
        return self.head(F.max_pool2d(x, 2).flatten(1))


def pool_then_relu():
    """Conv -> BN -> pool -> ReLU (Conv4's own order), and BN -> pool without a ReLU."""
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False), nn.MaxPool2d(2),
                         nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(96, 5))


def lone_layers():
    """BN alone (then LeakyReLU, which has no kernel), a lone 2x2 pool, a 3x3 pool (no kernel), a GELU."""
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6, track_running_stats=False),
                         nn.LeakyReLU(0.1), nn.MaxPool2d(2), nn.Conv2d(6, 6, 3), nn.GELU(),
                         nn.MaxPool2d(3, stride=2), nn.Flatten(), nn.Linear(24, 5))


class UserResNetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act, self.pool = nn.LeakyReLU(0.1), nn.MaxPool2d(2)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.pool(self.act(out + self.shortcut(x)))


def user_resnet():
    """A residual network as a user writes it: nn.BatchNorm2d with running statistics, LeakyReLU, a sum."""
    return nn.Sequential(UserResNetBlock(1, 6), UserResNetBlock(6, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


MODELS = {"conv4_sequential": lambda: conv4_sequential(in_channels=1, ways=5, hidden=6, image_size=16),
          "functional": FunctionalBlocks, "pool_then_relu": pool_then_relu, "lone_layers": lone_layers,
          "user_resnet": user_resnet}


def tasks(count, seed, dtype=torch.float64, shots=2, queries=3):
    gen = torch.Generator().manual_seed(seed)
    return qs.TaskBatch(support_x=torch.randn(count, 5 * shots, 1, 16, 16, generator=gen, dtype=dtype),
                        support_y=torch.arange(5).repeat_interleave(shots).repeat(count, 1),
                        query_x=torch.randn(count, 5 * queries, 1, 16, 16, generator=gen, dtype=dtype),
                        query_y=torch.arange(5).repeat_interleave(queries).repeat(count, 1), ways=5)


def meta_gradient(model, batch, path, first_order=False, strategy="loop", steps=2):
    maml = qs.MAML(model, inner_lr=0.3, inner_steps=steps, first_order=first_order, strategy=strategy)
    maml.zero_grad()
    if path == "meta_backward":
        maml.meta_backward(batch)
    else:
        maml.meta_loss(batch)[0].backward()
    return [p.grad.clone() for p in maml.parameters()]


def twin(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = MODELS[name]().to(dtype)
    return model, accelerate(copy.deepcopy(model), kernels="none")


def assert_same(got, want, tolerance=1e-10):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= tolerance * w.abs().max().clamp_min(1.0), (g - w).abs().max()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("path,first_order,strategy", [("meta_backward", False, "loop"), ("meta_loss", False, "loop"),
                                                       ("meta_backward", True, "loop"),
                                                       ("meta_backward", False, "threads")])
def test_second_order_meta_gradient_equals_the_plain_modules_in_float64(name, path, first_order, strategy):
    model, plain = twin(name)
    if strategy == "threads" and name == "user_resnet":
        pytest.skip("running statistics in training mode: threads refuse the model")
    report = acceleration_report(model)
    assert report.traced and report.accelerated, report
    batch = tasks(3, seed=1)
    assert_same(meta_gradient(model, batch, path, first_order, strategy),
                meta_gradient(plain, batch, path, first_order, strategy))


@pytest.mark.parametrize("name", list(MODELS))
def test_outputs_gradients_and_second_derivatives_equal_the_plain_modules(name):
    model, plain = twin(name)
    x = torch.randn(10, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    results = []
    for module in (accelerate(model), plain):
        params = dict(module.named_parameters())
        out = Learner(module)(params, x)
        grads = torch.autograd.grad(out.pow(2).sum(), list(params.values()), create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(params.values()))
        results.append([out, *grads, *second])
    assert_same(*results)


def test_the_listing_says_what_runs_on_which_kernel_and_names_the_layers_without_one():
    report = acceleration_report(lone_layers())
    text = str(report)
    assert "[kernel] 0: Conv2d" in text and "gemm_conv" in text
    assert "[kernel] 1: BatchNorm2d" in text and "closed-form double backward" in text
    assert "[kernel] 3: MaxPool2d" in text and "lean 2x2 max-pool" in text
    assert "[as is ] 2: LeakyReLU" in text and "no kernel for LeakyReLU" in text
    assert "[as is ] 5: GELU" in text and "no kernel for GELU" in text
    assert "[as is ] 6: MaxPool2d" in text and "only 2x2 windows" in text
    fused = str(acceleration_report(conv4_sequential(hidden=6, image_size=16)))
    assert fused.count("fused batch norm -> max-pool -> ReLU") == 4, fused


@needs_kernel
def test_the_query_pass_of_a_users_conv4_runs_the_fused_tail_in_float32():
    model = conv4_sequential(in_channels=1, ways=5, hidden=6, image_size=16)
    x = torch.randn(10, 1, 16, 16)
    out = Learner(model)(dict(model.named_parameters()), x, backward_once=True)
    node, names = out.grad_fn, set()
    stack = [node]
    while stack:
        node = stack.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            stack += [n for n, _ in node.next_functions]
    assert "_BnPoolReluBackward" in names
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("path", ["meta_backward", "meta_loss"])
def test_float32_meta_gradient_of_a_users_conv4_is_as_close_to_float64_as_the_plain_modules(path):
    torch.manual_seed(4)
    model = conv4_sequential(in_channels=1, ways=5, hidden=8, image_size=16)
    exact = meta_gradient(accelerate(copy.deepcopy(model).double(), kernels="none"), tasks(3, 5), path)
    batch = tasks(3, 5, dtype=torch.float32)
    plain = meta_gradient(accelerate(copy.deepcopy(model), kernels="none"), batch, path)
    fast = meta_gradient(model, batch, path)

    def error(grads):
        return (torch.cat([g.flatten().double() for g in grads]) - torch.cat([e.flatten() for e in exact])).norm() \
            / torch.cat([e.flatten() for e in exact]).norm()

    assert error(fast) <= max(2 * error(plain), 1e-4), (error(fast), error(plain))


def test_running_statistics_update_as_the_plain_modules_do():
    model, plain = twin("user_resnet")
    x = torch.randn(10, 1, 16, 16, dtype=torch.float64)
    for _ in range(2):
        accelerate(model)(x)
        plain(x)
    torch.testing.assert_close(model.state_dict(), plain.state_dict(), rtol=1e-12, atol=1e-12)
    model.eval(), plain.eval()
    report = accelerate(model).report
    assert any("evaluation mode with running statistics" in e.how for e in report.not_accelerated), report
    torch.testing.assert_close(accelerate(model)(x), plain(x), rtol=1e-12, atol=1e-12)


def test_the_users_module_and_its_state_dict_keys_are_unchanged():
    model = conv4_sequential(hidden=6, image_size=16)
    keys, forward = list(model.state_dict()), model.forward
    fast = accelerate(model)
    maml = qs.MAML(model)
    maml.meta_backward(tasks(1, 0, dtype=torch.float32))
    assert list(model.state_dict()) == keys and list(fast.state_dict()) == keys and model.forward == forward
    assert list(maml.state_dict()) == [f"model.{k}" for k in keys]
    fast.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    assert all(bool((v == 0).all()) for v in model.state_dict().values())


class DataDependent(nn.Module):
    """torch.fx cannot trace a branch on a tensor's value: the model runs as it is."""

    def __init__(self):
        super().__init__()
        self.body = pool_then_relu()

    def forward(self, x):
        return self.body(x) if x.sum() > 0 else -self.body(x)


def test_an_untraceable_model_runs_as_it_is_and_trains_and_the_listing_says_why():
    torch.manual_seed(0)
    model = DataDependent()
    report = acceleration_report(model)
    assert not report.traced and "torch.fx cannot trace" in str(report)
    _trains(model)


def test_a_model_with_unsupported_layers_still_trains():
    torch.manual_seed(0)
    model = lone_layers()
    assert any(e.names == ("5",) for e in acceleration_report(model).not_accelerated)
    _trains(model)


def _trains(model):
    maml = qs.MAML(model, inner_lr=0.3, inner_steps=1)
    batch = tasks(4, 7, dtype=torch.float32)
    optimizer = torch.optim.Adam(maml.parameters(), 1e-2)
    first = maml.meta_backward(batch)["loss"]
    for _ in range(15):
        optimizer.zero_grad()
        last = maml.meta_backward(batch)["loss"]
        optimizer.step()
    assert last < first * 0.95, (first, last)  # random images: the head learns the label prior


@pytest.mark.parametrize("strategy", ["auto", "threads"])
@pytest.mark.parametrize("make", [lambda: conv4_sequential(hidden=6, image_size=16),
                                  lambda: qs.models.Conv4(in_channels=1, ways=5, hidden=6, image_size=16)],
                         ids=["users_conv4", "builtin_conv4"])
def test_meta_loss_backward_gives_meta_backwards_gradient_bit_for_bit_and_the_loops(make, strategy):
    """The README's path, meta_loss(batch)[0].backward(), computes its meta-gradient task by task as meta_backward
    does (threads, the query pass backpropagated once): the same numbers, and the loop's up to rounding."""
    torch.manual_seed(5)
    model = make().double()
    batch = tasks(4, seed=6)
    eager = meta_gradient(model, batch, "meta_loss", strategy=strategy)
    assert all(torch.equal(a, b) for a, b in zip(eager, meta_gradient(model, batch, "meta_backward", strategy=strategy)))
    assert_same(eager, meta_gradient(model, batch, "meta_loss", strategy="loop"), 1e-12)
    maml = qs.MAML(model, inner_lr=0.3, inner_steps=2, strategy=strategy)
    maml.zero_grad()
    loss, _ = maml.meta_loss(batch)
    assert loss.grad_fn is not None and "MeanWithGradient" in type(loss.grad_fn).__name__
    (2 * loss).backward()  # the chain rule holds through the eager mean
    assert_same([p.grad for p in maml.parameters()], [2 * g for g in eager], 1e-12)
    with pytest.raises(RuntimeError, match="cannot be differentiated twice.*strategy='loop'"):
        torch.autograd.grad(maml.meta_loss(batch)[0], list(maml.parameters()), create_graph=True)
    with torch.no_grad():
        value, _ = maml.meta_loss(batch)
    assert value.grad_fn is None and torch.allclose(value, loss)


@pytest.mark.parametrize("path", ["meta_backward", "meta_loss"])
def test_worker_threads_copies_are_traced_before_the_workers_run(monkeypatch, path):
    """torch.fx patches module calls process-wide while it traces: a copy traced inside a worker thread turned
    the other workers' forwards into traces (TraceError under the threads strategy, intermittently), so every
    copy is traced in the calling thread before any worker starts."""
    import importlib
    import threading

    accelerate_module = importlib.import_module("quickstudy.models.accelerate")  # the module, not the function

    tracing_threads = []
    original = accelerate_module._Tracer.trace

    def trace(self, root, *args, **kwargs):
        tracing_threads.append(threading.current_thread())
        return original(self, root, *args, **kwargs)

    monkeypatch.setattr(accelerate_module._Tracer, "trace", trace)
    torch.set_num_threads(2)  # two workers (the conftest fixture restores one thread)
    model = MODELS["conv4_sequential"]().double()
    gradient = meta_gradient(model, tasks(4, seed=2), path, strategy="threads")
    assert tracing_threads and all(t is threading.main_thread() for t in tracing_threads), tracing_threads
    assert all(torch.isfinite(g).all() for g in gradient)
