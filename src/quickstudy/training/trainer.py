"""The meta-training loop: a thin, stateful shell around ``learner.meta_backward``.

One step ``i`` (``i = 0 .. steps-1``) is::

    optimizer.zero_grad(set_to_none=True)
    metrics = learner.meta_backward(train_tasks[i].to(device))   # accumulates the meta-gradient
    check loss and gradients are finite                          # else NonFiniteLossError(step=i)
    clip the gradient norm to grad_clip (if set)
    optimizer.step(); scheduler.step()

``train_tasks[i]`` depends only on the sampler's seed and ``i``, so the step counter *is* the
sampler state, and a checkpoint (model, optimizer, scheduler, step, best metric, RNG states, the
history) resumes the run exactly: ``N`` steps + resume + ``N`` steps gives bit-identical parameters
and optimizer state to ``2N`` uninterrupted steps.

Every ``val_every`` steps (and after the last one) the learner is scored on the *same* validation
tasks ``val_tasks[0..]`` (``val_episodes`` tasks) with :func:`~quickstudy.training.evaluate`; the
best result (highest accuracy, or lowest MSE for regression) is kept in ``best.pt``. Validation runs
with the global RNG states saved and restored, so it never changes the training trajectory.

Files in ``out`` (when given): ``last.pt``, ``best.pt``, ``metrics.csv`` (columns
:data:`~quickstudy.training.logging.CSV_COLUMNS`), ``tensorboard/`` (when ``tensorboard`` is
installed). Rows are logged at ``step`` = the number of completed meta-updates (1..steps).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import check_int, check_number
from ..tasks.batch import TaskBatch
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .evaluate import EvalResult, _length, evaluate
from .logging import CSVLogger, TensorBoardLogger

__all__ = ["Trainer", "History", "Callback", "NonFiniteLossError"]

_log = logging.getLogger("quickstudy")

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}
SCHEDULES = ("cosine", "step")


class NonFiniteLossError(ValueError):
    """The meta-loss or a meta-gradient became NaN or infinite.

    Attributes:
        step: index of the failing step (``train_tasks[step]`` was the batch); parameters are as
            they were after ``step`` completed updates (the bad update was not applied).
        tensor: ``"loss"``, the name of the parameter whose gradient is non-finite, or
            ``"grad_norm"`` when every gradient is finite but their norm overflows.
    """

    def __init__(self, message: str, step: int, tensor: str):
        super().__init__(message)
        self.step = step
        self.tensor = tensor


class Callback:
    """Hooks into :meth:`Trainer.fit`; override any of them (plain objects with some of these
    methods work too). Set ``trainer.should_stop = True`` to end training after the current step."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None: ...

    def on_validation_end(self, trainer: "Trainer", step: int, result: EvalResult) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None: ...

    def on_fit_end(self, trainer: "Trainer", history: "History") -> None: ...


class History:
    """The rows logged during training (``split`` ``"train"`` or ``"val"``), and the best validation.

    ``history.train`` / ``history.val`` are the rows of one split; ``history.series("loss", "val")``
    returns ``(steps, values)``; ``history.best`` is ``{"step", "metric", "value", "mode"}`` or None.
    """

    def __init__(self, rows: Sequence[dict[str, Any]] = (), best: dict[str, Any] | None = None):
        self.rows: list[dict[str, Any]] = [dict(r) for r in rows]
        self.best = best

    @property
    def train(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("split") == "train"]

    @property
    def val(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("split") == "val"]

    def series(self, name: str, split: str = "train") -> tuple[list[int], list[float]]:
        rows = [r for r in self.rows if r.get("split") == split and r.get(name) is not None]
        return [int(r["step"]) for r in rows], [float(r[name]) for r in rows]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "best": None if self.best is None else dict(self.best)}

    def __repr__(self) -> str:
        return f"History({len(self.train)} train rows, {len(self.val)} val rows, best={self.best})"


