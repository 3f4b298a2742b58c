"""Build quickstudy's C++ sources (``csrc/``) into shared libraries on first use, and cache them.

The sources are compiled with the system C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``)
against the installed torch's headers and libraries, and kept in ``$QUICKSTUDY_CACHE/native`` under a
name keyed by the source, the flags, the torch version and ABI, the compiler and (for
``-march=native``) the CPU, so that a shared cache never hands one machine another's build.
``torch.utils.cpp_extension`` would do the same but imports setuptools (~5 MiB resident) and ninja.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ..data.paths import cache_dir

__all__ = ["CompilerNotFoundError", "build_library", "compiler", "source_path"]


class CompilerNotFoundError(RuntimeError):
    """No C++ compiler to build a native library with."""


def compiler() -> str:
    """The C++ compiler to use: ``$CXX``, else the first of ``c++``, ``g++``, ``clang++`` on ``PATH``."""
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise CompilerNotFoundError(
        "quickstudy's native code is compiled on first use and needs a C++ compiler: none of $CXX, "
        "c++, g++, clang++ was found (install one, e.g. `apt install g++`)"
    )


def source_path(name: str) -> Path:
    """Path of ``csrc/<name>`` inside the installed package."""
    return Path(__file__).parent / "csrc" / name


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_library(source: Path, libraries: list[str], flags: list[str]) -> Path:
    """Compile ``source`` into a shared library linked with torch's ``libraries`` (e.g. ``["c10"]``); its path.

    Raises :class:`CompilerNotFoundError` without a compiler and ``RuntimeError`` with the compiler's
    output when the build fails.
    """
    cxx = compiler()
    code = source.read_bytes()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    machine = _cpu_signature() if "-march=native" in flags else platform.machine()
    key = hashlib.sha256(code + f"{torch.__version__}|{abi}|{cxx}|{flags}|{libraries}|{machine}".encode())
    target = cache_dir("native") / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    torch_dir = Path(torch.__file__).parent
    torch_lib = torch_dir / "lib"
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [
            cxx, *flags, "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{torch_dir / 'include'}",
            str(source), f"-L{torch_lib}", *(f"-l{lib}" for lib in libraries), f"-Wl,-rpath,{torch_lib}",
            "-o", str(built),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building {source.name} failed:\n{' '.join(command)}\n{result.stderr}")
        os.replace(built, target)  # atomic: a concurrent build of the same key writes the same bytes
    return target
