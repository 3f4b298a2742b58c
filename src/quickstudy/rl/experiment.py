"""From an RL config to a trained run folder, its evaluation and its report (the stateful shell).

A run folder holds::

    config.yaml     the resolved config (every default written out)
    metrics.csv     one row per meta-iteration: return before/after adaptation, KL, surrogate gain, ...
    last.pt         checkpoint (weights-only loadable): policy, optimizer, generator state, history
    eval.json       the last evaluation: return after 0..max_steps adaptation steps, mean and 95% CI

``train_rl(..., resume=True)`` continues from ``last.pt`` and draws exactly the numbers an uninterrupted run
would have drawn (one seeded ``torch.Generator`` drives task sampling and action noise).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._atomic import atomic_write_text
from ..experiment import open_run_dir
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..training.logging import CSVLogger, read_csv
from .config import RLConfig, load_rl_config
from .evaluate import evaluate_adaptation
from .families import make_family
from .families.base import TaskFamily
from .maml_rl import MAMLRL
from .policies import CategoricalMLPPolicy, GaussianMLPPolicy
from .rollout import process_episodes, rollout

__all__ = ["RL_COLUMNS", "build_rl", "meta_iteration", "train_rl", "load_rl_run", "evaluate_rl_run"]

RL_FORMAT, RL_VERSION = "quickstudy.rl.checkpoint", 1

#: Columns of an RL run's ``metrics.csv``.
RL_COLUMNS = ("iteration", "pre_return", "post_return", "pre_success", "post_success", "surrogate_gain", "kl",
              "ls_steps", "env_steps", "iter_seconds", "elapsed")


def build_rl(config: RLConfig) -> tuple[TaskFamily, MAMLRL]:
    """The task family and the meta-learner (policy initialised from ``config.seed``)."""
    family = make_family(config.env.name, **config.env.kwargs())
    torch.manual_seed(config.seed)
    p = config.policy
    if family.discrete:
        policy = CategoricalMLPPolicy(family.obs_dim, family.action_dim, p.hidden, p.activation)
    else:
        policy = GaussianMLPPolicy(family.obs_dim, family.action_dim, p.hidden, p.activation, p.init_std)
    a = config.algorithm
    learner = MAMLRL(policy, inner_lr=a.inner_lr, inner_steps=a.inner_steps, first_order=a.first_order, outer=a.outer,
                     inner_objective=a.inner_objective, max_kl=a.max_kl, cg_iters=a.cg_iters, cg_damping=a.cg_damping,
                     ls_ratio=a.ls_ratio, ls_max_steps=a.ls_max_steps, ppo_clip=a.ppo_clip, ppo_epochs=a.ppo_epochs,
                     ppo_lr=a.ppo_lr, strategy=a.strategy)
    return family, learner


def meta_iteration(learner: MAMLRL, family: TaskFamily, config: RLConfig, generator: torch.Generator) -> dict[str, Any]:
    """Sample a meta-batch, adapt, sample again, take one outer step; returns the metrics row (no iteration)."""
    a, t = config.algorithm, config.train
    tasks = family.sample_tasks(t.meta_batch, generator)
    process = lambda b: process_episodes(b, a.gamma, a.gae_lambda, a.normalize_advantages)  # noqa: E731
    trains = []
    params = {k: v.detach() for k, v in learner.params().items()}
    for k in range(learner.inner_steps):
        trains.append(process(rollout(family, tasks, learner.policy, params, t.episodes_per_task, generator,
                                      per_task=k > 0, strategy=learner.strategy)))
        params = learner.adapt(trains)
    valid = process(rollout(family, tasks, learner.policy, params, t.episodes_per_task, generator, per_task=True,
                            strategy=learner.strategy))
    stats = learner.step(trains, valid)
    pre, post = trains[0], valid
    return {"pre_return": float(pre.task_returns().mean()), "post_return": float(post.task_returns().mean()),
            "pre_success": None if pre.success is None else float(pre.success.mean()),
            "post_success": None if post.success is None else float(post.success.mean()),
            "surrogate_gain": stats["surrogate_gain"], "kl": stats["kl"], "ls_steps": stats["ls_steps"],
            "env_steps": sum(b.env_steps() for b in trains) + valid.env_steps()}


def _save(path: Path, learner: MAMLRL, generator: torch.Generator, iteration: int, elapsed: float,
          history: list[dict], env_steps: int) -> None:
    save_checkpoint(path, {"format": RL_FORMAT, "version": RL_VERSION, "iteration": iteration,
                           "learner": learner.state_dict(), "generator": generator.get_state(), "elapsed": elapsed,
                           "env_steps": env_steps, "history": history, "torch_version": str(torch.__version__)})


def _load_state(path: Path) -> dict[str, Any]:
    state = load_checkpoint(path)
    if state.get("format") != RL_FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not an RL checkpoint (format {state.get('format')!r})")
    return state


def train_rl(config_path: str | os.PathLike | None, overrides: list[str] | None = None,
             out: str | os.PathLike | None = None, resume: bool = False, iterations: int | None = None,
             progress: bool = True, time_limit: float | None = None, raw: dict | None = None) -> Path:
    """Meta-train (or, with ``resume=True``, continue) an RL run; returns the run folder.

    ``time_limit`` (seconds of training, across resumes; default ``train.time_limit`` minutes) stops early
    with a checkpoint."""
    extra = [f"train.iterations={iterations}"] if iterations is not None else []
    config, run_dir = open_run_dir(load_rl_config, config_path, list(overrides or []) + extra, raw, out, resume,
                                   extra)
    if not resume:
        for stale in ("metrics.csv", "last.pt", "eval.json"):
            (run_dir / stale).unlink(missing_ok=True)
    family, learner = build_rl(config)
    generator = torch.Generator().manual_seed(config.seed)
    start, elapsed, history, env_steps = 0, 0.0, [], 0
    logger = CSVLogger(run_dir / "metrics.csv", RL_COLUMNS)
    if resume and (run_dir / "last.pt").is_file():
        state = _load_state(run_dir / "last.pt")
        learner.load_state_dict(state["learner"])
        generator.set_state(state["generator"])
        start, elapsed = int(state["iteration"]), float(state["elapsed"])
        history, env_steps = list(state["history"]), int(state.get("env_steps", 0))
        logger.rewrite(history)  # drop rows logged after the checkpoint
    if time_limit is None and config.train.time_limit is not None:
        time_limit = config.train.time_limit * 60
    total = config.train.iterations
    bar = tqdm(total=total, initial=start, desc=config.name, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    iteration = start
    try:
        while iteration < total and (time_limit is None or elapsed < time_limit):
            t0 = time.perf_counter()
            row = meta_iteration(learner, family, config, generator)
            seconds = time.perf_counter() - t0
            iteration += 1
            elapsed += seconds
            env_steps += row["env_steps"]
            row.update(iteration=iteration, env_steps=env_steps, iter_seconds=seconds, elapsed=elapsed)
            history.append(row)
            if iteration % config.train.log_every == 0 or iteration == total:
                logger.log(row)
            bar.update(1)
            bar.set_postfix(pre=f"{row['pre_return']:.2f}", post=f"{row['post_return']:.2f}", kl=f"{row['kl']:.4f}")
            if iteration % config.train.checkpoint_every == 0:
                _save(run_dir / "last.pt", learner, generator, iteration, elapsed, history, env_steps)
    finally:
        bar.close()
        logger.close()
    _save(run_dir / "last.pt", learner, generator, iteration, elapsed, history, env_steps)
    return run_dir


def load_rl_run(run_dir: str | os.PathLike) -> tuple[RLConfig, TaskFamily, MAMLRL, dict[str, Any] | None]:
    """The config, family, meta-learner with the run's weights, and the checkpoint (``None`` if untrained)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    config, _ = load_rl_config(run_dir / "config.yaml")
    family, learner = build_rl(config)
    state = None
    if (run_dir / "last.pt").is_file():
        state = _load_state(run_dir / "last.pt")
        learner.load_state_dict(state["learner"])
    elif config.train.iterations > 0:
        raise FileNotFoundError(f"no checkpoint in {str(run_dir)!r} (looked for last.pt)")
    return config, family, learner, state


