"""Data-parallel meta-training on ``torch.distributed``: P processes share every meta-batch.

Process ``r`` of ``P`` (its *rank*) takes the contiguous share :func:`shard_bounds` of each meta-batch
(``B // P`` tasks, one more for the first ``B % P`` ranks: every task exactly once, whatever ``P``), runs
``meta_backward`` on it, and :meth:`DataParallel.average_gradients` turns the P local meta-gradients into the
gradient of the whole meta-batch::

    grad = sum_r (b_r / B) * grad_r          (grad_r: the mean over rank r's b_r tasks; one all-reduce)

which is the single-process gradient up to the order of the float additions. Every rank then takes the same
optimizer step from the same gradient, so the parameters stay identical; :meth:`DataParallel.check_in_sync`
compares a fingerprint of every parameter and buffer (exact: their bit patterns) across ranks and raises
:class:`ReplicasDivergedError` when they differ. The model is never wrapped in ``DistributedDataParallel``:
the meta-gradient of a functional inner loop is an ordinary ``.grad`` once ``meta_backward`` returns, and
averaging it explicitly is all data parallelism needs.

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), or from a group the caller initialised: gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validation import check_int
from ..tasks.batch import TaskBatch

__all__ = ["DataParallel", "ReplicasDivergedError", "shard_bounds", "launched_by_torchrun", "is_main_process"]

#: what torchrun sets for every process it starts (``env://`` initialisation reads them)
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_main_process() -> bool:
    """True on rank 0 of a distributed run and in a process that is not part of one: the process that writes
    shared files (run folder, checkpoints, results)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def shard_bounds(count: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``count`` items split over ``world_size`` ranks:
    ``count // world_size`` each, one more for the first ``count % world_size`` ranks."""
    base, extra = divmod(count, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class ReplicasDivergedError(RuntimeError):
    """The processes of a data-parallel run no longer hold the same parameters (a bug or a non-deterministic
    update): continuing would train P different models while logging one."""


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _fingerprint(tensors: Sequence[Tensor]) -> Tensor:
    """One int64 per tensor: a position-weighted sum of its bit patterns (equal bits <=> equal sums, in
    practice; exact, so no float reduction order can make equal tensors differ)."""
    sums = []
    views = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    for tensor in tensors:
        flat = tensor.detach().contiguous().reshape(-1)
        bits = flat.view(views[flat.element_size()]).to(torch.int64)
        weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 1021 + 1
        sums.append((bits * weights).sum())
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.int64)


def _running_stat_modules(module: nn.Module) -> list[nn.Module]:
    """Sub-modules whose training-mode forward writes buffers (running statistics of batch norm)."""
    found = []
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.training and sub.track_running_stats:
            found.append(sub)
        elif getattr(sub, "updates_running_stats", False) is True:
            found.append(sub)
    return found


class DataParallel:
    """This process's place in a data-parallel run, and the collectives the trainer and evaluation use.

    Build it with :meth:`setup` (initialises the process group from torchrun's environment when needed) or
    ``DataParallel()`` over a group the caller initialised. ``check_every``: compare the parameters across
    ranks every this many steps (:meth:`check_in_sync`; also before every checkpoint and at the end).
    """

    def __init__(self, check_every: int = 100) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("DataParallel: torch.distributed has no process group: launch with torchrun (which sets "
                             f"{', '.join(ENVIRONMENT)}) or call torch.distributed.init_process_group first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        # NCCL reduces CUDA tensors only; gloo reduces CPU tensors (and is what a CPU run uses)
        cuda = self.backend == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.check_every = check_int("DataParallel", "check_every", check_every)

    @classmethod
    def setup(cls, device: str | torch.device = "cpu", backend: str | None = None,
              check_every: int = 100) -> "DataParallel":
        """The process group of this run, initialised from torchrun's environment variables if no group exists
        yet (``backend``: ``"nccl"`` for a CUDA ``device``, ``"gloo"`` otherwise)."""
        if not (dist.is_available() and dist.is_initialized()):
            if not dist.is_available():
                raise ValueError("distributed training needs a torch built with torch.distributed")
            if not launched_by_torchrun():
                raise ValueError("distributed=True needs a process group: launch with torchrun --nproc_per_node=P "
                                 f"(which sets {', '.join(ENVIRONMENT)}) or call torch.distributed.init_process_group "
                                 "first")
            device = torch.device(device)
            if device.type == "cuda":
                torch.cuda.set_device(cls.local_device(device))
            dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
            atexit.register(_destroy_group)
        return cls(check_every=check_every)

    @staticmethod
    def local_device(device: str | torch.device) -> torch.device:
        """``device`` for this process: a CUDA device without an index becomes ``cuda:$LOCAL_RANK`` (one GPU per
        process on each machine)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    # ------------------------------------------------------------------ sharding
    def bounds(self, count: int) -> tuple[int, int]:
        """This rank's ``(start, stop)`` share of ``count`` tasks."""
        return shard_bounds(count, self.rank, self.world_size)

    def local_batch(self, source: Any, index: int) -> tuple[TaskBatch, int]:
        """``(this rank's share of source[index], the number of tasks in the whole batch)``."""
        total = getattr(source, "batch_size", None)
        if isinstance(total, int) and callable(getattr(source, "batch_slice", None)):
            self.check_splittable(total, f"train_tasks[{index}]")
            return source.batch_slice(index, *self.bounds(total)), total
        batch = source[index]
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"train_tasks[{index}] returned a {type(batch).__name__}; expected a TaskBatch")
        total = batch.batch_size
        self.check_splittable(total, f"train_tasks[{index}]")
        return batch.slice(*self.bounds(total)), total

    def check_splittable(self, total: int, what: str) -> None:
        """Refuse a meta-batch of fewer tasks than processes (``what`` names it in the message)."""
        if total < self.world_size:
            tasks = f"{total} task{'' if total == 1 else 's'}"
            raise ValueError(f"{what} holds {tasks}: a meta-batch cannot be split over {self.world_size} processes"
                             f" (each needs at least one task); use a meta-batch of at "
                             f"least {self.world_size} tasks or fewer processes")

    # ------------------------------------------------------------------ collectives
    def all_reduce_(self, tensor: Tensor, op: Any = None) -> Tensor:
        """Sum (or ``op``) ``tensor`` over the ranks, in place; returns it."""
        op = dist.ReduceOp.SUM if op is None else op
        if tensor.device == self.device:
            dist.all_reduce(tensor, op=op)
            return tensor
        moved = tensor.to(self.device)
        dist.all_reduce(moved, op=op)
        return tensor.copy_(moved)

    def weighted_mean_(self, tensor: Tensor, weight: float) -> Tensor:
        """``sum_r weight_r * tensor_r`` in place (``weight``: this rank's share, e.g. b_r / B)."""
        return self.all_reduce_(tensor.mul_(weight))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (so that every rank takes the same branch)."""
        value = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)
        return bool(self.all_reduce_(value, dist.ReduceOp.MAX).item() > 0)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pickled; for small things such as a checkpoint's state)."""
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module`` (a fresh run starts identical even
        where each process initialised its model differently)."""
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                data = tensor.data
                moved = data.to(self.device)
                dist.broadcast(moved, src=0)
                if moved is not data:
                    data.copy_(moved)

    def gather_rows(self, rows: Tensor, positions: Tensor) -> Tensor:
        """Every rank's ``rows [n_r, k]`` (float64) in one ``[sum n_r, k]`` tensor, ordered by ``positions``
        (each row's global index): the result a single process would have built."""
        count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=self.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        longest = max(int(c.item()) for c in counts)
        padded = torch.zeros(longest, rows.shape[1] + 1, dtype=torch.float64, device=self.device)
        padded[: rows.shape[0], 0] = positions.to(device=self.device, dtype=torch.float64)
        padded[: rows.shape[0], 1:] = rows.to(device=self.device, dtype=torch.float64)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        table = torch.cat([part[: int(c.item())] for part, c in zip(parts, counts)]).cpu()
        order = torch.argsort(table[:, 0], stable=True)
        return table[order, 1:]

    # ------------------------------------------------------------------ the meta-gradient
    def average_gradients(self, learner: nn.Module, metrics: dict[str, float], tasks: int) -> dict[str, float]:
        """Replace every rank's ``.grad`` (the mean over its ``tasks`` tasks) and ``metrics`` (means over them
        too) by those of the whole meta-batch; the hook :class:`~.update.GradientUpdate` calls between
        ``meta_backward`` and the optimizer step. Running statistics of batch norm are averaged the same way."""
        params = [p for p in learner.parameters() if p.requires_grad]
        keys = sorted(metrics)
        # one float64 all-reduce for the task counts, the metrics and which parameters have a gradient anywhere
        head = torch.tensor([float(tasks)] + [tasks * float(metrics[k]) for k in keys]
                            + [1.0 if p.grad is not None else 0.0 for p in params], dtype=torch.float64)
        self.all_reduce_(head)
        total = float(head[0])
        weight = tasks / total
        present = [bool(flag > 0) for flag in head[1 + len(keys):]]
        for group in self._by_dtype([p for p, keep in zip(params, present) if keep]):
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            self.weighted_mean_(flat, weight)
            for p, chunk in zip(group, flat.split([p.numel() for p in group])):
                if p.grad is None:
                    p.grad = chunk.view(p.shape).clone()
                else:
                    p.grad.copy_(chunk.view(p.shape))
        self._average_running_stats(learner, weight)
        return {key: float(head[1 + i]) / total for i, key in enumerate(keys)}

    def _average_running_stats(self, learner: nn.Module, weight: float) -> None:
        modules = _running_stat_modules(learner)
        if not modules:
            return
        buffers = [b for m in modules for b in m.buffers(recurse=False)]
        with torch.no_grad():
            for group in self._by_dtype([b for b in buffers if b.is_floating_point()]):
                flat = self.weighted_mean_(torch.cat([b.reshape(-1) for b in group]), weight)
                for buffer, chunk in zip(group, flat.split([b.numel() for b in group])):
                    buffer.copy_(chunk.view(buffer.shape))
            for buffer in buffers:  # counters (num_batches_tracked): rank 0's
                if not buffer.is_floating_point():
                    moved = buffer.to(self.device)
                    dist.broadcast(moved, src=0)
                    buffer.copy_(moved)

    @staticmethod
    def _by_dtype(tensors: Iterable[Tensor]) -> list[list[Tensor]]:
        groups: dict[tuple, list[Tensor]] = {}
        for tensor in tensors:
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        return list(groups.values())

    # ------------------------------------------------------------------ the trainer's hooks
    def attach(self, update: Any) -> None:
        """Let a custom update (meta-RL's) take part: it must reduce what it computes across the ranks itself."""
        if not callable(getattr(update, "use_distributed", None)):
            raise ValueError(f"Trainer: distributed training with a custom update needs "
                             f"{type(update).__name__}.use_distributed(parallel)")
        update.use_distributed(self)

    def after_step(self, module: nn.Module, step: int, should_stop: bool) -> bool:
        """Whether every rank stops now (one rank's time limit stops all, at the same step); every ``check_every``
        steps, :meth:`check_in_sync` too."""
        if step % self.check_every == 0:
            self.check_in_sync(module, step)
        return self.any(should_stop)

    # ------------------------------------------------------------------ staying identical
    def check_in_sync(self, module: nn.Module, step: int) -> None:
        """Raise :class:`ReplicasDivergedError` on every rank when any parameter or buffer of ``module`` differs
        between ranks (one small all-gather of per-tensor fingerprints)."""
        named = list(module.named_parameters()) + list(module.named_buffers())
        mine = _fingerprint([t for _, t in named]).to(self.device)
        rows = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(rows, mine)
        reference = rows[0]
        for rank, row in enumerate(rows[1:], start=1):
            differs = torch.nonzero(row != reference)
            if differs.numel():
                first = named[int(differs[0])][0]
                raise ReplicasDivergedError(
                    f"after step {step}, rank {rank} holds different values than rank 0 in {first!r} "
                    f"({differs.numel()} of {len(named)} tensors differ): the processes no longer train one model. "
                    "Something made the update differ between processes (a non-deterministic custom update, "
                    "or parameters changed outside the trainer); the last checkpoint predates the divergence")


# --------------------------------------------------------------------------- for the Trainer
DISTRIBUTED_CHOICES = (False, True, "auto")


def data_parallel_for(distributed: Any, device: str | torch.device, owner: str = "Trainer") -> DataParallel | None:
    """The :class:`DataParallel` a Trainer's ``distributed`` argument asks for: ``False`` (or ``None``) none,
    ``True`` this process's group (from torchrun's environment), ``"auto"`` that when launched by torchrun (or when
    a group exists) and none otherwise, or a ready :class:`DataParallel`."""
    if isinstance(distributed, DataParallel) or distributed is None:
        return distributed
    if distributed not in DISTRIBUTED_CHOICES:
        raise ValueError(f"{owner}: distributed must be True, False, 'auto' or a DataParallel, got {distributed!r}")
    if distributed == "auto":
        grouped = dist.is_available() and dist.is_initialized()
        distributed = grouped or launched_by_torchrun()
    return DataParallel.setup(device) if distributed else None


def step_seed(seed: int, index: int, rank: int) -> int:
    """The global torch generator's seed for step ``index`` on rank ``rank``: what a step draws (dropout, Reptile's
    inner mini-batches) is then a function of (seed, step, rank), so a run resumed on as many processes draws the
    same numbers as one that never stopped."""
    import numpy as np

    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(rank)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def restore_everywhere(parallel: DataParallel | None, trainer: Any, restore: Any) -> None:
    """Run ``restore()`` (the checks on the run folder, reading ``last.pt``) on rank 0 only and give every rank its
    outcome, the same state or the same error, then rank 0's weights (so ranks > 0 need no access to rank 0's
    files, and a fresh run starts identical everywhere). Without ``parallel``: just ``restore()``."""
    if parallel is None:
        restore()
        return
    outcome: tuple[str, Any] = ("fresh", None)
    if parallel.is_main:
        try:
            restore()
            if trainer._restored:
                outcome = ("state", trainer.state_dict())
        except Exception as error:  # every rank raises it: none waits forever for the others
            outcome = ("error", error)
    kind, value = parallel.broadcast_object(outcome)
    if kind == "error":
        raise value
    if kind == "state" and not parallel.is_main:
        trainer.load_state_dict(value, source="rank 0's checkpoint")
    parallel.broadcast_module(trainer.learner)
