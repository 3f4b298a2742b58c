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


def make_batch(cell: Cell, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``(support_x, support_y, query_x, query_y)`` of the fixed synthetic meta-batch."""
    gen = torch.Generator().manual_seed(seed)
    b, n, k, q = cell.meta_batch, cell.ways, cell.shots, cell.queries
    support_x = torch.rand(b, n * k, 1, 28, 28, generator=gen).to(dtype)
    query_x = torch.rand(b, n * q, 1, 28, 28, generator=gen).to(dtype)
    support_y = torch.arange(n).repeat_interleave(k).repeat(b, 1)
    query_y = torch.arange(n).repeat_interleave(q).repeat(b, 1)
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


def time_steps(step, warmup: int, steps: int) -> dict:
    """Run ``step`` ``warmup`` times untimed, then ``steps`` times timed (wall and process CPU time, and the
    minor page faults per step: fresh pages from the kernel, expensive in these VMs, ~2.5 us each)."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / max(steps, 1)
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


def profile_step(step, path: str, rows: int = 30) -> dict:
    """torch.profiler over one ``step``: writes the op table (by self CPU time) to ``path``; returns a summary.

    ``op_share`` = (sum of the self CPU time of all profiled ops) / (wall time under the profiler): the
    rest of the wall time is spent outside aten ops (Python, autograd engine bookkeeping, the profiler).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        step()
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


def machine_info() -> dict:
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
    return {"cpu_model": model or platform.processor(), "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_flags": [f for f in wanted if f in flags.split()],
            "python": platform.python_version(), "torch": torch.__version__,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def emit(result: dict) -> None:
    """The worker's one machine-readable line (the driver reads the last line starting with RESULT)."""
    print("RESULT " + json.dumps(result), flush=True)
