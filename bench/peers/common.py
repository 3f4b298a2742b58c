"""What every benchmark worker shares: the cells, the synthetic Omniglot-shaped data, the reference
Conv4 with ``nn.BatchNorm2d``, the timing loop, FLOP counting and peak memory.

Self-contained on purpose (torch + stdlib only): the peer workers run in ``.peers/venv``, where
quickstudy is not installed. Only ``quickstudy_worker.py`` imports quickstudy.

The same work for every library
-------------------------------
* Data: one fixed meta-batch drawn from ``torch.Generator().manual_seed(seed)``: support images
  ``[B, N*K, 1, 28, 28]`` and query images ``[B, N*Q, 1, 28, 28]`` uniform in [0, 1), labels
  ``0..N-1`` each repeated K (Q) times. Every timed meta-step uses that batch.
* Model: Conv4 = 4 x [3x3 conv 64 (padding 1), batch norm, ReLU, 2x2 max-pool] -> 64 features ->
  linear head (N outputs; no head for ProtoNet). The peers use ``nn.BatchNorm2d(64,
  track_running_stats=False)``: batch statistics in training and evaluation alike, which is the same
  maths as quickstudy's default ``TaskBatchNorm2d(policy="transductive")`` (eps 1e-5, biased variance)
  and no running-statistics update for anyone. Every worker starts from the same weights:
  :func:`reference_state` (seeded init), copied in parameter order into each library's model.
* One meta-step = ``zero_grad`` + the library's meta-gradient for the B tasks (per-task backward of
  ``loss_i / B`` unless stated) + ``Adam(lr=1e-3).step()``. tasks/s = B / median meta-step time.
* Device: the batch is drawn on the CPU and moved to ``--device`` (cpu or cuda); every worker puts its
  model where the batch is (``batch[0].device``). On CUDA, :func:`setup_device` turns TF32 off (exact
  float32 everywhere) and the timers wait for ``torch.cuda.synchronize()`` (:func:`time_steps`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One benchmark configuration."""

    name: str
    algo: str  # "maml", "protonet" or "reptile"
    shots: int
    steps: int = 0  # inner steps (MAML, Reptile)
    first_order: bool = False
    ways: int = 5
    queries: int = 15  # per class
    meta_batch: int = 32
    inner_lr: float = 0.4  # MAML: SGD step size; Reptile: inner Adam lr
    outer_lr: float = 1e-3

    def replace(self, **changes) -> "Cell":
        return Cell(**{**asdict(self), **changes})

    def with_meta_batch(self, meta_batch: int) -> "Cell":
        return self.replace(meta_batch=meta_batch)


def _maml(shots, steps, first_order):
    order = "1st" if first_order else "2nd"
    return Cell(f"maml-{shots}shot-{steps}step-{order}", "maml", shots, steps, first_order)


CELLS: dict[str, Cell] = {}
for _shots in (1, 5):
    for _steps in (1, 5):
        for _fo in (False, True):
            _c = _maml(_shots, _steps, _fo)
            CELLS[_c.name] = _c
for _shots in (1, 5):
    CELLS[f"protonet-{_shots}shot"] = Cell(f"protonet-{_shots}shot", "protonet", _shots)
    # Reptile: 5 inner Adam steps (lr 1e-3, betas (0, 0.999)) on the support set, as quickstudy's default
    CELLS[f"reptile-{_shots}shot-5step"] = Cell(f"reptile-{_shots}shot-5step", "reptile", _shots, 5, True,
                                                inner_lr=1e-3)

#: the rows of the issue's table, then ProtoNet and Reptile (1-shot): the default of bench/speed.py
TABLE_CELLS = ["maml-1shot-1step-2nd", "maml-1shot-1step-1st", "maml-1shot-5step-2nd", "maml-5shot-1step-2nd",
               "protonet-1shot", "reptile-1shot-5step"]


