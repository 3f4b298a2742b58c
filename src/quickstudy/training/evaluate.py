"""Evaluation on fixed, seeded test episodes: accuracy (or MSE) with a 95% confidence interval.

``evaluate(learner, tasks, episodes=600)`` walks ``tasks[0], tasks[1], ...`` (each a
:class:`~quickstudy.TaskBatch` of B tasks) until ``episodes`` *tasks* have been seen; the last batch
is cut to size. Because a sampler's ``tasks[i]`` depends only on its seed and ``i``, the same call
always scores the same episodes.

For every task it computes, from ``learner.predict(batch, steps)``:

* classification: accuracy, cross-entropy loss, macro precision / recall / F1 (from the task's
  confusion matrix, see :mod:`quickstudy.training.metrics`);
* regression: mean squared error over the query points (also reported as ``loss``).

and reports the mean over tasks with ``ci95 = 1.96 * s / sqrt(n)`` where ``s`` is the sample
standard deviation (ddof=1) of the per-task values.

Autograd stays on: gradient-based learners differentiate in their inner loop and ``predict`` is
responsible for not building the meta-graph. The learner is put in ``eval()`` mode for the
duration and every submodule's own mode is restored afterwards.
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_int
from ..tasks.batch import TaskBatch
from .distributed import data_parallel_for
from .metrics import confusion_matrix, macro_prf_from_confusion, mean_ci95

__all__ = ["EvalResult", "evaluate", "evaluate_regression_steps"]


@dataclass
class EvalResult:
    """Mean and 95% confidence interval of the headline metric over ``n`` tasks.

    Attributes:
        mean: mean of the headline metric (``metric``) over the tasks.
        ci95: ``1.96 * std / sqrt(n)``, sample std (ddof=1); ``nan`` when ``n == 1``.
        n: number of tasks (episodes) evaluated.
        metric: ``"accuracy"`` (classification) or ``"mse"`` (regression).
        metrics: mean of every per-task metric: ``accuracy, loss, precision, recall, f1`` or
            ``mse, loss``.
        metrics_ci95: the 95% half-width of each entry of ``metrics``.
        per_episode: the headline metric of each task, in episode order.
        steps: the inner-loop steps used (``None``: the learner's default).
    """

    mean: float
    ci95: float
    n: int
    metric: str = "accuracy"
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_ci95: dict[str, float] = field(default_factory=dict)
    per_episode: list[float] | None = None
    steps: int | None = None

    def to_dict(self, per_episode: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (``nan`` becomes ``None``); ``per_episode=False`` leaves the list out."""
        data = asdict(self)
        if not per_episode:
            data.pop("per_episode")
        return _json_safe(data)

    def to_json(self, per_episode: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(per_episode=per_episode), indent=indent)

    def __str__(self) -> str:
        if self.metric == "accuracy":
            text = f"accuracy {100 * self.mean:.2f}% ± {100 * self.ci95:.2f}%"
        else:
            text = f"{self.metric} {self.mean:.4g} ± {self.ci95:.2g}"
        steps = "" if self.steps is None else f", {self.steps} steps"
        return f"{text} (95% CI, {self.n} tasks{steps})"


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- helpers
@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode; restore each submodule's own ``training`` flag afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _length(tasks) -> int | None:
    """Number of batches of a finite task source, ``None`` for an infinite one."""
    try:
        return len(tasks)
    except TypeError:
        return None


def _learner_device(learner: nn.Module) -> torch.device:
    for tensor in learner.parameters():
        return tensor.device
    for tensor in learner.buffers():
        return tensor.device
    return torch.device("cpu")


def iterate_tasks(tasks, episodes: int, batch_size: int | None = None) -> Iterator[TaskBatch]:
    """``tasks[0], tasks[1], ...`` cut so that exactly ``episodes`` tasks come out, in chunks of at
    most ``batch_size`` tasks (``None``: as the source batches them)."""
    check_int("evaluate", "episodes", episodes)
    check_int("evaluate", "batch_size", batch_size, allow_none=True)
    available = _length(tasks)
    seen, index = 0, 0
    while seen < episodes:
        if available is not None and index >= available:
            raise ValueError(
                f"episodes={episodes} asks for more tasks than the task source holds: it has {available} "
                f"batches ({seen} tasks); pass fewer episodes or a larger source"
            )
        batch = tasks[index]
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"tasks[{index}] returned a {type(batch).__name__}; expected a TaskBatch")
        take = min(batch.batch_size, episodes - seen)
        if take < batch.batch_size:
            batch = batch.slice(0, take)
        step = batch_size or take
        for start in range(0, take, step):
            yield batch.slice(start, min(start + step, take)) if step < take else batch
        seen += take
        index += 1


