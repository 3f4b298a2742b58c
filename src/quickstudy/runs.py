"""Run folders: the shell every task kind shares (train, resume, evaluate, report), dispatched by kind.

A run folder holds::

    config.yaml     the resolved config (every default written out; its ``kind`` says who runs it)
    metrics.csv     training (and validation) rows; tensorboard/ when installed
    last.pt         the checkpoint to resume from (last.prev.pt the one before); best.pt the best validated weights
    eval.json       the last evaluation's result

The kind of a run is decided once, from its config (:func:`quickstudy.tasks.kinds.kind_of`); the kind's
module builds the tasks and the learner and trains them with the shared :class:`~quickstudy.Trainer`.

What this shell guarantees for every kind (docs/reliability.md):

* one command at a time works in a folder (``train``, ``resume``, ``eval`` hold it: :mod:`quickstudy.run_lock`);
* ``train`` into a folder that holds a run is refused unless ``overwrite=True`` (``resume`` continues one);
* a command that fails leaves every file as it was: the resolved config is written (atomically) only once the
  kind has built everything it names and, on resume, the checkpoint has been restored (:class:`_CommitRun`);
* training that diverges while staying finite is reported naming the step (``strict=True`` stops it).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch
import yaml

from ._atomic import atomic_write_text
from .run_lock import hold_run_folder
from .tasks.kinds import TaskKind, kind_of
from .training.callbacks import Callback, DivergenceMonitor
from .training.distributed import DataParallel, is_main_process, launched_by_torchrun

__all__ = ["train_run", "evaluate_run", "report_run", "format_eval", "open_run_dir", "run_kind", "machine_info",
           "choose_threads", "resolve_device", "run_files", "check_no_run", "RUN_MARKERS"]

#: Files whose presence means a folder holds a run.
RUN_MARKERS = ("config.yaml", "last.pt", "best.pt", "metrics.csv")
# results of a run that a new run in the same folder would not replace (checkpoints, metrics.csv and
# tensorboard/ are replaced by the Trainer); a kind lists its own in RESULT_FILES
_RESULT_FILES = ("eval.json", "report.md")


def run_kind(config_or_run: str | os.PathLike | dict | None) -> TaskKind:
    """The task kind of a config file, a raw config dict or a run folder."""
    return kind_of(config_or_run)


def run_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of :data:`RUN_MARKERS` that ``run_dir`` holds (none: it holds no run)."""
    run_dir = Path(run_dir)
    return [name for name in RUN_MARKERS if (run_dir / name).exists()]


def check_no_run(run_dir: str | os.PathLike) -> None:
    """``FileExistsError`` when ``run_dir`` already holds a run: training into it would lose that run."""
    present = run_files(run_dir)
    if present:
        raise FileExistsError(
            f"{str(run_dir)!r} already holds a run ({', '.join(present)}): continue it with `quickstudy resume "
            f"{run_dir}`, replace it with --overwrite (overwrite=True), or train into another folder")


def _run_folder(run_dir: str | os.PathLike | None) -> Path:
    if run_dir is None:
        raise ValueError("resume needs the run folder")
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    return run_dir


class _CommitRun(Callback):
    """Writes the run's resolved config (and removes a replaced run's results) when training starts: after the
    kind has built the tasks, the learner and the Trainer from the config, and after a resumed run's checkpoint
    was restored. A command that fails before then leaves every file in the folder as it was."""

    def __init__(self, run_dir: Path, resolved: dict | None, stale: Sequence[str] = ()):
        self.run_dir, self.resolved, self.stale, self.done = run_dir, resolved, tuple(stale), False

    def on_fit_start(self, trainer: Any) -> None:
        if self.done or not is_main_process():  # under torchrun, rank 0 writes the run folder
            return
        for name in self.stale:
            path = self.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        if self.resolved is not None:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.resolved, sort_keys=False))
        self.done = True


def open_run_dir(load: Callable, config_path, overrides: list[str] | None, raw: dict | None, out, resume: bool,
                 resume_overrides: list[str]) -> tuple[Any, Path]:
    """``(config, run folder)`` with the resolved config written to ``run/config.yaml`` at once (kept for code
    written against it: :func:`train_run` no longer uses it, since it writes the config before the kind has
    checked everything the config names). ``load(path, overrides=..., raw=...) -> (config, resolved dict)``."""
    if resume:
        run_dir = _run_folder(out)
        config, resolved = load(run_dir / "config.yaml", overrides=resume_overrides)
        if resume_overrides:
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        return config, run_dir
    config, resolved = load(config_path, overrides=overrides, raw=raw)
    run_dir = Path(out) if out is not None else Path("runs") / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
    return config, run_dir


def _hold(run_dir: Path, purpose: str, create: bool = False) -> ContextManager:
    """The run folder's lock (:mod:`quickstudy.run_lock`), taken by the process that writes: under torchrun, rank 0
    holds it for every process of the command (they would refuse each other)."""
    if is_main_process():
        return hold_run_folder(run_dir, purpose=purpose, create=create)
    return contextlib.nullcontext()