def select_cells(spec: str) -> list[str]:
    """``"table"`` (default set), ``"all"``, or comma-separated names / fnmatch patterns."""
    if spec == "table":
        return list(TABLE_CELLS)
    if spec == "all":
        return list(CELLS)
    names = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        hits = [n for n in CELLS if fnmatch.fnmatchcase(n, part)]
        if not hits:
            raise SystemExit(f"unknown cell {part!r}; known: {', '.join(CELLS)}")
        names += [h for h in hits if h not in names]
    return names


# ----------------------------------------------------------------------------- data


def make_batch(cell: Cell, seed: int = 0, dtype: torch.dtype = torch.float32, device=None):
    """``(support_x, support_y, query_x, query_y)`` of the fixed synthetic meta-batch.

    Always drawn on the CPU (the same numbers on every device), then moved to ``device`` if given: the
    workers take their device from ``batch[0].device`` and put the model there too.
    """
    gen = torch.Generator().manual_seed(seed)
    b, n, k, q = cell.meta_batch, cell.ways, cell.shots, cell.queries
    support_x = torch.rand(b, n * k, 1, 28, 28, generator=gen).to(dtype)
    query_x = torch.rand(b, n * q, 1, 28, 28, generator=gen).to(dtype)
    support_y = torch.arange(n).repeat_interleave(k).repeat(b, 1)
    query_y = torch.arange(n).repeat_interleave(q).repeat(b, 1)
    if device is not None:
        return tuple(t.to(device) for t in (support_x, support_y, query_x, query_y))
    return support_x, support_y, query_x, query_y


# ----------------------------------------------------------------------------- model


class Conv4BN(nn.Module):
    """The peers' Conv4: 4 x [conv3x3(64, pad 1), BatchNorm2d(track_running_stats=False), ReLU, max-pool 2]."""

    def __init__(self, ways: int | None = 5, hidden: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            layers += [nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden, track_running_stats=False),
                       nn.ReLU(), nn.MaxPool2d(2)]
            channels = hidden
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, ways) if ways is not None else None

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.head(x) if self.head is not None else x


def reference_state(ways: int | None, seed: int = 0) -> list[torch.Tensor]:
    """The initial weights every worker starts from, in parameter order (conv w, b, bn w, b, ... head w, b)."""
    torch.manual_seed(seed)
    return [p.detach().clone() for p in Conv4BN(ways).parameters()]


def load_reference(module: nn.Module, ways: int | None, seed: int = 0) -> nn.Module:
    """Copy :func:`reference_state` into ``module``'s parameters (same order and shapes, checked)."""
    params = list(module.parameters())
    ref = reference_state(ways, seed)
    if len(params) != len(ref) or any(p.shape != r.shape for p, r in zip(params, ref)):
        raise RuntimeError(f"{type(module).__name__}: parameters {[tuple(p.shape) for p in params]} do not match "
                           f"the reference Conv4 {[tuple(r.shape) for r in ref]}")
    with torch.no_grad():
        for p, r in zip(params, ref):
            p.copy_(r)
    return module


def conv4_functional(params: list[torch.Tensor], x: torch.Tensor, bn=None) -> torch.Tensor:
    """Conv4 written with ``torch.nn.functional`` on a flat parameter list (reference order).

    ``bn`` defaults to the native ``F.batch_norm`` in training mode without running statistics.
    """
    bn = bn or (lambda h, w, b: F.batch_norm(h, None, None, w, b, training=True, eps=1e-5))
    for i in range(4):
        cw, cb, bw, bb = params[4 * i: 4 * i + 4]
        x = F.max_pool2d(F.relu(bn(F.conv2d(x, cw, cb, padding=1), bw, bb)), 2)
    x = x.flatten(1)
    if len(params) > 16:
        x = F.linear(x, params[16], params[17])
    return x


