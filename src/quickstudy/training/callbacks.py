"""What happens around the training loop, as callbacks: progress, logs, time limits; and the run's history.

A callback is any object with some of these methods (subclass :class:`Callback` for the no-op defaults)::

    on_fit_start(trainer)                         on_step_end(trainer, step, metrics)
    on_log(trainer, row)                          on_validation_end(trainer, step, result)
    on_checkpoint(trainer, path)                  on_fit_end(trainer, history)

Set ``trainer.should_stop = True`` to end training after the current step (validated and checkpointed).
The trainer adds :class:`ProgressBar` and :class:`MetricsLogger` itself (on the process that logs, in a
distributed run) and :class:`DivergenceMonitor` (unless one is given); :class:`TimeLimit` for a time budget.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

from .._validation import check_bool, check_int, check_number
from .logging import CSV_COLUMNS, CSVLogger, TensorBoardLogger

if TYPE_CHECKING:  # pragma: no cover
    from .evaluate import EvalResult
    from .trainer import Trainer

__all__ = ["Callback", "History", "RunningWindow", "TimeLimit", "ProgressBar", "MetricsLogger", "DivergenceMonitor",
           "DivergenceWarning", "DivergenceError"]


class Callback:
    """Hooks into :meth:`Trainer.fit`; override any of them (see the module docstring)."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None: ...

    def on_log(self, trainer: "Trainer", row: dict[str, Any]) -> None: ...

    def on_validation_end(self, trainer: "Trainer", step: int, result: "EvalResult") -> None: ...

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


class RunningWindow:
    """Running sums of the metrics since the last logged row (saved in checkpoints, so a resumed run logs the
    same rows as one that never stopped)."""

    def __init__(self) -> None:
        self.count, self.tasks, self.seconds, self.sums = 0, 0, 0.0, {}

    def add(self, metrics: dict[str, float], tasks: int, seconds: float) -> None:
        self.count += 1
        self.tasks += tasks
        self.seconds += seconds
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def row(self, step: int, lr: float | None, elapsed: float) -> dict[str, Any]:
        row: dict[str, Any] = {"step": step, "split": "train"}
        row.update({key: total / self.count for key, total in self.sums.items()})
        row.update(lr=lr, tasks_per_s=self.tasks / self.seconds if self.seconds > 0 and self.tasks else None,
                   elapsed=elapsed)
        self.__init__()
        return row

    def state(self) -> dict[str, Any]:
        return {"count": self.count, "tasks": self.tasks, "seconds": self.seconds, "sums": dict(self.sums)}

    def load(self, state: dict[str, Any]) -> None:
        self.count, self.tasks = int(state["count"]), int(state["tasks"])
        self.seconds, self.sums = float(state["seconds"]), {k: float(v) for k, v in state["sums"].items()}


