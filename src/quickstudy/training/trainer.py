"""The meta-training loop: a thin, stateful facade over an update, callbacks and checkpoints.

One step ``i`` (``i = 0 .. steps-1``) is ``metrics = update(i, train_tasks[i].to(device))``: for every
meta-learner with ``meta_backward`` a :class:`~.update.GradientUpdate` (zero_grad, meta_backward, finite
checks, clipping, ``optimizer.step()``, ``scheduler.step()``).

``train_tasks[i]`` depends only on the sampler's seed and ``i``, so the step counter *is* the sampler state,
and a checkpoint (weights, optimizer, schedule, step, best metric, RNG states, history) resumes the run exactly:
``N`` steps + resume + ``N`` steps gives bit-identical parameters and optimizer state to ``2N`` uninterrupted
steps (:mod:`.checkpoint`).

Every ``val_every`` steps (and after the last one) the learner is scored on the *same* validation tasks
``val_tasks[0..]`` (``val_episodes`` tasks) with :func:`~quickstudy.training.evaluate`; the best result
(highest accuracy, or lowest MSE for regression) is kept in ``best.pt``. Validation runs with the global RNG
states saved and restored, so it never changes the training trajectory.

Files in ``out`` (when given): ``last.pt`` (and ``last.prev.pt``, the one before), ``best.pt``, ``metrics.csv``
(columns :data:`~quickstudy.training.logging.CSV_COLUMNS`), ``tensorboard/`` (when ``tensorboard`` is installed).
Rows are logged at ``step`` = the number of completed meta-updates (1..steps).
"""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import check_bool, check_choice, check_int, check_number
from ..precision import PRECISIONS, cpu_has_fast_bfloat16, enable_cpu_caching_allocator
from ..tasks.batch import TaskBatch
from .callbacks import Callback, DivergenceMonitor, History, MetricsLogger, ProgressBar, RunningWindow
from .checkpoint import get_rng_state, load_checkpoint, load_trainer_state, resume_settings, save_checkpoint, \
    set_rng_state, trainer_state
from .distributed import DataParallel, data_parallel_for, restore_everywhere, step_seed
from .evaluate import EvalResult, _length, evaluate
from .logging import CSV_COLUMNS
from .update import GradientUpdate, NonFiniteLossError

__all__ = ["Trainer", "History", "Callback", "NonFiniteLossError", "seed_everything"]

_log = logging.getLogger("quickstudy")


def seed_everything(seed: int) -> None:
    """Seed the global torch (all devices), Python and NumPy generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Run a block (validation) without moving the global torch / Python / NumPy generators."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _plain(value: Any) -> bool:
    """True for values a weights-only checkpoint (and JSON) can hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


