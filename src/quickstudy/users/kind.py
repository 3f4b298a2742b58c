"""The ``users`` task kind: recommendation for new users, each user a task (config ``kind: users``).

The command line's ``train``, ``eval``, ``resume`` and ``report`` call these functions through the registry
of task kinds. A run folder holds, besides the shared Trainer's ``config.yaml``, ``metrics.csv``,
``last.pt`` and ``best.pt``::

    items.npz     the item catalogue and its training statistics (what `users recommend` needs)
    split.json    users and ratings in each part of the split
    eval.json     per K: every method's MAE / RMSE / nDCG@3 / nDCG@5 (mean ± 95% CI over test users),
                  the paired differences of the meta-learner against each baseline, and per-user values
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..algorithms import MetaLearner
from ..runs import machine_info, resolve_device
from ..training import TimeLimit, Trainer, load_checkpoint
from . import build
from .config import NAME, UsersConfig, load_users_config
from .dataset import UsersData
from .evaluation import compare, score_methods
from .features import RowEncoder
from .metrics import METRICS

__all__ = ["NAME", "STEPS_KEY", "load_config", "train", "evaluate", "format_eval", "report", "method_label",
           "load_learner"]

STEPS_KEY = "train.steps"
load_config = load_users_config


def method_label(config: UsersConfig) -> str:
    """The meta-learner's name in tables: ``config.label``, else the algorithm's name."""
    return config.label or config.algorithm.name


def train(config: UsersConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
          time_limit: float | None = None) -> None:
    """Meta-train on the training users with the shared Trainer (``time_limit`` in seconds of training;
    default ``train.time_limit`` minutes). Validation: MSE over the validation users at K = ``eval.shots[0]``."""
    run_dir = Path(run_dir)
    data = build.load_data(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume or not (run_dir / build.ITEMS_FILE).is_file():
        build.save_items(run_dir / build.ITEMS_FILE, data)
        atomic_write_text(run_dir / "split.json", json.dumps(data.split.summary(data.ratings), indent=2))
    learner = build.build_learner(config, data.encoder, data.stats.global_mean)
    tr = config.train
    if tr.steps == 0:
        return
    val = build.episodes(config, data, "val", config.eval.shots[0]) if len(data.split.val_users) else None
    val_users = None if val is None else min(tr.val_episodes or len(val), len(val))
    trainer = Trainer(
        learner, build.train_tasks(config, data), val_tasks=val, steps=tr.steps, lr=tr.lr, optimizer=tr.optimizer,
        optimizer_kwargs={"weight_decay": tr.weight_decay} if tr.weight_decay else None, schedule=tr.schedule,
        schedule_options=_schedule_options(config), grad_clip=tr.grad_clip, val_every=tr.val_every,
        val_episodes=val_users or 1, out=run_dir, log_every=tr.log_every, checkpoint_every=tr.checkpoint_every,
        progress=progress, device=resolve_device(config.device), seed=config.seed, precision=tr.precision,
        cpu_caching_allocator=tr.cpu_caching_allocator)
    if time_limit is None and tr.time_limit is not None:
        time_limit = tr.time_limit * 60
    if time_limit is not None:
        trainer.callbacks.append(TimeLimit(time_limit))
    trainer.fit(resume=resume, overwrite=not resume)


def _schedule_options(config: UsersConfig) -> dict:
    tr = config.train
    return {"step_size": tr.step_size, "gamma": tr.gamma} if tr.schedule == "step" else {}


def load_learner(run_dir: Path, config: UsersConfig, encoder: RowEncoder, global_mean: float,
                 checkpoint: str = "best") -> MetaLearner:
    """The run's meta-learner with the weights of ``checkpoint`` (``best``, falling back to ``last``)."""
    learner = build.build_learner(config, encoder, global_mean)
    path = Path(run_dir) / f"{checkpoint}.pt"
    if not path.is_file() and checkpoint == "best":
        path = Path(run_dir) / "last.pt"
    if path.is_file():
        learner.load_state_dict(load_checkpoint(path)["model"])
    elif config.train.steps > 0:
        raise FileNotFoundError(f"no checkpoint in {str(run_dir)!r} (looked for best.pt and last.pt)")
    return learner.eval()


def _check_same_items(run_dir: Path, data: UsersData) -> None:
    path = run_dir / build.ITEMS_FILE
    if path.is_file():
        _, saved = build.load_items(path)
        if len(saved.count) != len(data.stats.count) or not np.array_equal(saved.count, data.stats.count):
            raise ValueError(f"the data under {run_dir} changed since training: the training ratings per item differ "
                             f"from {path}; evaluate with the data the run was trained on")


