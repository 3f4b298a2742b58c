"""Empty stand-ins for the modules ``import learn2learn`` pulls in but the benchmark never uses.

learn2learn 0.2.0's ``__init__`` imports every subpackage (vision, gym, text, data), which import
torchvision, gym, scipy, requests, tqdm, PIL and qpth at module level. The benchmark only uses
``learn2learn.algorithms.MAML`` (clone/adapt), which needs torch alone; there is no CPU torchvision
build for torch 2.13 on these machines and installing gym & co. would bring nothing but risk
(an unpinned torch). So, *only for the modules that are not importable*, a finder hands out
placeholder modules: any attribute is a placeholder class that can be subclassed, called or
decorated with, and any submodule is another placeholder module. Nothing of them is ever run by
the benchmark (a call on a placeholder returns another placeholder; no number depends on it).

    import _stubs; _stubs.install_learn2learn_stubs(); import learn2learn

Two more cases, for machines where learn2learn is set up offline (bench/peers/setup_offline.sh):

* ``learn2learn.data.{meta_dataset,task_dataset,transforms}`` are Cython extensions. Where they could not
  be built (no compiler: the pure-Python package tree was copied in), they are stubbed too; the finder is
  the last on ``sys.meta_path``, so a built extension always wins.
* Where the optional modules *are* installed (torchvision, scipy, ... on a GPU machine) but ``import
  learn2learn`` fails with them (a version learn2learn 0.2.0 does not know), the worker calls
  ``install_learn2learn_stubs(force=True)``: it forgets every module of those packages and of
  learn2learn imported so far and stubs all of them, installed or not, before importing learn2learn again.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

#: top-level modules learn2learn 0.2.0 imports outside torch/numpy/stdlib (grep of its sources)
LEARN2LEARN_OPTIONAL = ("torchvision", "gym", "scipy", "requests", "tqdm", "PIL", "qpth")
#: learn2learn's Cython extensions (stubbed only when no built module is found)
LEARN2LEARN_EXTENSIONS = ("learn2learn.data.meta_dataset", "learn2learn.data.task_dataset",
                          "learn2learn.data.transforms")


class _Placeholder:
    """Stands for any class/function of a stubbed module."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()

    def __iter__(self):
        return iter(())


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (_Placeholder,), {"__module__": self.__name__})
        setattr(self, name, placeholder)
        return placeholder


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots, exact=()):
        self.roots = set(roots)
        self.exact = set(exact)
        self.used: list[str] = []

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots or fullname in self.exact:
            if fullname in self.exact:
                self.used.append(fullname)
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package: submodules resolve through this finder too
        module.__version__ = "0.0.0+stub"
        return module

    def exec_module(self, module):
        pass


_EXTENSION_FINDER = _StubFinder((), LEARN2LEARN_EXTENSIONS)


def install_learn2learn_stubs(roots=LEARN2LEARN_OPTIONAL, force: bool = False) -> list[str]:
    """Stub the modules of ``roots`` that cannot be imported for real; return the names stubbed.

    ``force``: stub every one of ``roots``, importable or not, after dropping them (and learn2learn) from
    ``sys.modules``: the retry after a failed ``import learn2learn``.
    """
    if _EXTENSION_FINDER not in sys.meta_path:
        sys.meta_path.append(_EXTENSION_FINDER)  # last: only where no built extension is found
    if force:
        # Cython extensions cannot be initialised twice in a process: the ones already loaded stay (their
        # module-level reference to the first, failed learn2learn is never used by the benchmark).
        drop = set(roots) | {"learn2learn"}
        for name in [m for m in sys.modules if m.split(".")[0] in drop and m not in LEARN2LEARN_EXTENSIONS]:
            del sys.modules[name]
        sys.meta_path[:] = [f for f in sys.meta_path if not (isinstance(f, _StubFinder) and f is not _EXTENSION_FINDER)]
        sys.meta_path.insert(0, _StubFinder(roots))
        importlib.invalidate_caches()
        return list(roots)
    missing = [name for name in roots if name not in sys.modules and importlib.util.find_spec(name) is None]
    if missing:
        sys.meta_path.append(_StubFinder(missing))
    return missing


def stubbed_extensions() -> list[str]:
    """learn2learn's Cython extensions that were stubbed (not built on this machine)."""
    return sorted(set(_EXTENSION_FINDER.used))
