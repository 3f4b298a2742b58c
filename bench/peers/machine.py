"""The machine and the device of a benchmark run: CPU and GPU facts for the JSON, and how float32 runs on CUDA."""

from __future__ import annotations

import os
import platform
import sys

import torch

#: how float32 runs on CUDA in every worker (bench/speed.py --device cuda): the exact mode, no TF32
FLOAT32_MODE = ("exact float32: TF32 off for cuBLAS and cuDNN (torch.backends.cuda.matmul.allow_tf32 = False, "
                "torch.backends.cudnn.allow_tf32 = False)")


def precision_flags() -> dict:
    """The float32 precision switches of torch as they are now (each read on its own: some do not exist in
    every torch version, and reading a legacy flag after a mix of legacy and new API calls can raise)."""
    readers = {
        "cuda.matmul.allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
        "cuda.matmul.fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
        "cudnn.conv.fp32_precision": lambda: torch.backends.cudnn.conv.fp32_precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision,
        "cudnn.benchmark": lambda: torch.backends.cudnn.benchmark,
        "cudnn.deterministic": lambda: torch.backends.cudnn.deterministic,
    }
    flags = {}
    for name, read in readers.items():
        try:
            value = read()
            flags[name] = value if isinstance(value, (bool, int, float, str)) or value is None else str(value)
        except Exception as error:  # noqa: BLE001 - recorded, never fatal
            flags[name] = f"unreadable: {type(error).__name__}: {error}"
    return flags


def setup_device(device: str) -> dict:
    """Prepare this process for ``device``; returns what to record in the JSON ({} on the CPU: nothing changes).

    CUDA: refuses to go on without a GPU, and turns TF32 off for cuBLAS matmuls and cuDNN convolutions
    (``FLOAT32_MODE``; cuDNN's TF32 is on by default), so every float32 number is the exact float32 one on
    every library. Only the legacy ``allow_tf32`` switches are set (mixing them with the newer
    ``fp32_precision`` API raises in some torch versions); both are read back into the result (a switch that
    does not read back False is a ``tf32_warning``, not an error: roofs.py checks float32 numerically).
    """
    if device != "cuda":
        return {}
    if not torch.cuda.is_available():
        raise RuntimeError(f"--device cuda but torch.cuda.is_available() is False (torch {torch.__version__}, "
                           f"built for CUDA {torch.version.cuda})")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    flags = precision_flags()
    info = {"float32_mode": FLOAT32_MODE, "precision_flags": flags}
    if flags.get("cuda.matmul.allow_tf32") is not False or flags.get("cudnn.allow_tf32") is not False:
        # recorded, not fatal: the roofs measure whether float32 is exact (float32_check)
        info["tf32_warning"] = "the TF32 switches did not read back as False"
        print(f"WARNING: TF32 switches read back as {flags}", file=sys.stderr)
    return info


def synchronizer(device: str):
    """``torch.cuda.synchronize`` on CUDA (the timers must wait for the queued kernels), else ``None``."""
    return torch.cuda.synchronize if device == "cuda" else None


def gpu_memory_mib() -> dict:
    """The CUDA caching allocator's counters of this process, MiB (allocated = live tensors)."""
    return {"allocated": torch.cuda.memory_allocated() / 2**20, "max_allocated": torch.cuda.max_memory_allocated() / 2**20,
            "reserved": torch.cuda.memory_reserved() / 2**20, "max_reserved": torch.cuda.max_memory_reserved() / 2**20}


def nvidia_smi() -> dict:
    """GPU name, driver, memory and clocks from ``nvidia-smi`` (does not initialize CUDA; {} without it)."""
    import subprocess

    fields = ("name", "driver_version", "memory.total", "clocks.max.sm", "power.limit", "pci.bus_id")
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    gpus = [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.stdout.strip().splitlines()]
    return {"nvidia_smi": gpus}


def gpu_info(init_cuda: bool = True) -> dict:
    """torch's CUDA/cuDNN versions, and (``init_cuda``) the GPU's name and properties as torch sees them."""
    info = {"torch_cuda": torch.version.cuda}
    try:
        info["cudnn"] = torch.backends.cudnn.version() if init_cuda else None
    except Exception:  # noqa: BLE001
        info["cudnn"] = None
    if init_cuda and torch.cuda.is_available():
        try:
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            info.update(gpu_name=props.name, gpu_capability=f"{props.major}.{props.minor}",
                        gpu_memory_mib=props.total_memory / 2**20,
                        gpu_multiprocessors=getattr(props, "multi_processor_count", None),
                        gpu_count=torch.cuda.device_count())
        except Exception as error:  # noqa: BLE001
            info["gpu_error"] = f"{type(error).__name__}: {error}"
    info.update(nvidia_smi())
    if "gpu_name" not in info and info.get("nvidia_smi"):
        info["gpu_name"] = info["nvidia_smi"][0].get("name")
    return info


def machine_info(device: str = "cpu", init_cuda: bool = True) -> dict:
    """CPU, interpreter and torch of this machine; with ``device="cuda"`` also the GPU (:func:`gpu_info`)."""
    model = flags = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name") and not model:
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")
    info = {"cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_flags": [f for f in wanted if f in flags.split()],
            "python": platform.python_version(), "torch": torch.__version__,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if device != "cpu":
        info["device"] = device
    if device == "cuda":
        info.update(gpu_info(init_cuda))
    return info