def primitive_batch_norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Batch norm from primitive ops (mean, biased variance): exact under vmap (DESIGN.md, Pitfalls)."""
    mean = h.mean(dim=(0, 2, 3), keepdim=True)
    centred = h - mean
    var = (centred * centred).mean(dim=(0, 2, 3), keepdim=True)
    return centred * torch.rsqrt(var + eps) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)


def proto_logits(support_emb, support_y, query_emb, ways):
    """-squared Euclidean distance of each query embedding to the class means of the support set."""
    onehot = F.one_hot(support_y, ways).to(support_emb.dtype)
    protos = onehot.t() @ support_emb / onehot.sum(0).unsqueeze(-1)
    return -(query_emb.unsqueeze(1) - protos).pow(2).sum(-1)


# ----------------------------------------------------------------------------- measurement


def rss_mib() -> float:
    """Current resident set size (from /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def time_steps(step, warmup: int, steps: int, sync=None, after_warmup=None, max_timed_s: float | None = None,
               min_steps: int = 3) -> dict:
    """Run ``step`` ``warmup`` times untimed, then ``steps`` times timed (wall and process CPU time, and the
    minor page faults per step: fresh pages from the kernel, expensive in these VMs, ~2.5 us each).

    ``sync`` (CUDA: ``torch.cuda.synchronize``) is called after the warm-up and after every timed step,
    before its clocks are read, so a step's time includes its queued GPU work. ``after_warmup`` is called
    once between warm-up and timing (the CUDA workers reset the peak-memory counter there).
    ``max_timed_s``: stop timing once the timed steps add up to that many seconds and at least ``min_steps``
    were timed (the GPU run's time budget; ``None``: always ``steps``).
    """
    for _ in range(warmup):
        step()
    if sync is not None:
        sync()
    if after_warmup is not None:
        after_warmup()
    wall, cpu = [], []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        if sync is not None:
            sync()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
        if max_timed_s is not None and len(wall) >= min_steps and sum(wall) >= max_timed_s:
            break
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / max(len(wall), 1)
    return {"wall_s": wall, "cpu_s": cpu, "median_s": statistics.median(wall), "min_s": min(wall),
            "median_cpu_s": statistics.median(cpu), "minor_faults_per_step": faults}


def count_flops(step) -> int | None:
    """FLOPs of one call of ``step`` by ``torch.utils.flop_counter.FlopCounterMode`` (None if it fails)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter:
            step()
        return int(counter.get_total_flops())
    except Exception as error:  # e.g. a transform the counter does not see through
        print(f"flop counting failed: {type(error).__name__}: {error}", file=sys.stderr)
        return None


def profile_step(step, path: str, rows: int = 30, sync=None) -> dict:
    """torch.profiler over one ``step``: writes the op table (by self CPU time) to ``path``; returns a summary.

    ``op_share`` = (sum of the self CPU time of all profiled ops) / (wall time under the profiler): the
    rest of the wall time is spent outside aten ops (Python, autograd engine bookkeeping, the profiler).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        step()
        if sync is not None:
            sync()
        wall = time.perf_counter() - t0
    averages = prof.key_averages()
    self_total_us = sum(e.self_cpu_time_total for e in averages)
    table = averages.table(sort_by="self_cpu_time_total", row_limit=rows)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)
    top = sorted(averages, key=lambda e: -e.self_cpu_time_total)[:rows]
    with open(path, "w") as handle:
        handle.write(f"wall under profiler: {wall * 1e3:.1f} ms; sum of self CPU time of ops: "
                     f"{self_total_us / 1e3:.1f} ms ({100 * self_total_us / 1e6 / wall:.0f}%)\n\n")
        handle.write(table)
        handle.write("\n\nby input shape:\n")
        handle.write(by_shape)
    return {"profile_wall_s": wall, "ops_self_cpu_s": self_total_us / 1e6, "op_share": self_total_us / 1e6 / wall,
            "ops_total": sum(e.count for e in averages),
            "top": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top]}


# ----------------------------------------------------------------------------- devices

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


def emit(result: dict) -> None:
    """The worker's one machine-readable line (the driver reads the last line starting with RESULT)."""
    print("RESULT " + json.dumps(result), flush=True)
