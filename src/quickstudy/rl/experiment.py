"""From an RL config to a trained run folder and its evaluation, on the shared Trainer.

A meta-iteration (sample a meta-batch of tasks, roll out, adapt, roll out again, take the TRPO/PPO outer step)
is the Trainer's *update* (:class:`RLUpdate`); the Trainer runs the loop, the progress bar, the logs, the time
limit and the checkpoints, as for every task kind. A run folder holds::

    config.yaml     the resolved config (every default written out)
    metrics.csv     one row per meta-iteration (``step``): return before/after adaptation, KL, surrogate gain, ...
    last.pt         the Trainer's checkpoint (weights-only loadable): policy, PPO optimizer, generator state, history
    eval.json       the last evaluation: return after 0..max_steps adaptation steps, mean and 95% CI

Resuming continues from ``last.pt`` and draws exactly the numbers an uninterrupted run would have drawn (one
seeded ``torch.Generator`` drives task sampling and action noise; its state is in the checkpoint). What RL does
not share with the supervised kinds: there is no ``meta_backward``/optimizer step (the TRPO step is a line
search), and no validation episodes (held-out tasks are scored by ``quickstudy eval``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write_text
from ..training.checkpoint import load_checkpoint
from ..training.distributed import is_main_process
from ..training.logging import read_csv
from .config import RLConfig, load_rl_config
from .evaluate import evaluate_adaptation
from .families import make_family
from .families.base import TaskFamily
from .maml_rl import MAMLRL
from .policies import CategoricalMLPPolicy, GaussianMLPPolicy
from .rollout import process_episodes, rollout

__all__ = ["RL_COLUMNS", "RLUpdate", "build_rl", "meta_iteration", "train_rl", "load_rl_run", "evaluate_rl_run"]

#: Columns of an RL run's ``metrics.csv`` (``step`` = meta-iterations done; ``env_steps`` of that iteration).
RL_COLUMNS = ("step", "split", "pre_return", "post_return", "pre_success", "post_success", "surrogate_gain", "kl",
              "ls_steps", "env_steps", "tasks_per_s", "elapsed")


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


def meta_iteration(learner: MAMLRL, family: TaskFamily, config: RLConfig, generator: torch.Generator,
                   tasks: Any = None) -> dict[str, Any]:
    """Sample a meta-batch (or take ``tasks``), adapt, sample again, take one outer step; returns the metrics row
    (no iteration)."""
    a, t = config.algorithm, config.train
    tasks = family.sample_tasks(t.meta_batch, generator) if tasks is None else tasks
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


class RLUpdate:
    """One meta-iteration as the Trainer's update (see the module docstring): ``update(index, None)`` samples its
    tasks from the run's generator, so the generator's state, the environment steps so far and the PPO optimizer
    are its state.

    On several processes (:meth:`use_distributed`), every process draws the same meta-batch from the run's
    generator and rolls out its share of the tasks with a generator keyed by (seed, iteration, rank); the outer
    step averages its means across the processes (:class:`~.maml_rl.MAMLRL`'s ``reduce_mean``)."""

    lr = None  # the TRPO step has no learning rate (PPO's is fixed)

    def __init__(self, learner: MAMLRL, family: TaskFamily, config: RLConfig, generator: torch.Generator) -> None:
        self.learner, self.family, self.config, self.generator = learner, family, config, generator
        self.env_steps = 0
        self.parallel = None

    def use_distributed(self, parallel) -> None:
        """Share each meta-batch across the processes of ``parallel``
        (a :class:`~quickstudy.training.distributed.DataParallel`)."""
        total = self.config.train.meta_batch
        parallel.check_splittable(total, "train.meta_batch")
        start, stop = parallel.bounds(total)
        weight = (stop - start) / total
        self.parallel, self.share = parallel, (start, stop)
        self.learner.reduce_mean = lambda value: parallel.weighted_mean_(value, weight)

    def __call__(self, index: int, batch: Any) -> dict[str, float]:
        if self.parallel is None:
            row = meta_iteration(self.learner, self.family, self.config, self.generator)
        else:
            row = self._share_of_iteration(index)
        self.env_steps += int(row["env_steps"])
        metrics = {k: float(v) for k, v in row.items() if v is not None}
        metrics["loss"] = -metrics["post_return"]  # what the outer step improves, for the Trainer's checks
        metrics["tasks"] = self.config.train.meta_batch
        return metrics

    def _share_of_iteration(self, index: int) -> dict[str, Any]:
        from ..training.distributed import step_seed

        tasks = self.family.sample_tasks(self.config.train.meta_batch, self.generator)  # the same on every rank
        rollouts = torch.Generator().manual_seed(step_seed(self.config.seed, index, self.parallel.rank))
        row = meta_iteration(self.learner, self.family, self.config, rollouts, tasks=tasks[slice(*self.share)])
        means = [k for k in ("pre_return", "post_return", "pre_success", "post_success") if row[k] is not None]
        values = self.learner.reduce_mean(torch.tensor([row[k] for k in means], dtype=torch.float64))
        row.update(zip(means, values.tolist()))
        row["env_steps"] = int(self.parallel.all_reduce_(torch.tensor([float(row["env_steps"])], dtype=torch.float64)))
        return row

    def state_dict(self) -> dict[str, Any]:
        optimizer = self.learner.optimizer
        return {"optimizer": None if optimizer is None else optimizer.state_dict(), "scheduler": None,
                "generator": self.generator.get_state(), "env_steps": self.env_steps}

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        if "generator" not in state:
            raise ValueError(f"{source} is not a checkpoint of an RL run (no generator state)")
        if self.learner.optimizer is not None and state.get("optimizer") is not None:
            self.learner.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.env_steps = int(state.get("env_steps", 0))


def train_rl(config_path: str | os.PathLike | None, overrides: list[str] | None = None,
             out: str | os.PathLike | None = None, resume: bool = False, iterations: int | None = None,
             progress: bool = True, time_limit: float | None = None, raw: dict | None = None) -> Path:
    """Meta-train (or, with ``resume=True``, continue) an RL run; returns the run folder
    (:func:`quickstudy.runs.train_run` for an RL config).

    ``time_limit`` (seconds of training, across resumes; default ``train.time_limit`` minutes) stops early
    with a checkpoint."""
    from ..runs import train_run

    raw = dict(raw, kind="rl") if raw is not None else ({"kind": "rl"} if config_path is None and not resume else None)
    return train_run(config_path, overrides=overrides, out=out, resume=resume, steps=iterations, progress=progress,
                     raw=raw, time_limit=time_limit)


def load_rl_run(run_dir: str | os.PathLike) -> tuple[RLConfig, TaskFamily, MAMLRL, dict[str, Any] | None]:
    """The config, family, meta-learner with the run's weights, and the checkpoint (``None`` if untrained)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    config, _ = load_rl_config(run_dir / "config.yaml")
    family, learner = build_rl(config)
    state = None
    if (run_dir / "last.pt").is_file():
        state = load_checkpoint(run_dir / "last.pt")
        if "model" not in state or "generator" not in (state.get("update") or {}):
            raise ValueError(f"checkpoint {str(run_dir / 'last.pt')!r} is not an RL checkpoint of this quickstudy "
                             "version: retrain the run")
        learner.policy.load_state_dict(state["model"])
    elif config.train.iterations > 0:
        raise FileNotFoundError(f"no checkpoint in {str(run_dir)!r} (looked for last.pt)")
    return config, family, learner, state


def evaluate_rl_run(run_dir: str | os.PathLike, tasks: int | None = None, seed: int | None = None,
                    progress: bool = True, overrides: list[str] | None = None,
                    out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return after 0..``eval.max_steps`` adaptation steps on held-out tasks; writes and returns ``eval.json``
    (or ``out``). ``overrides`` (``eval.*`` keys, e.g. ``eval.inner_lr=[0.1,0.05]``) apply to this evaluation."""
    from ..runs import machine_info

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
        result.update(trained_iterations=int(state["step"]), train_seconds=float(state["elapsed"]),
                      env_steps=int(state["update"].get("env_steps", 0)))
    result["configured_iterations"] = config.train.iterations
    refs = config.reference if isinstance(config.reference, list) else [config.reference] if config.reference else []
    result["reference"] = [r.model_dump() for r in refs] or None
    result["machine"] = machine_info()
    target = Path(out) if out is not None else run_dir / "eval.json"
    if is_main_process():  # under torchrun every process evaluates (the same numbers); rank 0 writes
        atomic_write_text(target, json.dumps(result, indent=2, default=float))
    return result


def read_history(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.csv"
    return read_csv(path) if path.is_file() else []