class _Window:
    """Running sums of the metrics since the last logged row (saved in checkpoints, so a resumed
    run logs the same rows as one that never stopped)."""

    def __init__(self) -> None:
        self.count, self.tasks, self.seconds, self.sums = 0, 0, 0.0, {}

    def add(self, metrics: dict[str, float], tasks: int, seconds: float) -> None:
        self.count += 1
        self.tasks += tasks
        self.seconds += seconds
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def row(self, step: int, lr: float, elapsed: float) -> dict[str, Any]:
        row: dict[str, Any] = {"step": step, "split": "train"}
        row.update({key: total / self.count for key, total in self.sums.items()})
        row.update(lr=lr, tasks_per_s=self.tasks / self.seconds if self.seconds > 0 else None, elapsed=elapsed)
        self.__init__()
        return row

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "tasks": self.tasks, "seconds": self.seconds, "sums": dict(self.sums)}

    def load(self, state: dict[str, Any]) -> None:
        self.count, self.tasks = int(state["count"]), int(state["tasks"])
        self.seconds, self.sums = float(state["seconds"]), {k: float(v) for k, v in state["sums"].items()}


def _plain(value: Any) -> bool:
    """True for values a weights-only checkpoint (and JSON) can hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


@contextmanager
def _preserved_rng() -> Iterator[None]:
    """Run a block (validation) without moving the global torch / Python / NumPy generators."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int) -> None:
    """Seed the global torch (all devices), Python and NumPy generators."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


PRECISIONS = ("float32", "bfloat16")


def _enable_caching_allocator() -> None:
    from ..cpu_allocator import CompilerNotFoundError, caching_allocator_enabled, enable_caching_allocator

    if caching_allocator_enabled():  # keep the limits a user may have set
        return
    try:
        enable_caching_allocator()
    except (CompilerNotFoundError, RuntimeError, OSError) as error:
        import warnings

        warnings.warn(f"Trainer: training without the caching CPU allocator: {error}", RuntimeWarning, stacklevel=3)


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX-512 BF16 or AMX). Without them torch emulates
    bfloat16 products: a Conv4 forward and backward on 75 images took 8x float32's time on an AVX2 EPYC.
    True where it cannot tell (a CPU that is not x86)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: True)() for probe in probes)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bfloat16 for ``precision="bfloat16"``, else a no-op context."""
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Trainer:
    """Meta-train ``learner`` on ``train_tasks`` (see the module docstring).

    Args:
        learner: a :class:`~quickstudy.algorithms.base.MetaLearner`; moved to ``device``.
        train_tasks: ``train_tasks[i]`` -> TaskBatch, a pure function of ``i`` (a sampler).
        val_tasks: optional validation source; ``val_tasks[0..]`` give the same ``val_episodes``
            tasks at every validation.
        steps: total number of meta-updates.
        lr: learning rate given to the optimizer.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, a ``torch.optim.Optimizer``
            subclass or a factory, called as ``optimizer(params, lr=lr, **optimizer_kwargs)``.
        optimizer_kwargs: extra optimizer arguments (e.g. ``{"weight_decay": 1e-4}``).
        schedule: ``None`` (constant), ``"cosine"`` (cosine annealing to 0 over ``steps``),
            ``"step"`` (x0.1 every ``steps // 3``), or ``schedule(optimizer) -> LRScheduler``;
            stepped once per meta-update.
        grad_clip: clip the global 2-norm of the meta-gradient to this (``None``: no clipping).
        val_every: validate every this many steps, and after the last (``None``: only after the last).
        val_episodes: number of validation tasks.
        out: run directory for checkpoints and logs (``None``: keep everything in memory).
        log_every: log a training row (averaged over the steps since the last) every this many steps.
        checkpoint_every: write ``last.pt`` every this many steps (and always at the end of ``fit``).
        progress: tqdm bar on stderr; ``None`` shows it only on a terminal.
        device: where the learner and the batches live.
        seed: seeds the global torch / Python / NumPy generators when a fresh run starts (the
            learner's initial weights are drawn before, so seed those yourself).
        callbacks: :class:`Callback` objects.
        tensorboard: also log to TensorBoard under ``out/tensorboard`` when it is installed.
        precision: ``"float32"`` (exact, the default) or ``"bfloat16"``: the meta-gradient is computed
            under ``torch.autocast(device, bfloat16)`` (convolutions and matrix products in bfloat16,
            batch-norm statistics, losses, weights and the optimizer in float32). On CPUs with AVX-512
            BF16 / AMX and on GPUs this is faster; its accuracy effect is measured in docs/results.md.
            Validation and evaluation stay in float32. With more than one second-order inner step the
            bfloat16 meta-gradient is unreliable (a warning says so; bench/bf16_gradient.py).
        cpu_caching_allocator: on a CPU device, :func:`quickstudy.cpu_allocator.enable_caching_allocator`
            when ``fit`` starts: freed tensors are kept for reuse instead of going back to ``malloc``
            (no page faults after the first step, a smaller resident set). Process-wide and exact.
            Without a C++ compiler to build it, a warning says so and training goes on without it.
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
    ):
        if not isinstance(learner, nn.Module) or not callable(getattr(learner, "meta_backward", None)):
            raise TypeError(f"Trainer: learner must be a MetaLearner with meta_backward(batch), got {type(learner).__name__}")
        if not hasattr(train_tasks, "__getitem__"):
            raise TypeError(f"Trainer: train_tasks must support train_tasks[i] -> TaskBatch, got {type(train_tasks).__name__}")
        if val_tasks is not None and not hasattr(val_tasks, "__getitem__"):
            raise TypeError(f"Trainer: val_tasks must support val_tasks[i] -> TaskBatch, got {type(val_tasks).__name__}")
        self.steps = check_int("Trainer", "steps", steps)
        available = _length(train_tasks)
        if available is not None and available < self.steps:
            raise ValueError(f"Trainer: train_tasks holds {available} batches but steps={self.steps} needs one per step")
        self.lr = check_number("Trainer", "lr", lr)
        self.grad_clip = check_number("Trainer", "grad_clip", grad_clip, allow_none=True)
        self.val_every = check_int("Trainer", "val_every", val_every, allow_none=True)
        self.val_episodes = check_int("Trainer", "val_episodes", val_episodes)
        self.log_every = check_int("Trainer", "log_every", log_every)
        self.checkpoint_every = check_int("Trainer", "checkpoint_every", checkpoint_every, allow_none=True)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"Trainer: seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        if progress is not None and not isinstance(progress, bool):
            raise ValueError(f"Trainer: progress must be True, False or None, got {progress!r}")
        self.progress = progress
        self.device = torch.device(device)
        self.out = None if out is None else Path(out)
        self.tensorboard = bool(tensorboard)
        if precision not in PRECISIONS:
            raise ValueError(f"Trainer: precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
        self.precision = precision
        if precision == "bfloat16" and getattr(learner, "inner_steps", 1) > 1 and getattr(learner, "first_order", True) is False:
            import warnings

            warnings.warn(
                f"Trainer: precision='bfloat16' with {learner.inner_steps} second-order inner steps: the bfloat16 "
                "meta-gradient of a multi-step second-order inner loop is far from the exact one (Conv4 on Omniglot, "
                "5 steps: cosine 0.10 to the float64 gradient, against 0.99 with 1 step; bench/bf16_gradient.py). "
                "Use float32, first_order=True or inner_steps=1", RuntimeWarning, stacklevel=2)
        if precision == "bfloat16" and self.device.type == "cpu" and not cpu_has_fast_bfloat16():
            import warnings

            warnings.warn(
                "Trainer: precision='bfloat16' on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): torch "
                "emulates them and meta-training runs several times slower than in float32 (8x for Conv4 on an "
                "AVX2 EPYC). Use float32 here", RuntimeWarning, stacklevel=2)
        self.cpu_caching_allocator = bool(cpu_caching_allocator)
        self.callbacks = list(callbacks)
        self.learner = learner.to(self.device)
        self.train_tasks, self.val_tasks = train_tasks, val_tasks
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.optimizer_spec, self.schedule_spec = optimizer, schedule
        self.optimizer = self._build_optimizer(optimizer)
        self.scheduler = self._build_scheduler(schedule)
        if learner.task_type not in ("classification", "regression"):
            raise ValueError(f"Trainer: learner.task_type must be 'classification' or 'regression', got {learner.task_type!r}")
        self.monitor, self.mode = ("accuracy", "max") if learner.task_type == "classification" else ("loss", "min")

        # run state (what a checkpoint holds)
        self.step = 0
        self.elapsed = 0.0
        self.best: dict[str, Any] | None = None
        self.history = History()
        self.should_stop = False
        self._window = _Window()
        self._restored = False
        self._best_model: dict[str, torch.Tensor] | None = None
        self._last_val_step: int | None = None
        self._last_saved_step: int | None = None
        self._csv: CSVLogger | None = None
        self._tb: TensorBoardLogger | None = None

    # ------------------------------------------------------------------ construction helpers
    def _build_optimizer(self, spec) -> torch.optim.Optimizer:
        params = [p for p in self.learner.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"Trainer: {type(self.learner).__name__} has no trainable parameters")
        if isinstance(spec, str):
            if spec.lower() not in OPTIMIZERS:
                raise ValueError(f"Trainer: optimizer must be one of {sorted(OPTIMIZERS)}, an Optimizer class or a factory; got {spec!r}")
            factory = OPTIMIZERS[spec.lower()]
        elif callable(spec):
            factory = spec
        else:
            raise ValueError(f"Trainer: optimizer must be a name, an Optimizer class or a factory; got {spec!r}")
        optimizer = factory(params, lr=self.lr, **self.optimizer_kwargs)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Trainer: the optimizer factory returned a {type(optimizer).__name__}, expected a torch.optim.Optimizer")
        return optimizer

    def _build_scheduler(self, spec):
        if spec is None:
            return None
        if isinstance(spec, str):
            if spec == "cosine":
                return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.steps)
            if spec == "step":
                return torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(1, self.steps // 3), gamma=0.1)
            raise ValueError(f"Trainer: schedule must be None, one of {list(SCHEDULES)} or a callable; got {spec!r}")
        if not callable(spec):
            raise ValueError(f"Trainer: schedule must be None, one of {list(SCHEDULES)} or a callable; got {spec!r}")
        scheduler = spec(self.optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise ValueError("Trainer: ReduceLROnPlateau needs a metric at every step and is not supported; use a step-based schedule")
        if not callable(getattr(scheduler, "step", None)) or not callable(getattr(scheduler, "state_dict", None)):
            raise TypeError(f"Trainer: schedule(optimizer) returned a {type(scheduler).__name__}, expected an LR scheduler")
        return scheduler

    def config(self) -> dict[str, Any]:
        """The settings a checkpoint records (plain values); custom optimizers/schedules appear as
        ``None`` / ``"<custom>"`` and must be passed again to :meth:`resume`."""
        optimizer = self.optimizer_spec.lower() if isinstance(self.optimizer_spec, str) else None
        if self.schedule_spec is None or isinstance(self.schedule_spec, str):
            schedule = self.schedule_spec
        else:
            schedule = "<custom>"
        return {
            "steps": self.steps,
            "lr": self.lr,
            "optimizer": optimizer,
            "optimizer_kwargs": self.optimizer_kwargs if _plain(self.optimizer_kwargs) else None,
            "schedule": schedule,
            "grad_clip": self.grad_clip,
            "val_every": self.val_every,
            "val_episodes": self.val_episodes,
            "log_every": self.log_every,
            "checkpoint_every": self.checkpoint_every,
            "device": str(self.device),
            "seed": self.seed,
            "tensorboard": self.tensorboard,
            "precision": self.precision,
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (see :mod:`quickstudy.training.checkpoint`)."""
        learner_cls = type(self.learner)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "best": None if self.best is None else dict(self.best),
            "rng": get_rng_state(),
            "history": [dict(r) for r in self.history.rows],
            "window": self._window.state(),
            "last_val_step": self._last_val_step,
            "elapsed": self.elapsed,
            "trainer": self.config(),
            "learner_class": f"{learner_cls.__module__}.{learner_cls.__qualname__}",
            "torch_version": str(torch.__version__),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write a checkpoint of the current state to ``path`` (atomically)."""
        return save_checkpoint(path, self.state_dict())

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore a state from :meth:`state_dict` (``source`` names it in error messages)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{source} is not a quickstudy trainer checkpoint (format={state.get('format')!r})")
        missing = [k for k in ("step", "model", "optimizer", "scheduler", "rng", "history") if k not in state]
        if missing:
            raise ValueError(f"{source} lacks {missing}: it is not a complete trainer checkpoint")
        step = int(state["step"])
        if step > self.steps:
            raise ValueError(f"{source} is at step {step}, beyond this Trainer's steps={self.steps}")
        try:
            self.learner.load_state_dict(state["model"])
        except RuntimeError as error:
            raise ValueError(f"{source} does not fit {type(self.learner).__name__}: {error}") from error
        self.optimizer.load_state_dict(state["optimizer"])
        if (self.scheduler is None) != (state["scheduler"] is None):
            have = "no schedule" if self.scheduler is None else "a schedule"
            raise ValueError(f"{source} was {'' if state['scheduler'] is not None else 'not '}written with an LR schedule but this Trainer has {have}")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.step = step
        self.best = None if state.get("best") is None else dict(state["best"])
        self.history = History(state["history"], self.best)
        self._window = _Window()
        if state.get("window") is not None:
            self._window.load(state["window"])
        self._last_val_step = state.get("last_val_step")
        self.elapsed = float(state.get("elapsed", 0.0))
        set_rng_state(state["rng"])
        self._best_model = None
        self._restored = True

    def restore(self, path: str | os.PathLike) -> None:
        """Load the checkpoint at ``path`` into this trainer (learner, optimizer, RNGs, history...)."""
        self.load_state_dict(load_checkpoint(path), source=f"checkpoint {str(path)!r}")

    @classmethod
    def resume(cls, out: str | os.PathLike, learner: nn.Module, train_tasks, val_tasks=None, **overrides) -> "Trainer":
        """A Trainer rebuilt from the checkpoint ``out/last.pt`` (or ``out`` itself, a ``.pt`` file),
        with the saved settings (override any with keyword arguments; ``device`` and ``progress`` are
        not taken from the checkpoint); call :meth:`fit` to go on.

        A run trained with a custom optimizer or schedule needs ``optimizer=`` / ``schedule=`` again.
        """
        path = Path(out)
        if path.is_dir() or not path.suffix:
            run_dir, path = path, path / "last.pt"
        else:
            run_dir = path.parent
        state = load_checkpoint(path)
        config = state.get("trainer")
        if not isinstance(config, dict):
            raise ValueError(f"checkpoint {str(path)!r} holds no trainer settings; build the Trainer yourself and call restore()")
        config = dict(config)
        if config.get("optimizer") is None and "optimizer" not in overrides:
            raise ValueError(f"checkpoint {str(path)!r} was trained with a custom optimizer: pass optimizer=... to Trainer.resume")
        if config.get("schedule") == "<custom>" and "schedule" not in overrides:
            raise ValueError(f"checkpoint {str(path)!r} was trained with a custom schedule: pass schedule=... to Trainer.resume")
        if config.get("optimizer_kwargs") is None and "optimizer_kwargs" not in overrides:
            raise ValueError(f"checkpoint {str(path)!r} used optimizer_kwargs that could not be saved: pass optimizer_kwargs=...")
        config.pop("device", None)  # where to run is the caller's choice (default "cpu"), not the run's
        config.update(overrides)
        config.setdefault("out", run_dir)
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
        """Train until ``steps`` updates are done; returns the :class:`History`.

        A fresh run seeds the global generators with ``seed``; the learner is put in ``train()`` mode.

        Args:
            resume: ``True``: continue from ``out/last.pt`` (which must exist); ``"auto"``: continue
                if it exists, else start fresh; a path: continue from that checkpoint.
            overwrite: start a fresh run even if ``out`` already holds one (its files are replaced).
            until: stop after this many completed updates (of ``steps``), e.g. to train in chunks;
                ``last.pt`` is written and a later ``fit(resume=True)`` goes on.
        """
        self._maybe_restore(resume, overwrite)
        until = self.steps if until is None else min(check_int("Trainer", "until", until), self.steps)
        if not self._restored and self.step == 0:
            seed_everything(self.seed)
        if self.cpu_caching_allocator and self.device.type == "cpu":
            _enable_caching_allocator()
        self._open_loggers()
        self.should_stop = False
        self.learner.train()
        self._callback("on_fit_start", self)
        from tqdm.auto import tqdm

        bar = tqdm(total=self.steps, initial=self.step, desc="meta-train", unit="step", file=sys.stderr,
                   disable=None if self.progress is None else not self.progress, dynamic_ncols=True, smoothing=0.05)
        started, elapsed_before = time.perf_counter(), self.elapsed
        ema: dict[str, float] = {}
        try:
            while self.step < until and not self.should_stop:
                index = self.step
                tick = time.perf_counter()
                batch = self.train_tasks[index]
                if not isinstance(batch, TaskBatch):
                    raise TypeError(f"train_tasks[{index}] returned a {type(batch).__name__}; expected a TaskBatch")
                lr = float(self.optimizer.param_groups[0]["lr"])
                metrics = self._update(index, batch.to(self.device))
                self.step = index + 1
                self.elapsed = elapsed_before + time.perf_counter() - started
                self._window.add(metrics, batch.batch_size, time.perf_counter() - tick)
                for key in ("loss", "accuracy"):
                    if key in metrics:
                        ema[key] = metrics[key] if key not in ema else 0.9 * ema[key] + 0.1 * metrics[key]
                self._callback("on_step_end", self, self.step, metrics)
                if self.step % self.log_every == 0:
                    self._log(self._window.row(self.step, lr, self.elapsed))
                if self.val_tasks is not None and self.val_every is not None and self.step % self.val_every == 0:
                    self.validate()
                if self.step == self.steps or self.should_stop:
                    self._finish(lr)
                if self.out is not None and self.checkpoint_every is not None and self.step % self.checkpoint_every == 0:
                    self._save_last()
                bar.update(1)
                rate = batch.batch_size / max(time.perf_counter() - tick, 1e-9)
                ema["tasks/s"] = rate if "tasks/s" not in ema else 0.9 * ema["tasks/s"] + 0.1 * rate
                self._postfix(bar, ema)
            if self.step == self.steps and self._last_val_step != self.steps and self.val_tasks is not None:
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
            bar.close()
            self._close_loggers()
        self.history.best = self.best
        self._callback("on_fit_end", self, self.history)
        return self.history

    def _finish(self, lr: float) -> None:
        """End of training: log the partial window and run the final validation."""
        if self._window.count:
            self._log(self._window.row(self.step, lr, self.elapsed))
        if self.val_tasks is not None and self._last_val_step != self.step:
            self.validate()

    def _update(self, index: int, batch: TaskBatch) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.precision):
            raw = self.learner.meta_backward(batch)
        if not isinstance(raw, dict) or "loss" not in raw:
            raise TypeError(f"{type(self.learner).__name__}.meta_backward must return a dict of floats with 'loss', got {raw!r}")
        metrics = {}
        for key, value in raw.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[key] = float(value)
        loss = metrics["loss"]
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss}) at step {index} (train_tasks[{index}], {batch.batch_size} tasks, "
                f"lr {self.optimizer.param_groups[0]['lr']:g}): the meta-loss diverged or the batch is bad. The update "
                "was not applied; try a lower lr, grad_clip=..., or check that batch's data",
                step=index,
                tensor="loss",
            )
        metrics["grad_norm"] = self._check_and_clip(index, loss)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return metrics

    def _check_and_clip(self, index: int, loss: float) -> float:
        named = [(name, p) for name, p in self.learner.named_parameters() if p.grad is not None]
        if not named:
            raise ValueError(
                f"{type(self.learner).__name__}.meta_backward left no gradient on any parameter at step {index}: "
                "nothing to optimise (is the meta-loss detached from the parameters?)"
            )
        grads = [p.grad for _, p in named]
        total = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
        norm = float(total)
        if not math.isfinite(norm):
            bad = []
            for name, p in named:
                finite = torch.isfinite(p.grad)
                if not bool(finite.all()):
                    nans = int(torch.isnan(p.grad).sum())
                    bad.append(f"{name!r} (shape {tuple(p.shape)}: {nans} NaN and {int((~finite).sum()) - nans} inf "
                               f"of {p.grad.numel()} gradient entries)")
            if bad:
                first = bad[0].split("'")[1]
                also = f"; also {', '.join(bad[1:4])}{' ...' if len(bad) > 4 else ''}" if len(bad) > 1 else ""
                raise NonFiniteLossError(
                    f"non-finite gradient at step {index} (train_tasks[{index}]): parameter {bad[0]}, "
                    f"with a finite loss {loss:.6g}{also}. The update was not applied; try a lower lr, "
                    "grad_clip=..., or look for a log/div/sqrt of 0 in the model",
                    step=index,
                    tensor=first,
                )
            total = torch.nn.utils.get_total_norm([g.double() for g in grads], norm_type=2.0)
            norm = float(total)
            if not math.isfinite(norm):
                raise NonFiniteLossError(
                    f"the gradient norm overflows at step {index} (train_tasks[{index}]) although every gradient is "
                    "finite: training has diverged; lower lr or set grad_clip",
                    step=index,
                    tensor="grad_norm",
                )
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_([p for _, p in named], self.grad_clip, total)
        return norm

    def validate(self) -> EvalResult:
        """Score the learner on the fixed validation tasks now; log it and keep the best."""
        if self.val_tasks is None:
            raise ValueError("Trainer.validate: no val_tasks were given")
        with _preserved_rng():
            result = evaluate(self.learner, self.val_tasks, episodes=self.val_episodes, device=self.device, progress=False)
        row: dict[str, Any] = {"step": self.step, "split": "val"}
        row.update(result.metrics)
        row.update(ci95=result.ci95, lr=float(self.optimizer.param_groups[0]["lr"]), elapsed=self.elapsed)
        self._log(row)
        self._last_val_step = self.step
        value = float(result.metrics[self.monitor])
        improved = self.best is None or (value > self.best["value"] if self.mode == "max" else value < self.best["value"])
        if improved:
            self.best = {"step": self.step, "metric": self.monitor, "value": value, "mode": self.mode}
            self.history.best = self.best
            if self.out is not None:
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
                        "fit(overwrite=True) to start over, or another out directory"
                    )
                for name in ("last.pt", "best.pt"):  # stale checkpoints of the run being replaced
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
            raise FileNotFoundError(f"fit(resume=True): no checkpoint at {str(last)!r}; use resume='auto' to start fresh when there is none")

    def _open_loggers(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._csv = CSVLogger(self.out / "metrics.csv")
        self._csv.rewrite(self.history.rows)  # fresh: header only; resumed: drop rows after the checkpoint
        if self.tensorboard:
            tb_dir = self.out / "tensorboard"
            # hide events an earlier (interrupted or overwritten) run logged after our current step
            purge = self.step + 1 if self.step > 0 else (0 if tb_dir.is_dir() and any(tb_dir.iterdir()) else None)
            self._tb = TensorBoardLogger.create(tb_dir, purge_step=purge)

    def _close_loggers(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self._csv is not None:
            self._csv.log(row)
        if self._tb is not None:
            self._tb.log(row)

    def _save_last(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        path = self.save(self.out / "last.pt")
        self._last_saved_step = self.step
        self._callback("on_checkpoint", self, path)

    def _callback(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args)

    def _postfix(self, bar, ema: dict[str, float]) -> None:
        if bar.disable:
            return
        parts = {}
        if "loss" in ema:
            parts["loss"] = f"{ema['loss']:.4f}"
        if "accuracy" in ema:
            parts["acc"] = f"{ema['accuracy']:.3f}"
        if "tasks/s" in ema:
            parts["tasks/s"] = f"{ema['tasks/s']:.1f}"
        if self.best is not None:
            parts[f"best val {self.monitor}"] = f"{self.best['value']:.4f}"
        bar.set_postfix(parts, refresh=False)

    def __repr__(self) -> str:
        return (f"Trainer({type(self.learner).__name__}, step={self.step}/{self.steps}, lr={self.lr:g}, "
                f"optimizer={self.optimizer_spec!r}, out={str(self.out) if self.out else None!r})")
