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
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

#: top-level modules learn2learn 0.2.0 imports outside torch/numpy/stdlib (grep of its sources)
LEARN2LEARN_OPTIONAL = ("torchvision", "gym", "scipy", "requests", "tqdm", "PIL", "qpth")


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
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, fullname, path, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []  # a package: submodules resolve through this finder too
        module.__version__ = "0.0.0+stub"
        return module

    def exec_module(self, module):
        pass


def install_learn2learn_stubs(roots=LEARN2LEARN_OPTIONAL) -> list[str]:
    """Stub the modules of ``roots`` that cannot be imported for real; return the names stubbed."""
    missing = [name for name in roots if name not in sys.modules and importlib.util.find_spec(name) is None]
    if missing:
        sys.meta_path.append(_StubFinder(missing))
    return missing
