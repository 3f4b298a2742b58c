"""The ``rl`` task kind: meta-reinforcement learning (``kind: rl`` configs), on the shared Trainer and CLI.

Implements the task-kind interface of :mod:`quickstudy.tasks.kinds`; the maths and the environments are in
the rest of :mod:`quickstudy.rl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..training import TimeLimit, Trainer
from .config import RLConfig, load_rl_config
from .experiment import RL_COLUMNS, RLUpdate, build_rl, evaluate_rl_run

__all__ = ["NAME", "STEPS_KEY", "load_config", "train", "evaluate", "format_eval", "report"]

NAME = "rl"
STEPS_KEY = "train.iterations"
DISTRIBUTED = True  # under torchrun, its processes share every meta-batch (docs/distributed.md)
RESULT_FILES = ("return_vs_iteration.png", "return_vs_steps.png")  # what a replaced run leaves (runs.train_run)
load_config = load_rl_config


def train(config: RLConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
          time_limit: float | None = None, callbacks: Sequence[Any] = ()) -> None:
    """Meta-train (or continue) the RL run in ``run_dir``: one Trainer step per meta-iteration; ``callbacks`` go
    to the Trainer."""
    family, learner = build_rl(config)
    update = RLUpdate(learner, family, config, torch.Generator().manual_seed(config.seed))
    t = config.train
    trainer = Trainer(learner.policy, None, steps=t.iterations, update=update, val_every=None, out=run_dir,
                      log_every=t.log_every, checkpoint_every=t.checkpoint_every, progress=progress, seed=config.seed,
                      csv_columns=RL_COLUMNS, cpu_caching_allocator=False, callbacks=callbacks, distributed="auto")
    if time_limit is None and t.time_limit is not None:
        time_limit = t.time_limit * 60
    if time_limit is not None:
        trainer.callbacks.append(TimeLimit(time_limit))
    trainer.fit(resume=resume, overwrite=not resume)


def evaluate(run_dir: Path, *, episodes: int | None = None, checkpoint: str = "best", progress: bool = True,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Return after 0..``eval.max_steps`` adaptation steps on held-out tasks (``episodes``: the number of tasks;
    ``overrides``: ``eval.*`` keys for this evaluation). An RL run has one checkpoint, ``last.pt``."""
    return evaluate_rl_run(run_dir, tasks=episodes, progress=progress, overrides=list(overrides or []))


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


def report(run_dir: Path) -> list[Path]:
    from .report import make_rl_report

    return make_rl_report(run_dir)
