"""Run folders: the shell every task kind shares (train, resume, evaluate, report), dispatched by kind.

A run folder holds::

    config.yaml     the resolved config (every default written out; its ``kind`` says who runs it)
    metrics.csv     training (and validation) rows; tensorboard/ when installed
    last.pt         the checkpoint to resume from; best.pt the best validated weights (where validated)
    eval.json       the last evaluation's result

The kind of a run is decided once, from its config (:func:`quickstudy.tasks.kinds.kind_of`); the kind's
module builds the tasks and the learner and trains them with the shared :class:`~quickstudy.Trainer`.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ._atomic import atomic_write_text
from .tasks.kinds import TaskKind, kind_of

__all__ = ["train_run", "evaluate_run", "report_run", "format_eval", "open_run_dir", "run_kind", "machine_info",
           "choose_threads", "resolve_device"]


def run_kind(config_or_run: str | os.PathLike | dict | None) -> TaskKind:
    """The task kind of a config file, a raw config dict or a run folder."""
    return kind_of(config_or_run)


def _write_yaml(path: Path, payload: dict) -> None:
    atomic_write_text(path, yaml.safe_dump(payload, sort_keys=False))


def open_run_dir(load: Callable, config_path, overrides: list[str] | None, raw: dict | None, out, resume: bool,
                 resume_overrides: list[str]) -> tuple[Any, Path]:
    """``(config, run folder)`` for a fresh run (config resolved from ``config_path`` + ``overrides`` and written
    to ``run/config.yaml``) or a resumed one (the run's own config, with ``resume_overrides`` written back).
    ``load(path, overrides=..., raw=...) -> (config, resolved dict)`` is the kind's loader."""
    if resume:
        if out is None:
            raise ValueError("resume needs the run folder")
        run_dir = Path(out)
        if not (run_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
        config, resolved = load(run_dir / "config.yaml", overrides=resume_overrides)
        if resume_overrides:
            _write_yaml(run_dir / "config.yaml", resolved)
        return config, run_dir
    config, resolved = load(config_path, overrides=overrides, raw=raw)
    run_dir = Path(out) if out is not None else Path("runs") / config.name
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_yaml(run_dir / "config.yaml", resolved)
    return config, run_dir


def train_run(config_path: str | os.PathLike | None, overrides: list[str] | None = None,
              out: str | os.PathLike | None = None, resume: bool = False, steps: int | None = None,
              progress: bool = True, raw: dict | None = None, time_limit: float | None = None) -> Path:
    """Train (or, with ``resume=True``, continue) a run of any kind; returns the run folder.

    ``steps`` overrides the kind's length (``train.steps``, ``train.iterations`` for RL); ``time_limit``
    (seconds of training, across resumes) stops early, validated and checkpointed."""
    kind = run_kind(out if resume else (raw if raw is not None else config_path)).load()
    extra = [f"{kind.STEPS_KEY}={steps}"] if steps is not None else []
    config, run_dir = open_run_dir(kind.load_config, config_path, list(overrides or []) + extra, raw, out, resume,
                                   extra)
    kind.train(config, run_dir, resume=resume, progress=progress, time_limit=time_limit)
    return run_dir


def evaluate_run(run_dir: str | os.PathLike, episodes: int | None = None, checkpoint: str = "best",
                 progress: bool = True, overrides: list[str] | None = None) -> dict[str, Any]:
    """Score a run of any kind on its fixed test tasks; writes and returns ``eval.json``'s content."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    return run_kind(run_dir).load().evaluate(run_dir, episodes=episodes, checkpoint=checkpoint, progress=progress,
                                             overrides=list(overrides or []))


def report_run(run_dir: str | os.PathLike) -> list[Path]:
    """Plots and a markdown summary of a run of any kind."""
    return run_kind(run_dir).load().report(Path(run_dir))


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
    """Intra-op threads for this process: ``$QUICKSTUDY_THREADS`` if set, else the cores other processes
    leave idle (cores minus the 1-minute load average), at least one.

    Why: when another process holds a core, OpenMP's barrier waits make torch's default (one thread per
    core) catastrophically slow for the small ops of meta-learning (docs/bench)."""
    requested = os.environ.get("QUICKSTUDY_THREADS")
    if requested:
        return max(1, int(requested))
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, cores - int(busy + 0.5)))


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        from .config import ConfigError

        raise ConfigError(f"key 'device': {name!r} is not a torch device ({error})") from None
