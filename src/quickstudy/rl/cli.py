"""The RL side of the ``quickstudy`` command: ``train``/``resume``/``eval``/``report`` call these when the
config (or the run folder's ``config.yaml``) says ``kind: rl``; :mod:`quickstudy.cli` prints their results
(same flags and ``--json`` contract as the supervised commands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import is_rl_config

__all__ = ["is_rl_config", "train", "resume", "evaluate", "report", "format_eval"]


def format_eval(result: dict) -> str:
    steps = " / ".join(f"{v['mean']:.2f} ± {v['ci95']:.2f}" for v in result["return_by_step"].values())
    line = (f"{result['experiment']}: return after {', '.join(result['return_by_step'])} adaptation steps: {steps} "
            f"(mean ± 95% CI over {result['tasks']} held-out tasks, {result['episodes_per_task']} episodes each)")
    if "success" in result:
        rates = " / ".join(f"{100 * v['success']:.1f}%" for v in result["return_by_step"].values())
        line += f"\nsuccess rate by adaptation step: {rates}"
    for ref in result.get("reference") or []:
        line += f"\nreference ({ref['source']}): {ref['value']}"
    return line


def train(args: argparse.Namespace, time_limit: float | None) -> Path:
    from .experiment import train_rl

    return train_rl(args.config, overrides=list(args.overrides), out=args.out, iterations=args.steps,
                    progress=not args.quiet, time_limit=time_limit)


def resume(args: argparse.Namespace, time_limit: float | None) -> Path:
    from .experiment import train_rl

    return train_rl(None, out=args.run_dir, resume=True, iterations=args.steps, progress=not args.quiet,
                    time_limit=time_limit)


def evaluate(run_dir: str | Path, tasks: int | None, progress: bool, overrides: list[str] | None = None) -> dict:
    """``tasks`` (the CLI's ``--episodes``) is the number of held-out tasks (default ``eval.tasks``)."""
    from .experiment import evaluate_rl_run

    return evaluate_rl_run(run_dir, tasks=tasks, progress=progress, overrides=list(overrides or []))


def report(run_dir: str | Path) -> list[Path]:
    from .report import make_rl_report

    return make_rl_report(run_dir)
