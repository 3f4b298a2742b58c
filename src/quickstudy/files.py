"""File helpers for scripts built on quickstudy (the benchmarks, a user's own tooling): atomic writes.

``atomic_write_text(path, text)`` writes a temporary file beside ``path``, fsyncs it and renames it over
``path``, so a reader never sees a half-written file; ``atomic_write(path)`` is the same for binary writes.
"""

from __future__ import annotations

from ._atomic import atomic_write, atomic_write_text

__all__ = ["atomic_write", "atomic_write_text"]