def evaluate(run_dir: Path, *, episodes: int | None = None, checkpoint: str = "best", progress: bool = True,
             overrides: list[str] | None = None) -> dict:
    """Score the run's meta-learner and the baselines on the test users at every ``eval.shots``; writes
    ``eval.json``. ``episodes``: the number of test users (default ``eval.users``, else all); ``overrides``:
    ``eval.*`` keys for this evaluation only (e.g. ``eval.inner_steps=3``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    bad = [o for o in overrides or [] if not o.strip().startswith("eval.")]
    if bad:
        raise ValueError(f"evaluate: only eval.* keys can be overridden at evaluation, got {bad}")
    config, _ = load_users_config(run_dir / "config.yaml", overrides=list(overrides or []))
    data = build.load_data(config)
    _check_same_items(run_dir, data)
    label = method_label(config)
    learner = load_learner(run_dir, config, data.encoder, data.stats.global_mean, checkpoint)
    start = time.perf_counter()
    baselines = {name: b.fit(data.training()) for name, b in build.build_baselines(config).items()}
    if label in baselines:
        raise ValueError(f"the run's label {label!r} is also a baseline's name; set another label in the config")
    methods = {label: learner, **baselines}
    users = episodes if episodes is not None else config.eval.users
    by_shots, per_user = {}, {}
    for shots in config.eval.shots:
        eps = build.episodes(config, data, "test", shots)
        values = score_methods(methods, eps, users=users, scale=config.data.scale if config.eval.clip else None,
                               steps=config.eval.inner_steps, progress=progress, desc=f"test users, K={shots}")
        by_shots[str(shots)] = {"users": int(len(next(iter(values[label].values())))), **compare(values, label, list(baselines))}
        per_user[str(shots)] = {m: {k: v.tolist() for k, v in vals.items()} for m, vals in values.items()}
    headline = by_shots[str(config.eval.shots[0])]
    result: dict[str, Any] = {
        "experiment": config.name, "kind": NAME, "method": label, "checkpoint": checkpoint, "metric": "mae",
        "mean": headline["methods"][label]["mae"]["mean"], "ci95": headline["methods"][label]["mae"]["ci95"],
        "n": headline["users"], "episodes": headline["users"], "shots": list(config.eval.shots),
        "split": data.split.summary(data.ratings), "support": build.support_rule(config), "protocol": config.protocol,
        "by_shots": by_shots, "seconds": time.perf_counter() - start}
    if (run_dir / "last.pt").is_file():
        last = load_checkpoint(run_dir / "last.pt")
        result.update(trained_steps=int(last["step"]), train_seconds=float(last.get("elapsed", 0.0)),
                      best_val=last.get("best"))
    result["machine"] = machine_info()
    result["per_user"] = per_user
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2, default=float))
    return result


def _cell(summary: dict[str, float], digits: int = 3) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['ci95']:.{digits}f}"


def format_eval(result: dict) -> str:
    """A plain-text table per K: every method's metrics, then the meta-learner against the best baseline."""
    names = {"mae": "MAE", "rmse": "RMSE", "ndcg@3": "nDCG@3", "ndcg@5": "nDCG@5"}
    split = result.get("split", {})
    lines = [f"{result['experiment']}: {split.get('kind', '?')} split, support {result.get('support')}, "
             f"mean ± 95% CI over test users"]
    for shots, block in result["by_shots"].items():
        lines.append(f"K = {shots} ({block['users']} users)")
        lines.append("  " + f"{'method':<10}" + "".join(f"{names[m]:>18}" for m in METRICS))
        for name, summary in block["methods"].items():
            lines.append("  " + f"{name:<10}" + "".join(f"{_cell(summary[m]):>18}" for m in METRICS))
        best = block.get("best_baseline")
        if best is not None:
            diff = block["paired"][best]
            lines.append(f"  {result['method']} - {best} (paired, 95% CI): MAE {diff['mae']['mean']:+.3f} ± "
                         f"{diff['mae']['ci95']:.3f} ({100 * diff['mae']['relative']:+.1f}%), nDCG@3 "
                         f"{diff['ndcg@3']['mean']:+.3f} ± {diff['ndcg@3']['ci95']:.3f}")
    return "\n".join(lines)


def report(run_dir: Path) -> list[Path]:
    from .report import make_users_report

    return make_users_report(run_dir)
