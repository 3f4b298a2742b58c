"""A caching allocator for CPU tensors: fewer page faults and a resident set near the live peak.

CUDA PyTorch caches freed blocks; CPU PyTorch hands every tensor to glibc's ``malloc``, and a
meta-training step allocates and frees the same few dozen 1-16 MB activations and gradients
thousands of times. glibc then either returns them to the kernel, so each reuse faults its pages
in again (5,000-13,000 faults per MAML task on Conv4, about 2.5 us each here), or, once its
dynamic mmap threshold has risen, keeps them in per-thread arenas where they fragment (150-250 MiB
of resident, unusable memory with two worker threads).

:func:`enable_caching_allocator` installs a size-class caching allocator
(``csrc/caching_cpu_allocator.cpp``) through ``c10::SetCPUAllocator``: blocks of 64 KiB and more
are mapped directly, rounded to 8 classes per power of two, and on free wait in their class's free
list for the next request of up to ``max_reuse_ratio`` times smaller; above ``max_cached_bytes``
of idle blocks a freed block goes back to the kernel. Smaller requests still go to ``malloc``.

The library is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``)
against the installed torch's headers, about 2 s, and kept in the cache directory
(``$QUICKSTUDY_CACHE/native``) keyed by the torch version and the source. Tensor values are
unchanged (the allocator only decides where bytes live); ``torch.profiler``'s CPU memory events are
not reported while it is installed. It cannot be uninstalled: tensors allocated by it keep using it.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import dataclass

from .native import CompilerNotFoundError, build_library, source_path

__all__ = [
    "CachingAllocatorStats",
    "CompilerNotFoundError",
    "caching_allocator_enabled",
    "caching_allocator_stats",
    "empty_cache",
    "enable_caching_allocator",
    "reset_peak_stats",
]

_SOURCE = source_path("caching_cpu_allocator.cpp")
_LOCK = threading.Lock()
_LIBRARY: ctypes.CDLL | None = None


@dataclass(frozen=True)
class CachingAllocatorStats:
    """Bytes in blocks of 64 KiB and more (smaller tensors are not counted)."""

    live_bytes: int  # held by tensors now
    peak_live_bytes: int
    cached_bytes: int  # freed, kept for reuse
    peak_reserved_bytes: int  # peak of live + cached: what the allocator added to the resident set
    hits: int  # requests served from the cache
    misses: int  # requests that mapped fresh memory
    unmapped: int  # blocks returned to the kernel (cap exceeded or empty_cache)


def enable_caching_allocator(max_cached_bytes: int = 1 << 30, max_reuse_ratio: float = 4.0) -> bool:
    """Route every later CPU tensor allocation through the caching allocator.

    ``max_cached_bytes`` caps the idle blocks kept for reuse (freed blocks beyond it go back to the
    kernel); ``max_reuse_ratio`` lets a cached block serve a request up to that many times smaller,
    which trades a little slack per tensor for far fewer distinct blocks. Returns ``True`` when it
    was installed by this call, ``False`` when it already was (the limits are then updated).
    Raises :class:`CompilerNotFoundError` when there is no C++ compiler to build it with, and
    ``RuntimeError`` on platforms other than Linux/macOS.
    """
    global _LIBRARY
    if max_cached_bytes < 0:
        raise ValueError(f"max_cached_bytes must be >= 0, got {max_cached_bytes}")
    if max_reuse_ratio < 1.0:
        raise ValueError(f"max_reuse_ratio must be >= 1, got {max_reuse_ratio}")
    if not sys.platform.startswith(("linux", "darwin")):
        raise RuntimeError(f"the caching CPU allocator needs mmap (Linux or macOS), not {sys.platform}")
    with _LOCK:
        if _LIBRARY is None:
            library = ctypes.CDLL(str(build_library(_SOURCE, libraries=["c10"], flags=["-O2", "-std=c++17"])))
            library.qs_caching_allocator_install.argtypes = [ctypes.c_uint64, ctypes.c_double]
            library.qs_caching_allocator_install.restype = ctypes.c_int
            library.qs_caching_allocator_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
            library.qs_caching_allocator_stats.restype = ctypes.c_int
            library.qs_caching_allocator_empty_cache.restype = ctypes.c_uint64
            library.qs_caching_allocator_reset_peaks.restype = None
            _LIBRARY = library
        return bool(_LIBRARY.qs_caching_allocator_install(int(max_cached_bytes), float(max_reuse_ratio)))


def caching_allocator_enabled() -> bool:
    """Whether :func:`enable_caching_allocator` has installed the allocator in this process."""
    return _LIBRARY is not None


def caching_allocator_stats() -> CachingAllocatorStats | None:
    """Counters of the caching allocator, or ``None`` when it is not installed."""
    if _LIBRARY is None:
        return None
    values = (ctypes.c_uint64 * 7)()
    _LIBRARY.qs_caching_allocator_stats(values)
    return CachingAllocatorStats(*(int(value) for value in values))


def reset_peak_stats() -> None:
    """Restart the peak counters from the current live and cached bytes."""
    if _LIBRARY is not None:
        _LIBRARY.qs_caching_allocator_reset_peaks()


def empty_cache() -> int:
    """Return every idle cached block to the kernel; the number of bytes released (0 when off)."""
    return 0 if _LIBRARY is None else int(_LIBRARY.qs_caching_allocator_empty_cache())
