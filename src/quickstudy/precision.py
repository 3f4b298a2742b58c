"""Numeric precision in one place: autocast regions, the bfloat16 probe and the CPU allocator switch.

``precision="float32"`` (exact, the default) or ``"bfloat16"``: the meta-gradient is computed under
``torch.autocast(device, bfloat16)`` (convolutions and matrix products in bfloat16; batch-norm statistics,
losses, weights and the optimizer in float32). The trainer enters :func:`autocast_context`; execution
strategies that run tasks on worker threads re-enter the caller's region there (:func:`autocast_state`,
:func:`enter_autocast`: autocast is thread-local in torch); inner loops whose weights are fresh or in-place
updated leaves turn the cast cache off (:func:`uncached_autocast`). Used by ``training`` and ``algorithms``
alike, so it depends on torch only.
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from typing import Iterator

import torch

__all__ = ["PRECISIONS", "autocast_context", "autocast_state", "enter_autocast", "uncached_autocast",
           "cpu_has_fast_bfloat16", "enable_cpu_caching_allocator"]

PRECISIONS = ("float32", "bfloat16")


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bfloat16 for ``precision="bfloat16"``, else a no-op context."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_state() -> list[tuple[str, torch.dtype]]:
    """The autocast regions active in this thread, as ``(device_type, dtype)`` pairs."""
    return [(device, torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
            if torch.is_autocast_enabled(device)]


def enter_autocast(stack: contextlib.ExitStack, state: list[tuple[str, torch.dtype]]) -> None:
    """Re-enter, on ``stack``, regions captured by :func:`autocast_state` (in a worker thread)."""
    for device_type, dtype in state:
        stack.enter_context(torch.autocast(device_type, dtype=dtype))


@contextlib.contextmanager
def uncached_autocast() -> Iterator[None]:
    """Within an autocast region, stop caching casts. Autocast keeps the cast of every leaf that requires grad
    until the region ends. A first-order inner step's parameters are such leaves, made afresh each step: under
    bfloat16 the cache held every step's weights of every task of the meta-batch. Reptile's are leaves updated
    in place by its inner optimizer: the cache served the first step's cast to every later step."""
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False))
        yield


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX-512 BF16 or AMX). Without them torch emulates
    bfloat16 products, several times slower than float32 (docs/bench). True where it cannot tell (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: True)() for probe in probes)


def enable_cpu_caching_allocator(owner: str = "Trainer") -> None:
    """Install :func:`quickstudy.kernels.cpu_allocator.enable_caching_allocator` unless one is installed (a user's
    limits are kept); without a compiler to build it, warn and go on with torch's allocator."""
    from .kernels.cpu_allocator import CompilerNotFoundError, caching_allocator_enabled, enable_caching_allocator

    if caching_allocator_enabled():
        return
    try:
        enable_caching_allocator()
    except (CompilerNotFoundError, RuntimeError, OSError) as error:
        warnings.warn(f"{owner}: training without the caching CPU allocator: {error}", RuntimeWarning, stacklevel=3)