def _episode_stats(outputs: Tensor, batch: TaskBatch, learner: nn.Module) -> dict[str, Tensor]:
    """Per-task metrics ``{name: [B] float64}`` of one batch's query outputs."""
    name = type(learner).__name__
    outputs = outputs.detach()
    target = batch.query_y
    tasks, queries = target.shape[0], target.shape[1]
    if batch.is_classification:
        if outputs.dim() != 3 or tuple(outputs.shape[:2]) != (tasks, queries):
            raise ValueError(
                f"{name}.predict returned shape {tuple(outputs.shape)} for a classification batch with "
                f"query_y {tuple(target.shape)}: expected logits [B={tasks}, N*Q={queries}, N]"
            )
        ways = outputs.shape[-1]
        if batch.ways is not None and ways != batch.ways:
            raise ValueError(f"{name}.predict returned {ways} logits per query for a {batch.ways}-way batch")
        logits = outputs.to(torch.float64)
        pred = logits.argmax(dim=-1)
        accuracy = (pred == target).to(torch.float64).mean(dim=1)
        loss = F.cross_entropy(logits.reshape(-1, ways), target.reshape(-1), reduction="none")
        loss = loss.reshape(tasks, queries).mean(dim=1)
        precision, recall, f1 = macro_prf_from_confusion(confusion_matrix(pred, target, ways))
        return {"accuracy": accuracy, "loss": loss, "precision": precision, "recall": recall, "f1": f1}
    if outputs.shape != target.shape:
        raise ValueError(
            f"{name}.predict returned shape {tuple(outputs.shape)} for a regression batch with query_y "
            f"{tuple(target.shape)}: they must match exactly (no broadcasting)"
        )
    error = (outputs.to(torch.float64) - target.to(torch.float64)) ** 2
    mse = error.reshape(tasks, -1).mean(dim=1)
    return {"mse": mse, "loss": mse}


def _summarise(stats: dict[str, list[Tensor]], steps: int | None) -> EvalResult:
    columns = {key: torch.cat(values).cpu() for key, values in stats.items()}
    headline = "accuracy" if "accuracy" in columns else "mse"
    metrics, halfwidths = {}, {}
    for key, values in columns.items():
        metrics[key], halfwidths[key] = mean_ci95(values)
    return EvalResult(
        mean=metrics[headline],
        ci95=halfwidths[headline],
        n=int(columns[headline].numel()),
        metric=headline,
        metrics=metrics,
        metrics_ci95=halfwidths,
        per_episode=columns[headline].tolist(),
        steps=steps,
    )


