"""What every benchmark worker shares: the cells, the synthetic Omniglot-shaped data, the user's model every
library runs, the timing loop, FLOP counting and peak memory.

The user's model is the one a user writes with standard torch layers: ``quickstudy.models.conv4_sequential``
(an ``nn.Sequential`` of ``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``; quickstudy is installed in the
peers' venv without its dependencies, so every worker builds the same module) or :func:`user_resnet12`.
Nothing else of quickstudy is used here: the peers' rows measure the peers.

The same work for every library
-------------------------------
* Data: one fixed meta-batch drawn from ``torch.Generator().manual_seed(seed)``: support images
  ``[B, N*K, 1, 28, 28]`` and query images ``[B, N*Q, 1, 28, 28]`` uniform in [0, 1), labels
  ``0..N-1`` each repeated K (Q) times. Every timed meta-step uses that batch.
* Model: Conv4 = 4 x [3x3 conv 64 (padding 1), batch norm, ReLU, 2x2 max-pool] -> 64 features ->
  linear head (N outputs; no head for ProtoNet): ``conv4_sequential``, with ``nn.BatchNorm2d(64,
  track_running_stats=False)``: batch statistics in training and evaluation alike, which is the same
  maths as quickstudy's default ``TaskBatchNorm2d(policy="transductive")`` (eps 1e-5, biased variance)
  and no running-statistics update for anyone. The ``resnet12-*`` cells run :func:`user_resnet12` instead.
  Every worker starts from the same weights: :func:`reference_state` (seeded init of the user's model),
  copied in parameter order into each library's model.
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
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quickstudy.models import conv4_sequential

from bench.peers.machine import (FLOAT32_MODE, gpu_info, gpu_memory_mib, machine_info, nvidia_smi,  # noqa: F401
                                 precision_flags, setup_device, synchronizer)

# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One benchmark configuration."""

    name: str
    algo: str  # "maml", "protonet", "reptile", "imaml", "matchingnet" (full-context embeddings) or "relationnet"
    shots: int
    steps: int = 0  # inner steps (MAML, Reptile)
    first_order: bool = False
    ways: int = 5
    queries: int = 15  # per class
    meta_batch: int = 32
    inner_lr: float = 0.4  # MAML: SGD step size; Reptile: inner Adam lr
    outer_lr: float = 1e-3
    model: str = "conv4"  # the user's model: "conv4" (conv4_sequential) or "resnet12" (user_resnet12)
    lam: float = 2.0  # iMAML: the proximal weight of the inner objective L_S(phi) + lam/2 ||phi - theta||^2
    cg_steps: int = 5  # iMAML: conjugate-gradient iterations of the implicit meta-gradient

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

# iMAML (Rajeswaran et al. 2019) as TorchOpt's Omniglot example runs it: inner SGD of 0.1 on the proximal objective
# (lam 2) from theta, 5 CG iterations for (I + H / lam) v = grad L_Q; 5 and 16 (the paper's Omniglot) inner steps
for _steps in (5, 16):
    CELLS[f"imaml-1shot-{_steps}step"] = Cell(f"imaml-1shot-{_steps}step", "imaml", 1, _steps, inner_lr=0.1)

# Matching Networks with full-context embeddings (K = support size attention steps), query unnormalised: easyfsl's
CELLS["matchingnet-fce-1shot"] = Cell("matchingnet-fce-1shot", "matchingnet", 1)
# Relation Networks on Conv4 feature maps (max-pool in the first two blocks only: 64 x 7 x 7), relation module of
# two conv blocks and 64 -> 8 -> 1, mean squared error on the one-hot targets
CELLS["relationnet-1shot"] = Cell("relationnet-1shot", "relationnet", 1)

# A user's ResNet-12 (widths RESNET12_CHANNELS): MAML 1-shot, 1 inner step, on a smaller meta-batch (a task
# costs ~25 Conv4 tasks)
for _fo in (False, True):
    _c = _maml(1, 1, _fo)
    CELLS["resnet12-" + _c.name] = _c.replace(name="resnet12-" + _c.name, model="resnet12", meta_batch=4)

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


#: widths of the user's ResNet-12 in the resnet12-* cells (MetaOptNet's are 64, 160, 320, 640; narrower here so
#: that a CPU meta-step takes seconds)
RESNET12_CHANNELS = (64, 128, 256, 512)