class TimeLimit(Callback):
    """Stop training (after validating and checkpointing) once ``seconds`` of training have passed, counted
    across resumes (``trainer.elapsed``)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        if trainer.elapsed >= self.seconds:
            trainer.should_stop = True


class ProgressBar(Callback):
    """A tqdm bar on stderr with the smoothed loss, accuracy and tasks/s (``enabled=None``: on a terminal only).
    ``postfix`` names the metrics shown beside the bar (``{metric: label}``)."""

    def __init__(self, enabled: bool | None = None, desc: str = "meta-train", postfix: dict[str, str] | None = None):
        self.enabled, self.desc = enabled, desc
        self.postfix = postfix or {"loss": "loss", "accuracy": "acc"}
        self.bar, self.ema = None, {}

    def on_fit_start(self, trainer: "Trainer") -> None:
        from tqdm.auto import tqdm

        self.ema = {}
        self.bar = tqdm(total=trainer.steps, initial=trainer.step, desc=self.desc, unit="step", file=sys.stderr,
                        disable=None if self.enabled is None else not self.enabled, dynamic_ncols=True, smoothing=0.05)

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if self.bar.disable:
            return
        values = dict(metrics)
        if trainer.last_rate is not None:
            values["tasks/s"] = trainer.last_rate
        for key in list(self.postfix) + ["tasks/s"]:
            if key in values:
                self.ema[key] = values[key] if key not in self.ema else 0.9 * self.ema[key] + 0.1 * values[key]
        parts = {label: f"{self.ema[key]:.4g}" for key, label in self.postfix.items() if key in self.ema}
        if "tasks/s" in self.ema:
            parts["tasks/s"] = f"{self.ema['tasks/s']:.1f}"
        if trainer.best is not None:
            parts[f"best val {trainer.best['metric']}"] = f"{trainer.best['value']:.4f}"
        self.bar.set_postfix(parts, refresh=False)

    def on_fit_end(self, trainer: "Trainer", history: "History") -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsLogger(Callback):
    """Writes every logged row to ``out/metrics.csv`` (fixed ``columns``) and, when installed, TensorBoard under
    ``out/tensorboard``. On resume, rows logged after the checkpoint are dropped from both."""

    def __init__(self, out: Path, columns: Sequence[str] = CSV_COLUMNS, tensorboard: bool = True):
        self.out, self.columns, self.tensorboard = Path(out), tuple(columns), tensorboard
        self.csv: CSVLogger | None = None
        self.tb: TensorBoardLogger | None = None

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv = CSVLogger(self.out / "metrics.csv", self.columns)
        self.csv.rewrite(trainer.history.rows)  # fresh: header only; resumed: drop rows after the checkpoint
        if self.tensorboard:
            tb_dir = self.out / "tensorboard"
            # hide events an earlier (interrupted or overwritten) run logged after our current step
            purge = trainer.step + 1 if trainer.step > 0 else (0 if tb_dir.is_dir() and any(tb_dir.iterdir()) else None)
            self.tb = TensorBoardLogger.create(tb_dir, purge_step=purge)

    def on_log(self, trainer: "Trainer", row: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.log(row)
        if self.tb is not None:
            self.tb.log(row)

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None:
        if self.tb is not None:
            self.tb.flush()

    def on_fit_end(self, trainer: "Trainer", history: "History") -> None:
        self.close()

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()
            self.csv = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class DivergenceWarning(RuntimeWarning):
    """Training is diverging (or not learning) while every number is still finite; see :class:`DivergenceMonitor`."""


class DivergenceError(ValueError):
    """Raised by ``DivergenceMonitor(strict=True)``; ``step`` is the step the problem was seen at."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class DivergenceMonitor(Callback):
    """Reports, naming the step, training that goes wrong while staying finite (a NaN or an infinity already
    stops the trainer):

    * the training loss above ``loss_factor`` times the run's first loss;
    * the norm of the trainable weights above ``weight_factor`` times its value when ``fit`` started (checked every
      ``every`` steps and at the last);
    * validation accuracy at chance (the 95% CI reaches 1/ways) after warm-up: from ``warmup`` (a fraction of the
      steps) on, and never at the run's first validation.

    Each problem is reported once per ``fit``, as a :class:`DivergenceWarning`; ``strict=True`` raises
    :class:`DivergenceError` instead, which ends the run (``last.pt`` keeps the checkpoint before it).
    """

    def __init__(self, strict: bool = False, loss_factor: float = 100.0, weight_factor: float = 100.0,
                 warmup: float = 0.1, every: int = 10):
        self.strict = check_bool("DivergenceMonitor", "strict", strict)
        self.loss_factor = check_number("DivergenceMonitor", "loss_factor", loss_factor)
        self.weight_factor = check_number("DivergenceMonitor", "weight_factor", weight_factor)
        self.warmup = check_number("DivergenceMonitor", "warmup", warmup, allow_zero=True)
        self.every = check_int("DivergenceMonitor", "every", every)
        self.reported: set[str] = set()
        self.reference_loss: float | None = None
        self.reference_norm = 0.0
        self.validations = 0

    def on_fit_start(self, trainer: "Trainer") -> None:
        self.reported = set()
        first = next((r.get("loss") for r in trainer.history.rows if r.get("split") == "train"), None)
        self.reference_loss = float(first) if first is not None and math.isfinite(first) else None
        self.reference_norm = _weight_norm(trainer.learner)
        self.validations = sum(1 for r in trainer.history.rows if r.get("split") == "val")

    def on_step_end(self, trainer: "Trainer", step: int, metrics: dict[str, float]) -> None:
        loss = metrics.get("loss")
        if loss is not None and math.isfinite(loss):
            reference = self.reference_loss
            if reference is None:
                self.reference_loss = loss
            elif reference > 0 and loss > self.loss_factor * reference:
                self._report("loss", step, f"the training loss ({loss:.3g}) is {loss / reference:.2g} times its "
                             f"starting value ({reference:.3g}) while still finite: training is diverging; lower the "
                             "learning rate (train.lr) or clip the gradient (train.grad_clip)")
        if step % self.every == 0 or step == trainer.steps:
            norm = _weight_norm(trainer.learner)
            if self.reference_norm > 0 and math.isfinite(norm) and norm > self.weight_factor * self.reference_norm:
                self._report("weights", step, f"the weights' norm ({norm:.3g}) is {norm / self.reference_norm:.2g} "
                             f"times its starting value ({self.reference_norm:.3g}): training is diverging; lower "
                             "the learning rate (train.lr) or clip the gradient (train.grad_clip)")

    def on_validation_end(self, trainer: "Trainer", step: int, result: "EvalResult") -> None:
        self.validations += 1
        if getattr(result, "metric", None) != "accuracy" or self.validations == 1 or step < self.warmup * trainer.steps:
            return
        ways = _ways(trainer.val_tasks)
        if not ways or ways < 2:
            return
        chance = 1.0 / ways
        spread = result.ci95 if math.isfinite(result.ci95) else 0.0
        if result.mean - spread <= chance:
            self._report("chance", step, f"validation accuracy {result.mean:.3f} ± {spread:.3f} is chance for "
                         f"{ways}-way tasks (1/{ways} = {chance:.3f}) after {step} of {trainer.steps} steps: the "
                         "model is not learning; check the learning rate (train.lr) and the data")

    def _report(self, problem: str, step: int, text: str) -> None:
        if problem in self.reported:
            return
        self.reported.add(problem)
        message = f"step {step}: {text}"
        if self.strict:
            raise DivergenceError(f"{message} (stopped: strict)", step)
        warnings.warn(DivergenceWarning(message), stacklevel=2)


def _weight_norm(learner: Any) -> float:
    norms = [p.detach().float().norm() for p in learner.parameters() if p.requires_grad]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _ways(tasks: Any) -> int | None:
    """The number of classes of a validation source's tasks (``None`` when it does not say)."""
    ways = getattr(tasks, "ways", None)
    if ways is None and tasks is not None:
        try:
            ways = getattr(tasks[0], "ways", None)
        except Exception:  # noqa: BLE001 - a source without index 0 simply has no known ways
            ways = None
    return ways if isinstance(ways, int) else None