def _run(learner, tasks, episodes, batch_size, steps_list: Sequence[int | None], device, progress, desc,
         distributed=None):
    if not isinstance(learner, nn.Module):
        raise TypeError(f"learner must be a MetaLearner (an nn.Module), got {type(learner).__name__}")
    device = _learner_device(learner) if device is None else torch.device(device)
    stats: list[dict[str, list[Tensor]]] = [{} for _ in steps_list]
    parallel = data_parallel_for(distributed, device, owner="evaluate")
    positions, seen, classification = [], 0, True  # with several processes: each local task's episode number
    progress = progress and (parallel is None or parallel.is_main)
    from tqdm.auto import tqdm

    bar = tqdm(total=episodes, desc=desc, unit="task", file=sys.stderr, disable=not progress, leave=False,
               dynamic_ncols=True)
    # randomness inside predict (Reptile's eval mini-batches) comes from a fixed seed: the same checkpoint
    # always gets the same score, and the caller's generator does not move
    try:
        with eval_mode(learner), torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(0)
            for batch in iterate_tasks(tasks, episodes, batch_size):
                whole, classification = batch.batch_size, batch.is_classification
                if parallel is not None:  # this rank scores its share of the batch
                    start, stop = parallel.bounds(whole)
                    positions.append(torch.arange(seen + start, seen + stop))
                    batch, seen = batch.slice(start, stop), seen + whole
                batch = batch.to(device)
                for slot, steps in enumerate(steps_list if batch.batch_size else ()):
                    outputs = learner.predict(batch, steps=steps)
                    with torch.no_grad():
                        per_task = _episode_stats(outputs, batch, learner)
                    for key, values in per_task.items():
                        if not bool(torch.isfinite(values).all()):
                            bad = int(torch.nonzero(~torch.isfinite(values))[0])
                            episode = "" if batch.episode_ids is None else f" (episode id {int(batch.episode_ids[bad])})"
                            raise ValueError(
                                f"evaluate: {type(learner).__name__} produced a non-finite {key} "
                                f"({float(values[bad])}) on a task{episode}"
                            )
                        stats[slot].setdefault(key, []).append(values)
                bar.update(whole)
    finally:
        bar.close()
    if parallel is not None:
        stats = [_gather(parallel, s, positions, _STAT_KEYS[classification]) for s in stats]
    return [_summarise(s, steps) for s, steps in zip(stats, steps_list)]


_STAT_KEYS = {True: ("accuracy", "loss", "precision", "recall", "f1"), False: ("mse", "loss")}


def _gather(parallel, stats: dict[str, list[Tensor]], positions: list[Tensor],
            keys: Sequence[str]) -> dict[str, list[Tensor]]:
    """Every rank's per-task metrics, in episode order: what one process scoring every task would hold."""
    mine = torch.stack([torch.cat(stats[k]).cpu() if stats.get(k) else torch.zeros(0, dtype=torch.float64)
                        for k in keys], dim=1)
    everyone = parallel.gather_rows(mine, torch.cat(positions) if positions else torch.zeros(0, dtype=torch.int64))
    return {key: [everyone[:, i]] for i, key in enumerate(keys)}


# --------------------------------------------------------------------------- public API
def evaluate(
    learner: nn.Module,
    tasks,
    episodes: int = 600,
    batch_size: int | None = None,
    steps: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    distributed: Any = False,
) -> EvalResult:
    """Score ``learner`` on the first ``episodes`` tasks of ``tasks`` (see the module docstring).

    Args:
        learner: a :class:`~quickstudy.algorithms.base.MetaLearner`.
        tasks: random-access task source: ``tasks[i]`` is a TaskBatch (a sampler, a list, ...).
        episodes: number of *tasks* to score (not batches).
        batch_size: at most this many tasks per ``predict`` call (bounds memory); ``None``: the
            source's batches as they come. Does not change which tasks are scored.
        steps: inner-loop steps passed to ``predict`` (``None``: the learner's default).
        device: where batches are moved (``None``: the device of the learner's parameters).
        progress: show a tqdm bar on stderr.
        distributed: score the tasks on several processes (each its share of every batch, the per-task results
            gathered on all of them): ``True``, ``"auto"`` (when launched by torchrun) or a
            :class:`~.distributed.DataParallel`, as the Trainer's argument.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"steps must be a non-negative integer or None, got {steps!r}")
    return _run(learner, tasks, episodes, batch_size, [steps], device, progress, "evaluate", distributed)[0]


def evaluate_regression_steps(
    learner: nn.Module,
    tasks,
    episodes: int = 600,
    max_steps: int = 10,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    distributed: Any = False,
) -> list[EvalResult]:
    """Results after ``0, 1, ..., max_steps`` adaptation steps on the same tasks (the MAML sinusoid
    protocol: MSE ± 95% CI as a function of the number of gradient steps at test time).

    Returns a list of ``max_steps + 1`` :class:`EvalResult`; entry ``k`` used ``predict(batch,
    steps=k)`` and has ``.steps == k``. Works for classification too (accuracy per step).
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    steps_list = list(range(max_steps + 1))
    return _run(learner, tasks, episodes, batch_size, steps_list, device, progress, "evaluate steps", distributed)