class UserResNetBlock(nn.Module):
    """A ResNet-12 block as a user writes it: three 3x3 convs with batch norm, LeakyReLU(0.1) after the first two,
    a 1x1 conv + batch norm shortcut, the sum, LeakyReLU, 2x2 max-pool (parameters in the order of
    ``quickstudy.models.ResNet12``'s block, so the same weights load into both)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        norm = lambda: nn.BatchNorm2d(cout, track_running_stats=False)  # noqa: E731 - batch statistics
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm()
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm()
        self.conv3, self.bn3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm()
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm())
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.shortcut(x)))


class UserResNet12(nn.Module):
    def __init__(self, ways: int | None, channels=RESNET12_CHANNELS, in_channels: int = 1) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        for cout in channels:
            blocks.append(UserResNetBlock(cin, cout))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, ways) if ways is not None else None

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        return self.head(x) if self.head is not None else x


def user_model(model: str, ways: int | None) -> nn.Module:
    """The model every library runs for a cell's ``model``: ``conv4_sequential`` or :class:`UserResNet12`."""
    if model == "conv4":
        return conv4_sequential(in_channels=1, ways=ways)
    if model == "resnet12":
        return UserResNet12(ways)
    raise ValueError(f"unknown model {model!r}")


def reference_state(ways: int | None, seed: int = 0, model: str = "conv4") -> list[torch.Tensor]:
    """The initial weights every worker starts from, in parameter order (conv w, b, bn w, b, ... head w, b)."""
    torch.manual_seed(seed)
    return [p.detach().clone() for p in user_model(model, ways).parameters()]


def load_reference(module: nn.Module, ways: int | None, seed: int = 0, model: str = "conv4") -> nn.Module:
    """Copy :func:`reference_state` into ``module``'s parameters (same order and shapes, checked)."""
    params = list(module.parameters())
    ref = reference_state(ways, seed, model)
    if len(params) != len(ref) or any(p.shape != r.shape for p, r in zip(params, ref)):
        raise RuntimeError(f"{type(module).__name__}: parameters {[tuple(p.shape) for p in params]} do not match "
                           f"the reference {model} {[tuple(r.shape) for r in ref]}")
    with torch.no_grad():
        for p, r in zip(params, ref):
            p.copy_(r)
    return module


def reference_model(cell: "Cell", ways: int | None, flatten: bool = True) -> nn.Module:
    """The user's model of ``cell`` with the reference weights (what the peers and the user rows run).

    Relation Networks (``cell.algo == "relationnet"``): ``conv4_sequential`` without the last two max-pools, so
    the features are 64 x 7 x 7 maps (flattened unless ``flatten=False``); the same parameters as Conv4's.
    """
    if cell.algo == "relationnet":
        layers = list(conv4_sequential(in_channels=1, ways=None))
        pools = [i for i, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
        flat = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten) and not flatten]
        drop = set(pools[2:]) | set(flat)
        return load_reference(nn.Sequential(*(l for i, l in enumerate(layers) if i not in drop)), None)
    return load_reference(user_model(cell.model, ways), ways, model=cell.model)


def conv4_functional(params: list[torch.Tensor], x: torch.Tensor, bn=None) -> torch.Tensor:
    """``conv4_sequential`` written with ``torch.nn.functional`` on its flat parameter list (the same parameters,
    in its order), for the workers that need a function of a list of tensors (the plain loop, vmap).

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
    """Batch norm from primitive ops (mean, biased variance): exact under vmap (pytorch/functorch#534)."""
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

    Every thread is profiled (``profile_all_threads``): under quickstudy's threads strategy the tasks' forward
    and backward passes run on worker threads, which torch.profiler's default does not record. ``op_share`` =
    (sum of the self CPU time of all profiled ops, over all threads) / (wall time under the profiler): about
    the number of cores kept busy in aten ops; the rest of the wall time x cores is spent outside aten ops
    (Python, autograd engine bookkeeping, waiting, the profiler).
    """
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

    every_thread = _ExperimentalConfig(profile_all_threads=True)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, experimental_config=every_thread) as prof:
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
        handle.write(f"wall under profiler: {wall * 1e3:.1f} ms; sum of self CPU time of ops over all threads: "
                     f"{self_total_us / 1e3:.1f} ms ({self_total_us / 1e6 / wall:.2f} cores busy in ops)\n\n")
        handle.write(table)
        handle.write("\n\nby input shape:\n")
        handle.write(by_shape)
    return {"profile_wall_s": wall, "ops_self_cpu_s": self_total_us / 1e6, "op_share": self_total_us / 1e6 / wall,
            "ops_total": sum(e.count for e in averages),
            "top": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in top]}


def emit(result: dict) -> None:
    """The worker's one machine-readable line (the driver reads the last line starting with RESULT)."""
    print("RESULT " + json.dumps(result), flush=True)