class Trainer:
    """Meta-train ``learner`` on ``train_tasks`` (see the module docstring).

    Args:
        learner: a :class:`~quickstudy.algorithms.base.MetaLearner`; moved to ``device``.
        train_tasks: ``train_tasks[i]`` -> TaskBatch, a pure function of ``i`` (a sampler).
        val_tasks: optional validation source; ``val_tasks[0..]`` give the same ``val_episodes`` tasks at
            every validation.
        steps: total number of meta-updates.
        lr: learning rate given to the optimizer.
        optimizer: a name in :data:`quickstudy.optim.OPTIMIZERS` (``"adam"``, ``"adamw"``, ``"sgd"``,
            ``"rmsprop"``), a ``torch.optim.Optimizer`` subclass or a factory, called as
            ``optimizer(params, lr=lr, **optimizer_kwargs)``.
        optimizer_kwargs: extra optimizer arguments (e.g. ``{"weight_decay": 1e-4}``).
        schedule: ``None`` (constant), a name in :data:`quickstudy.optim.SCHEDULES` (``"cosine"``,
            ``"linear"``, ``"step"``: x ``gamma`` every ``step_size`` steps, default 0.5 every ``steps // 3``)
            with its ``schedule_options``, or ``schedule(optimizer) -> LRScheduler``; stepped once per update.
        schedule_options: options of a named schedule, e.g. ``{"step_size": 2000, "gamma": 0.5}``.
        grad_clip: clip the global 2-norm of the meta-gradient to this (``None``: no clipping).
        val_every: validate every this many steps, and after the last (``None``: only after the last).
        val_episodes: number of validation tasks.
        out: run directory for checkpoints and logs (``None``: keep everything in memory).
        log_every: log a training row (averaged over the steps since the last) every this many steps.
        checkpoint_every: write ``last.pt`` every this many steps (and always at the end of ``fit``).
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.
        device: where the learner and the batches live.
        seed: seeds the global torch / Python / NumPy generators when a fresh run starts (the learner's initial
            weights are drawn before, so seed those yourself).
        callbacks: :class:`~.callbacks.Callback` objects.
        tensorboard: also log to TensorBoard under ``out/tensorboard`` when it is installed.
        precision: ``"float32"`` (exact, the default) or ``"bfloat16"`` (:mod:`quickstudy.precision`): faster on
            CPUs with AVX-512 BF16 / AMX and on GPUs; validation and evaluation stay in float32. With more than
            one second-order inner step the bfloat16 meta-gradient is unreliable (a warning says so).
        cpu_caching_allocator: on a CPU device, install quickstudy's caching CPU allocator when ``fit`` starts
            (:mod:`quickstudy.kernels.cpu_allocator`; process-wide and exact).
        update: what one step does, for meta-learners that do not train by ``meta_backward`` and an optimizer
            (meta-RL's TRPO step): ``update(index, batch) -> metrics`` with ``lr``, ``state_dict`` and
            ``load_state_dict`` (:mod:`.update`). The optimizer and schedule arguments are then unused.
        csv_columns: the columns of ``metrics.csv``.
        log: whether this process logs (progress bar, CSV, TensorBoard) and writes checkpoints.
        distributed: ``True``: data-parallel over the processes torchrun started (:mod:`.distributed`; each takes
            its share of every meta-batch, rank 0 logs and checkpoints); ``"auto"``: so when launched by torchrun;
            or a :class:`~.distributed.DataParallel`. A custom ``update`` must then have ``use_distributed``.
    """

    def __init__(
        self,
        learner: nn.Module,
        train_tasks,
        val_tasks=None,
        steps: int = 10_000,
        lr: float = 1e-3,
        optimizer: str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer] = "adam",
        optimizer_kwargs: dict[str, Any] | None = None,
        schedule: str | Callable[[torch.optim.Optimizer], Any] | None = None,
        grad_clip: float | None = None,
        val_every: int | None = 500,
        val_episodes: int = 100,
        out: str | os.PathLike | None = None,
        log_every: int = 10,
        checkpoint_every: int | None = 500,
        progress: bool | None = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
        callbacks: Sequence[Any] = (),
        tensorboard: bool = True,
        precision: str = "float32",
        cpu_caching_allocator: bool = True,
        schedule_options: dict[str, Any] | None = None,
        update: Any = None,
        csv_columns: Sequence[str] = CSV_COLUMNS,
        log: bool = True,
        distributed: bool | str | DataParallel = False,
    ):
        if not isinstance(learner, nn.Module) or (update is None and not callable(getattr(learner, "meta_backward", None))):
            raise TypeError(f"Trainer: learner must be a MetaLearner with meta_backward(batch), got {type(learner).__name__}")
        for name, source in (("train_tasks", train_tasks), ("val_tasks", val_tasks)):
            if source is not None and not hasattr(source, "__getitem__"):
                raise TypeError(f"Trainer: {name} must support {name}[i] -> TaskBatch, got {type(source).__name__}")
        if train_tasks is None and update is None:
            raise TypeError("Trainer: train_tasks must support train_tasks[i] -> TaskBatch, got None")
        self.steps = check_int("Trainer", "steps", steps)
        available = None if train_tasks is None else _length(train_tasks)
        if available is not None and available < self.steps:
            raise ValueError(f"Trainer: train_tasks holds {available} batches but steps={self.steps} needs one per step")
        self.lr = check_number("Trainer", "lr", lr)
        self.grad_clip = check_number("Trainer", "grad_clip", grad_clip, allow_none=True)
        self.val_every = check_int("Trainer", "val_every", val_every, allow_none=True)
        self.val_episodes = check_int("Trainer", "val_episodes", val_episodes)
        self.log_every = check_int("Trainer", "log_every", log_every)
        self.checkpoint_every = check_int("Trainer", "checkpoint_every", checkpoint_every, allow_none=True)
        self.seed = check_int("Trainer", "seed", seed, minimum=0)
        if progress is not None:
            check_bool("Trainer", "progress", progress)
        self.progress = progress
        self.parallel = data_parallel_for(distributed, device)
        self.device = torch.device(device) if self.parallel is None else self.parallel.local_device(device)
        self.out = None if out is None else Path(out)
        self.tensorboard = bool(tensorboard)
        self.precision = check_choice("Trainer", "precision", precision, PRECISIONS)
        self._warn_precision(learner)
        self.cpu_caching_allocator = bool(cpu_caching_allocator)
        self.callbacks = list(callbacks)
        self.csv_columns, self.log = tuple(csv_columns), bool(log) and (self.parallel is None or self.parallel.is_main)
        self.learner = learner.to(self.device)
        self.train_tasks, self.val_tasks = train_tasks, val_tasks
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.optimizer_spec, self.schedule_spec = optimizer, schedule
        self.schedule_options = dict(schedule_options or {})
        self.update = update if update is not None else GradientUpdate(
            self.learner, steps=self.steps, lr=self.lr, optimizer=optimizer, optimizer_kwargs=self.optimizer_kwargs,
            schedule=schedule, schedule_options=self.schedule_options, grad_clip=self.grad_clip,
            precision=self.precision, device=self.device,
            reduce_gradients=None if self.parallel is None else self.parallel.average_gradients)
        if update is not None and self.parallel is not None:
            self.parallel.attach(update)
        task_type = getattr(learner, "task_type", "classification")
        check_choice("Trainer", "learner.task_type", task_type, ("classification", "regression", "rl"))
        self.monitor, self.mode = ("accuracy", "max") if task_type == "classification" else ("loss", "min")

        # run state (what a checkpoint holds)
        self.step, self.elapsed = 0, 0.0
        self.best: dict[str, Any] | None = None
        self.history = History()
        self.window = RunningWindow()
        self.last_val_step: int | None = None
        self.should_stop = False
        self._restored = False
        self._best_model: dict[str, torch.Tensor] | None = None
        self._last_saved_step: int | None = None
        self.last_rate: float | None = None

    def _warn_precision(self, learner: nn.Module) -> None:
        if self.precision != "bfloat16":
            return
        if getattr(learner, "inner_steps", 1) > 1 and getattr(learner, "first_order", True) is False:
            warnings.warn(
                f"Trainer: precision='bfloat16' with {learner.inner_steps} second-order inner steps: the bfloat16 "
                "meta-gradient of a multi-step second-order inner loop is far from the exact one (Conv4 on Omniglot, "
                "5 steps: cosine 0.10 to the float64 gradient, against 0.99 with 1 step; bench/bf16_gradient.py). "
                "Use float32, first_order=True or inner_steps=1", RuntimeWarning, stacklevel=3)
        if self.device.type == "cpu" and not cpu_has_fast_bfloat16():
            warnings.warn(
                "Trainer: precision='bfloat16' on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): torch "
                "emulates them and meta-training runs several times slower than in float32. Use float32 here",
                RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ compatibility views
    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        return getattr(self.update, "optimizer", None)

    @property
    def scheduler(self):
        return getattr(self.update, "scheduler", None)

    def config(self) -> dict[str, Any]:
        """The settings a checkpoint records (plain values); custom optimizers/schedules appear as ``None`` /
        ``"<custom>"`` and must be passed again to :meth:`resume`."""
        spec = self.schedule_spec
        return {
            "steps": self.steps, "lr": self.lr,
            "optimizer": self.optimizer_spec.lower() if isinstance(self.optimizer_spec, str) else None,
            "optimizer_kwargs": self.optimizer_kwargs if _plain(self.optimizer_kwargs) else None,
            "schedule": spec if spec is None or isinstance(spec, str) else "<custom>",
            "schedule_options": self.schedule_options if _plain(self.schedule_options) else None,
            "grad_clip": self.grad_clip, "val_every": self.val_every, "val_episodes": self.val_episodes,
            "log_every": self.log_every, "checkpoint_every": self.checkpoint_every, "device": str(self.device),
            "seed": self.seed, "tensorboard": self.tensorboard, "precision": self.precision,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see :mod:`quickstudy.training.checkpoint`)."""
        return trainer_state(self)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint of the current state to ``path`` (atomically)."""
        return save_checkpoint(path, self.state_dict())

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore a state from :meth:`state_dict` (``source`` names it in error messages)."""
        load_trainer_state(self, state, source)
        self._best_model = None
        self._restored = True

    def restore(self, path: str | os.PathLike) -> None:
        """Load the checkpoint at ``path`` into this trainer (learner, optimizer, RNGs, history...)."""
        self.load_state_dict(load_checkpoint(path), source=f"checkpoint {str(path)!r}")

    @classmethod
    def resume(cls, out: str | os.PathLike, learner: nn.Module, train_tasks, val_tasks=None, **overrides) -> "Trainer":
        """A Trainer rebuilt from the checkpoint ``out/last.pt`` (or ``out`` itself, a ``.pt`` file), with the
        saved settings (override any with keyword arguments; ``device`` and ``progress`` are not taken from the
        checkpoint); call :meth:`fit` to go on. A custom optimizer or schedule must be passed again."""
        path, config, state = resume_settings(out, overrides)
        if config.get("schedule_options") is None:
            config.pop("schedule_options", None)
        trainer = cls(learner, train_tasks, val_tasks, **config)
        trainer.load_state_dict(state, source=f"checkpoint {str(path)!r}")
        return trainer

    def load_best(self) -> dict[str, Any] | None:
        """Load the best validated weights into the learner; returns ``self.best`` (None: no validation yet)."""
        if self.best is None:
            return None
        if self._best_model is not None:
            self.learner.load_state_dict(self._best_model)
        elif self.out is not None and (self.out / "best.pt").is_file():
            self.learner.load_state_dict(load_checkpoint(self.out / "best.pt")["model"])
        else:
            raise FileNotFoundError("Trainer.load_best: the best weights are neither in memory nor in out/best.pt")
        return self.best

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool | str | os.PathLike = False, overwrite: bool = False, until: int | None = None) -> History:
        """Train until ``steps`` updates are done; returns the :class:`~.callbacks.History`.

        A fresh run seeds the global generators with ``seed``; the learner is put in ``train()`` mode.

        Args:
            resume: ``True``: continue from ``out/last.pt`` (which must exist); ``"auto"``: continue if it
                exists, else start fresh; a path: continue from that checkpoint.
            overwrite: start a fresh run even if ``out`` already holds one (its files are replaced).
            until: stop after this many completed updates (of ``steps``), e.g. to train in chunks; ``last.pt`` is
                written and a later ``fit(resume=True)`` goes on.
        """
        restore_everywhere(self.parallel, self, lambda: self._maybe_restore(resume, overwrite))
        until = self.steps if until is None else min(check_int("Trainer.fit", "until", until), self.steps)
        if not self._restored and self.step == 0:
            seed_everything(self.seed)
        if self.cpu_caching_allocator and self.device.type == "cpu":
            enable_cpu_caching_allocator()
        builtin = [] if not self.log else [ProgressBar(self.progress)] + (
            [MetricsLogger(self.out, self.csv_columns, self.tensorboard)] if self.out is not None else [])
        # divergence warnings by default; pass DivergenceMonitor(strict=True) among the callbacks to stop instead
        watch = [] if any(isinstance(c, DivergenceMonitor) for c in self.callbacks) else [DivergenceMonitor()]
        self._hooks = builtin + watch + self.callbacks
        self.should_stop = False
        self.learner.train()
        self._callback("on_fit_start", self)
        started, elapsed_before = time.perf_counter(), self.elapsed
        try:
            while self.step < until and not self.should_stop:
                self._one_step(started, elapsed_before)
            if self.step == self.steps and self.last_val_step != self.steps and self.val_tasks is not None:
                self.validate()  # a run resumed from its final checkpoint before the last validation
            if self.out is not None and self._last_saved_step != self.step:
                self._save_last()
        except KeyboardInterrupt:
            if self.out is not None and (self.out / "last.pt").is_file():
                saved = self._last_saved_step if self._last_saved_step is not None else "an earlier"
                _log.warning("interrupted at step %d; fit(resume=True) continues from %s (step %s)",
                             self.step, self.out / "last.pt", saved)
            raise
        finally:
            for hook in builtin:
                hook.close()
        self.history.best = self.best
        self._callback("on_fit_end", self, self.history)
        return self.history

    def _one_step(self, started: float, elapsed_before: float) -> None:
        index = self.step
        tick = time.perf_counter()
        batch, total = None, None
        if self.parallel is not None:
            torch.manual_seed(step_seed(self.seed, index, self.parallel.rank))
        if self.train_tasks is not None:
            batch, total = (self.train_tasks[index], None) if self.parallel is None else \
                self.parallel.local_batch(self.train_tasks, index)
            if not isinstance(batch, TaskBatch):
                raise TypeError(f"train_tasks[{index}] returned a {type(batch).__name__}; expected a TaskBatch")
            batch = batch.to(self.device)
        lr = self.update.lr
        metrics = self.update(index, batch)
        self.step = index + 1
        seconds = time.perf_counter() - tick
        self.elapsed = elapsed_before + time.perf_counter() - started
        tasks = (total or batch.batch_size) if batch is not None else int(metrics.pop("tasks", 0))
        self.window.add(metrics, tasks, seconds)
        self.last_rate = tasks / max(seconds, 1e-9) if tasks else None  # tasks/s of this step (progress bar)
        self._callback("on_step_end", self, self.step, metrics)
        if self.parallel is not None:  # every rank stops at the same step; the weights are compared now and then
            self.should_stop = self.parallel.after_step(self.learner, self.step, self.should_stop)
        if self.step % self.log_every == 0:
            self._log(self.window.row(self.step, lr, self.elapsed))
        if self.val_tasks is not None and self.val_every is not None and self.step % self.val_every == 0:
            self.validate()
        if self.step == self.steps or self.should_stop:
            if self.window.count:  # the partial window, then the final validation
                self._log(self.window.row(self.step, lr, self.elapsed))
            if self.val_tasks is not None and self.last_val_step != self.step:
                self.validate()
        if self.out is not None and self.checkpoint_every is not None and self.step % self.checkpoint_every == 0:
            self._save_last()

    def validate(self) -> EvalResult:
        """Score the learner on the fixed validation tasks now; log it and keep the best."""
        if self.val_tasks is None:
            raise ValueError("Trainer.validate: no val_tasks were given")
        with _preserved_rng():
            result = evaluate(self.learner, self.val_tasks, episodes=self.val_episodes, device=self.device,
                              progress=False, distributed=self.parallel)
        row: dict[str, Any] = {"step": self.step, "split": "val"}
        row.update(result.metrics)
        row.update(ci95=result.ci95, lr=self.update.lr, elapsed=self.elapsed)
        self._log(row)
        self.last_val_step = self.step
        value = float(result.metrics[self.monitor])
        improved = self.best is None or (value > self.best["value"] if self.mode == "max" else value < self.best["value"])
        if improved:
            self.best = {"step": self.step, "metric": self.monitor, "value": value, "mode": self.mode}
            self.history.best = self.best
            if self.out is not None and self.log:
                path = self.save(self.out / "best.pt")
                self._callback("on_checkpoint", self, path)
            else:
                self._best_model = {k: v.detach().clone() for k, v in self.learner.state_dict().items()}
        self._callback("on_validation_end", self, self.step, result)
        return result

    # ------------------------------------------------------------------ plumbing
    def _maybe_restore(self, resume, overwrite: bool) -> None:
        if resume is False or resume is None:
            if not self._restored and self.step == 0 and self.out is not None and (self.out / "last.pt").exists():
                if not overwrite:
                    raise FileExistsError(
                        f"{str(self.out)!r} already holds a run (last.pt): pass fit(resume=True) to continue it, "
                        "fit(overwrite=True) to start over, or another out directory")
                if self.log:
                    for name in ("last.pt", "last.prev.pt", "best.pt"):  # checkpoints of the run being replaced
                        (self.out / name).unlink(missing_ok=True)
            return
        if isinstance(resume, (str, os.PathLike)) and str(resume) != "auto":
            self.restore(resume)
            return
        if resume is not True and resume != "auto":
            raise ValueError(f"fit: resume must be False, True, 'auto' or a checkpoint path, got {resume!r}")
        if self.out is None:
            raise ValueError("fit(resume=...) needs the Trainer's out directory (out=None keeps no checkpoints)")
        last = self.out / "last.pt"
        if last.is_file():
            self.restore(last)
        elif resume is True:
            raise FileNotFoundError(f"fit(resume=True): no checkpoint at {str(last)!r}; use resume='auto' to start "
                                    "fresh when there is none")

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self._callback("on_log", self, row)

    def _save_last(self) -> None:
        if self.parallel is not None:
            self.parallel.check_in_sync(self.learner, self.step)
        if self.log:  # the checkpoint replaced stays as last.prev.pt: a fallback if last.pt is ever damaged
            path = save_checkpoint(self.out / "last.pt", self.state_dict(), keep_previous=True)
            self._callback("on_checkpoint", self, path)
        self._last_saved_step = self.step

    def _callback(self, hook: str, *args) -> None:
        for callback in getattr(self, "_hooks", self.callbacks):
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def __repr__(self) -> str:
        return (f"Trainer({type(self.learner).__name__}, step={self.step}/{self.steps}, lr={self.lr:g}, "
                f"optimizer={self.optimizer_spec!r}, out={str(self.out) if self.out else None!r})")
