"""Old import paths of moved modules keep working for a while, with a ``DeprecationWarning``.

``import quickstudy.models.fused_block`` (or ``from quickstudy.models import fused_block``) gives the module
at its new place, ``quickstudy.kernels.fused_tail``, and says so once. One table, one import hook.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

__all__ = ["MOVED_MODULES", "install"]

#: old module path -> new module path
MOVED_MODULES = {
    "quickstudy.cpu_allocator": "quickstudy.kernels.cpu_allocator",
    "quickstudy.native": "quickstudy.kernels.native",
    "quickstudy.models.fused_block": "quickstudy.kernels.fused_tail",
    "quickstudy.models.lean_pool": "quickstudy.kernels.lean_pool",
    "quickstudy.models.gemm_conv": "quickstudy.kernels.gemm_conv",
    "quickstudy.models.batchnorm_grad": "quickstudy.kernels.batchnorm_grad",
    "quickstudy.algorithms.strategy": "quickstudy.algorithms.execution",
}


def moved(old: str, stacklevel: int = 3):
    """The module that ``old`` became, with a DeprecationWarning naming the new path."""
    new = MOVED_MODULES[old]
    warnings.warn(f"{old} has moved to {new}; the old path will be removed in a later release",
                  DeprecationWarning, stacklevel=stacklevel)
    return importlib.import_module(new)


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return moved(spec.name, stacklevel=8)

    def exec_module(self, module) -> None:  # the module is already executed at its new place
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader())
        return None


def install() -> None:
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
