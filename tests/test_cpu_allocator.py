"""The caching CPU allocator: same numbers as malloc, blocks reused after the first step, a bounded
cache, and training that goes on (with a warning) where it cannot be built."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quickstudy.kernels import cpu_allocator, native

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++")),
    reason="no C++ compiler to build the allocator",
)

# Runs in a fresh interpreter: installing an allocator is process-wide and cannot be undone.
SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import quickstudy as qs
    from quickstudy.kernels import cpu_allocator, native

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = qs.models.Conv4(in_channels=1, ways=3, hidden=8)
    maml = qs.MAML(model, inner_lr=0.4, inner_steps=2, strategy="loop")
    g = torch.Generator().manual_seed(1)
    batch = qs.TaskBatch(torch.randn(2, 6, 1, 28, 28, generator=g), torch.arange(3).repeat(2, 2),
                         torch.randn(2, 9, 1, 28, 28, generator=g), torch.arange(3).repeat(2, 3), ways=3, shots=2)

    def meta_gradient():
        maml.zero_grad()
        maml.meta_backward(batch)
        return torch.cat([p.grad.flatten() for p in maml.parameters()])

    before = meta_gradient()
    cap = int(sys.argv[1])
    assert cpu_allocator.enable_caching_allocator(max_cached_bytes=cap) is True
    assert cpu_allocator.enable_caching_allocator(max_cached_bytes=cap) is False
    first = meta_gradient()
    misses_after_first = cpu_allocator.caching_allocator_stats().misses
    second = meta_gradient()
    stats = cpu_allocator.caching_allocator_stats()
    del first
    released = cpu_allocator.empty_cache()
    print(json.dumps({
        "equal": bool(torch.equal(before, second)),
        "misses_after_first": misses_after_first, "stats": stats.__dict__, "released": released,
        "cached_after_empty": cpu_allocator.caching_allocator_stats().cached_bytes,
    }))
    """
)


def run_script(tmp_path: Path, cap: int) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cap)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_compiler
def test_same_meta_gradient_and_no_new_blocks_after_the_first_step(tmp_path):
    result = run_script(tmp_path, cap=1 << 30)
    stats = result["stats"]
    assert result["equal"], "the allocator changed the numbers"
    assert stats["hits"] > 0
    # the second step reused the first step's blocks: nothing new was mapped (no fresh page faults)
    assert stats["misses"] == result["misses_after_first"]
    assert stats["unmapped"] == 0
    # after the step every large block (activations, their gradients) is back in the cache
    assert stats["live_bytes"] == 0 and stats["cached_bytes"] >= stats["peak_live_bytes"] > 0
    assert result["released"] > 0 and result["cached_after_empty"] == 0


@needs_compiler
def test_a_zero_cap_caches_nothing(tmp_path):
    result = run_script(tmp_path, cap=0)
    stats = result["stats"]
    assert result["equal"]
    assert stats["hits"] == 0 and stats["cached_bytes"] == 0
    assert stats["unmapped"] > 0 and result["released"] == 0


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_reuse_ratio"):
        cpu_allocator.enable_caching_allocator(max_reuse_ratio=0.5)
    with pytest.raises(ValueError, match="max_cached_bytes"):
        cpu_allocator.enable_caching_allocator(max_cached_bytes=-1)


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(cpu_allocator.CompilerNotFoundError, match="C\\+\\+ compiler"):
        native.compiler()


def test_trainer_warns_and_trains_without_the_allocator(monkeypatch):
    import quickstudy as qs

    def unavailable(**kwargs):
        raise cpu_allocator.CompilerNotFoundError("no compiler here")

    monkeypatch.setattr(cpu_allocator, "caching_allocator_enabled", lambda: False)  # as in a fresh process
    monkeypatch.setattr(cpu_allocator, "enable_caching_allocator", unavailable)
    tasks = qs.Sinusoid(shots=5, queries=5, batch_size=2, seed=0)
    maml = qs.MAML(qs.models.MLP(1, 1, hidden=(8,)), inner_lr=0.01, inner_steps=1, loss="mse")
    trainer = qs.Trainer(maml, tasks, steps=2, val_every=None, progress=False, tensorboard=False)
    with pytest.warns(RuntimeWarning, match="without the caching CPU allocator: no compiler here"):
        trainer.fit()
    assert trainer.step == 2


def test_trainer_keeps_limits_set_by_the_user(monkeypatch):
    import quickstudy as qs

    calls = []
    monkeypatch.setattr(cpu_allocator, "caching_allocator_enabled", lambda: True)
    monkeypatch.setattr(cpu_allocator, "enable_caching_allocator", lambda **kwargs: calls.append(kwargs))
    tasks = qs.Sinusoid(shots=5, queries=5, batch_size=2, seed=0)
    maml = qs.MAML(qs.models.MLP(1, 1, hidden=(8,)), inner_lr=0.01, inner_steps=1, loss="mse")
    qs.Trainer(maml, tasks, steps=1, val_every=None, progress=False, tensorboard=False).fit()
    assert calls == []  # an allocator already installed (maybe with the user's limits) is left as it is