def _check_processes(kind, command: str) -> None:
    """Refuse several processes (torchrun) for a kind that does not share its work among them (``DISTRIBUTED``):
    each would train the whole run and write the same files."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1 and not getattr(kind, "DISTRIBUTED", False):
        raise ValueError(f"{command}: runs of kind {kind.NAME!r} use one process, but torchrun started {processes}; "
                         "run it without torchrun (kinds 'episodes' and 'rl' train on several processes)")


def _train_kind(kind, config, run_dir: Path, commit: _CommitRun, *, resume: bool, progress: bool,
                time_limit: float | None, strict: bool) -> None:
    _check_processes(kind, "resume" if resume else "train")
    callbacks = [commit, DivergenceMonitor(strict=strict)]
    if "callbacks" in inspect.signature(kind.train).parameters:
        kind.train(config, run_dir, resume=resume, progress=progress, time_limit=time_limit, callbacks=callbacks)
    else:  # a kind written before callbacks existed: its config is written first, as run folders once were
        commit.on_fit_start(None)
        kind.train(config, run_dir, resume=resume, progress=progress, time_limit=time_limit)


def train_run(config_path: str | os.PathLike | None, overrides: list[str] | None = None,
              out: str | os.PathLike | None = None, resume: bool = False, steps: int | None = None,
              progress: bool = True, raw: dict | None = None, time_limit: float | None = None,
              overwrite: bool = False, strict: bool = False) -> Path:
    """Train (or, with ``resume=True``, continue) a run of any kind; returns the run folder.

    ``steps`` overrides the kind's length (``train.steps``, ``train.iterations`` for RL); ``time_limit``
    (seconds of training, across resumes) stops early, validated and checkpointed. A folder that already holds a
    run is refused unless ``overwrite``; ``strict`` stops a diverging run instead of warning."""
    if resume:
        run_dir = _run_folder(out)
        with _hold(run_dir, purpose="quickstudy resume"):
            kind = run_kind(run_dir).load()
            extra = [f"{kind.STEPS_KEY}={steps}"] if steps is not None else []
            config, resolved = kind.load_config(run_dir / "config.yaml", overrides=extra)
            if not (run_dir / "last.pt").is_file():
                raise FileNotFoundError(f"{str(run_dir)!r} holds no checkpoint to resume (last.pt is missing): "
                                        "start it again with `quickstudy train CONFIG --out RUN --overwrite`")
            commit = _CommitRun(run_dir, resolved if extra else None)
            _train_kind(kind, config, run_dir, commit, resume=True, progress=progress, time_limit=time_limit,
                        strict=strict)
        return run_dir
    kind = run_kind(raw if raw is not None else config_path).load()
    extra = [f"{kind.STEPS_KEY}={steps}"] if steps is not None else []
    config, resolved = kind.load_config(config_path, overrides=list(overrides or []) + extra, raw=raw)
    run_dir = Path(out) if out is not None else Path("runs") / config.name
    with _hold(run_dir, purpose="quickstudy train", create=True):
        if not overwrite and is_main_process():  # the others would see the run rank 0 has begun to write
            check_no_run(run_dir)
        stale = _RESULT_FILES + tuple(getattr(kind, "RESULT_FILES", ()))
        _train_kind(kind, config, run_dir, _CommitRun(run_dir, resolved, stale), resume=False, progress=progress,
                    time_limit=time_limit, strict=strict)
    return run_dir


def evaluate_run(run_dir: str | os.PathLike, episodes: int | None = None, checkpoint: str = "best",
                 progress: bool = True, overrides: list[str] | None = None) -> dict[str, Any]:
    """Score a run of any kind on its fixed test tasks; writes and returns ``eval.json``'s content."""
    run_dir = _run_folder(run_dir)
    with _hold(run_dir, purpose="quickstudy eval"):
        return run_kind(run_dir).load().evaluate(run_dir, episodes=episodes, checkpoint=checkpoint,
                                                 progress=progress, overrides=list(overrides or []))


def report_run(run_dir: str | os.PathLike) -> list[Path]:
    """Plots and a markdown summary of a run of any kind (it only reads the run: it may run beside training)."""
    run_dir = _run_folder(run_dir)
    return run_kind(run_dir).load().report(run_dir)


def format_eval(result: dict, run_dir: str | os.PathLike) -> str:
    return run_kind(run_dir).load().format_eval(result)


def machine_info() -> dict[str, Any]:
    """The platform, CPU count, torch version and threads, git commit and GPU, for results files."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "commit": commit}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def choose_threads() -> int:
    """Intra-op threads for this process, the first that applies:

    1. ``$QUICKSTUDY_THREADS``;
    2. ``$OMP_NUM_THREADS``, the share a user or a launcher running jobs side by side gives (not under torchrun,
       which sets it to 1 in every process it starts unless told otherwise);
    3. the cores other processes leave idle (cores minus the 1-minute load average), at least one; under
       torchrun, this process's share of them (divided by ``$LOCAL_WORLD_SIZE``, its processes on this machine).

    Why: when another process holds a core, OpenMP's barrier waits make torch's default (one thread per
    core) catastrophically slow for the small ops of meta-learning (docs/bench). The load average cannot see
    a job started in the same second, so jobs launched together must say their share."""
    variables = ("QUICKSTUDY_THREADS",) if launched_by_torchrun() else ("QUICKSTUDY_THREADS", "OMP_NUM_THREADS")
    for variable in variables:
        requested = os.environ.get(variable, "").strip()
        if requested:
            try:
                return max(1, int(requested))
            except ValueError:
                raise ValueError(f"${variable} must be a whole number of threads, got {requested!r}") from None
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    idle = max(1, min(cores, cores - int(busy + 0.5)))
    return max(1, idle // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; under torchrun, ``cuda`` is this process's GPU
    (``cuda:$LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
        return DataParallel.local_device(device) if launched_by_torchrun() else device
    except RuntimeError as error:
        from .config import ConfigError

        raise ConfigError(f"key 'device': {name!r} is not a torch device ({error})") from None