def evaluate_rl_run(run_dir: str | os.PathLike, tasks: int | None = None, seed: int | None = None,
                    progress: bool = True, overrides: list[str] | None = None,
                    out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return after 0..``eval.max_steps`` adaptation steps on held-out tasks; writes and returns ``eval.json``
    (or ``out``). ``overrides`` (``eval.*`` keys, e.g. ``eval.inner_lr=[0.1,0.05]``) apply to this evaluation."""
    from ..experiment import machine_info

    run_dir = Path(run_dir)
    config, family, learner, state = load_rl_run(run_dir)
    if overrides:
        bad = [o for o in overrides if not o.strip().startswith("eval.")]
        if bad:
            raise ValueError(f"evaluate_rl_run: only eval.* keys can be overridden at evaluation, got {bad}")
        config, _ = load_rl_config(raw=config.model_dump(mode="json"), overrides=overrides)
    e, a = config.eval, config.algorithm
    n = tasks or e.tasks
    seed = e.seed if seed is None else seed
    generator = torch.Generator().manual_seed(seed)
    held_out = family.sample_tasks(n, generator, split="test")
    start = time.perf_counter()
    results = evaluate_adaptation(learner, family, held_out, episodes=e.episodes_per_task, max_steps=e.max_steps,
                                  generator=generator, gamma=a.gamma, gae_lambda=a.gae_lambda,
                                  normalize=a.normalize_advantages, inner_lr=e.inner_lr, progress=progress)
    headline = results[min(a.inner_steps, e.max_steps)]
    result: dict[str, Any] = {
        "experiment": config.name, "kind": "rl", "env": config.env.name, "metric": "return",
        "mean": headline.mean, "ci95": headline.ci95, "steps": headline.steps, "tasks": n,
        "episodes_per_task": e.episodes_per_task, "seed": seed, "protocol": config.protocol,
        "return_by_step": {str(r.steps): r.to_dict() for r in results},
        "eval_inner_lr": e.inner_lr if e.inner_lr is not None else a.inner_lr, "overrides": list(overrides or []),
    }
    if headline.success is not None:
        result.update(success=headline.success, success_ci95=headline.success_ci95)
    result["seconds"] = time.perf_counter() - start
    if state is not None:
        result.update(trained_iterations=int(state["iteration"]), train_seconds=float(state["elapsed"]),
                      env_steps=int(state.get("env_steps", 0)))
    result["configured_iterations"] = config.train.iterations
    refs = config.reference if isinstance(config.reference, list) else [config.reference] if config.reference else []
    result["reference"] = [r.model_dump() for r in refs] or None
    result["machine"] = machine_info()
    target = Path(out) if out is not None else run_dir / "eval.json"
    atomic_write_text(target, json.dumps(result, indent=2, default=float))
    return result


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.csv"
    return read_csv(path) if path.is_file() else []
