"""Search over meta-learners: algorithm, inner-loop and outer-loop hyperparameters, backbone size.

Each trial samples the ``search:`` space (:mod:`quickstudy.automl.space`) with Optuna's TPE sampler
(multivariate, grouped so conditional parameters such as MAML's inner learning rate are modelled
only where they exist), meta-trains the resulting experiment config like ``quickstudy train`` would,
and is scored by its best value of ``search.metric`` on the fixed meta-validation episodes (the
Trainer validates every ``train.val_every`` steps on the same seeded episodes). Every validation is
reported to Optuna as an intermediate value; the pruner (median by default) stops a trial whose
curve falls behind the earlier trials at the same step, through a Trainer callback that raises
``optuna.TrialPruned``.

Storage: ``sqlite:///OUT/study.db`` by default; any database URL Optuna accepts (``sqlite:///...``,
``postgresql://...``, ``mysql://...``) lets several workers, on one or many machines, add trials to
one study (same ``--storage``, same study name: the config's ``name``). Each worker runs ``trials``
trials and then writes, from *all* the study's trials:

* ``best.yaml``: the base experiment config with the best trial's values, ready for ``quickstudy train``;
* ``search.json``: every trial (state, value, parameters, validation curve, run folder);
* ``search.png``: value per trial with the running best, and the validation curves (pruned ones marked).

Trial run folders (config, metrics, checkpoints) are ``OUT/trials/NNNN``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from .._atomic import atomic_write_text
from ..config import ConfigError, load_config
from .space import CategoricalParam, FloatParam, SearchSpace, apply_values, load_search_config, sample_overrides

__all__ = ["run_search", "PruningCallback", "decode_params", "make_pruner", "default_storage", "write_best_config",
           "plot_search"]


class PruningCallback:
    """Trainer callback: report each validation's ``metric`` to the Optuna trial; raise
    ``optuna.TrialPruned`` when the pruner says so (the Trainer closes its logs on the way out)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer, step: int, result) -> None:
        import optuna

        if self.metric not in result.metrics:
            raise ConfigError(f"key 'search.metric': {self.metric!r} is not a validation metric; the Trainer "
                              f"reports {', '.join(sorted(result.metrics))}")
        value = float(result.metrics[self.metric])
        self.trial.report(value, step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.metric} {value:.4f})")


def make_pruner(space: SearchSpace):
    """The Optuna pruner the ``search.pruner`` section names."""
    import optuna

    p = space.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                               n_warmup_steps=p.n_warmup_steps)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _storage(url: str, attempts: int = 8):
    """An RDB storage; SQLite gets a long lock timeout so concurrent workers wait instead of failing.
    Workers that start together race to create the schema of a fresh database; the loser retries."""
    import time

    import optuna
    import sqlalchemy.exc

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


def _encode(choice: Any) -> Any:
    """Optuna stores only None/bool/int/float/str choices; others (lists such as MLP widths) as JSON text."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def decode_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's stored parameters as config values (JSON-encoded categorical choices decoded)."""
    decoded = dict(params)
    for key, value in params.items():
        param = space.params.get(key)
        if isinstance(param, CategoricalParam):
            for choice in param.choices:
                if _encode(choice) == value:
                    decoded[key] = choice
                    break
    return decoded


def _suggest(trial, key: str, param) -> Any:
    if isinstance(param, CategoricalParam):
        encoded = [_encode(c) for c in param.choices]
        return param.choices[encoded.index(trial.suggest_categorical(key, encoded))]
    if isinstance(param, FloatParam):
        return trial.suggest_float(key, param.low, param.high, log=param.log, step=param.step)
    return trial.suggest_int(key, param.low, param.high, log=param.log, step=param.step)


def _trial_config(base: dict, values: dict[str, Any], name: str) -> dict:
    raw = apply_values(base, values)
    raw["name"] = name
    return raw


def _objective(space: SearchSpace, base: dict, out: Path):
    from ..experiment import _TimeLimit, _trainer, build_learner, build_tasks

    def objective(trial) -> float:
        values = sample_overrides(space, base, lambda key, param: _suggest(trial, key, param))
        raw = _trial_config(base, values, f"{base.get('name', 'experiment')}-trial{trial.number:04d}")
        config, resolved = load_config(raw=raw)
        run_dir = out / "trials" / f"{trial.number:04d}"
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        trial.set_user_attr("run_dir", str(run_dir))
        sources = build_tasks(config)
        if sources.val is None:
            raise ConfigError("key 'data.val_split': a search scores trials on meta-validation episodes; "
                              "set a validation split")
        learner = build_learner(config, sources)
        trainer = _trainer(config, learner, sources, run_dir, progress=False)
        trainer.callbacks.append(PruningCallback(trial, space.metric))
        if config.train.time_limit is not None:
            trainer.callbacks.append(_TimeLimit(config.train.time_limit * 60))
        history = trainer.fit(overwrite=True)
        curve = [float(row[space.metric]) for row in history.val if space.metric in row]
        if not curve:
            raise ConfigError(f"trial {trial.number}: no validation happened (train.steps < train.val_every?)")
        value = max(curve) if space.direction == "maximize" else min(curve)
        trial.set_user_attr("steps", int(trainer.step))
        trial.set_user_attr("train_seconds", float(trainer.elapsed))
        return value

    return objective


def _trial_rows(study, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for t in study.trials:
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "params": decode_params(space, t.params),
            "curve": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "run_dir": t.user_attrs.get("run_dir"), "train_seconds": t.user_attrs.get("train_seconds"),
            "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        })
    return rows


def write_best_config(base: dict, params: dict[str, Any], path: Path, header: str) -> Path:
    """The base experiment with ``params`` applied, validated, written as YAML (atomically)."""
    raw = _trial_config(base, params, f"{base.get('name', 'experiment')}-best")
    _, resolved = load_config(raw=raw)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(resolved, sort_keys=False)
    return atomic_write_text(path, text)


def plot_search(rows: list[dict[str, Any]], path: Path, direction: str, metric: str) -> Path:
    """Left: each finished trial's value and the running best; right: validation curves, pruned dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._atomic import atomic_write

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    better = max if direction == "maximize" else min
    best_x, best_y, running = [], [], None
    for row in rows:
        if row["state"] == "COMPLETE" and row["value"] is not None:
            running = row["value"] if running is None else better(running, row["value"])
            left.scatter(row["number"], row["value"], color="tab:blue", zorder=3)
        elif row["state"] == "PRUNED" and row["curve"]:
            left.scatter(row["number"], list(row["curve"].values())[-1], color="tab:red", marker="x", zorder=3)
        if running is not None:
            best_x.append(row["number"])
            best_y.append(running)
    if best_x:
        left.step(best_x, best_y, where="post", color="black", label="best so far")
    left.scatter([], [], color="tab:blue", label="complete")
    left.scatter([], [], color="tab:red", marker="x", label="pruned (last value)")
    left.set(xlabel="trial", ylabel=f"validation {metric}", title="Search history")
    left.legend(loc="best", fontsize=8)
    for row in rows:
        if row["curve"]:
            steps = [int(s) for s in row["curve"]]
            pruned = row["state"] == "PRUNED"
            right.plot(steps, list(row["curve"].values()), linestyle="--" if pruned else "-", marker=".",
                       color="tab:red" if pruned else "tab:blue", alpha=0.6)
    right.set(xlabel="meta-training step", ylabel=f"validation {metric}",
              title="Validation curves (dashed: pruned)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path


def run_search(config: str | os.PathLike, trials: int, out: str | os.PathLike | None = None,
               storage: str | None = None, seed: int | None = None, overrides: list[str] | None = None,
               timeout: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Add ``trials`` trials to the study of ``config`` and write best.yaml, search.json, search.png.

    Returns a summary: study name, storage, trial counts by state, best value/params/trial, file paths."""
    import time

    import optuna
    import sqlalchemy.exc

    from ..training import NonFiniteLossError

    if trials < 1:
        raise ValueError(f"--trials must be at least 1, got {trials}")
    space, base = load_search_config(config, overrides=overrides)
    name = str(base.get("name", "experiment"))
    out = Path(out) if out is not None else Path("runs") / "search" / name
    out.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    def tpe(seed_: int):
        with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed_, n_startup_trials=space.sampler.n_startup_trials,
                                              multivariate=True, group=True)

    sampler = tpe(space.sampler.seed if seed is None else seed)
    storage_ = _storage(url)
    for attempt in range(8):  # two workers creating the same study at once: the loser loads it
        try:
            study = optuna.create_study(study_name=name, storage=storage_, direction=space.direction,
                                        load_if_exists=True, pruner=make_pruner(space), sampler=sampler)
            break
        except (optuna.exceptions.DuplicatedStudyError, sqlalchemy.exc.SQLAlchemyError):
            if attempt == 7:
                raise
            time.sleep(0.25 * (attempt + 1))
    if study.trials:  # continuing a study: a fresh seed, or the random start-up trials would repeat earlier ones
        study.sampler = tpe((space.sampler.seed if seed is None else seed) + len(study.trials))
    if study.direction.name.lower() != space.direction:
        raise ValueError(f"study {name!r} in {url} was created to {study.direction.name.lower()}, the config "
                         f"says {space.direction}")
    from tqdm import tqdm

    bar = tqdm(total=trials, desc=f"search {name}", unit="trial", file=sys.stderr, disable=not progress)

    def on_trial(study_, trial) -> None:
        bar.update(1)
        try:
            best = study_.best_value
            bar.set_postfix({f"best {space.metric}": f"{best:.4f}", "last": trial.state.name.lower()})
        except ValueError:
            pass

    try:
        study.optimize(_objective(space, base, out), n_trials=trials, timeout=timeout, catch=(NonFiniteLossError,),
                       callbacks=[on_trial])
    finally:
        bar.close()
    rows = _trial_rows(study, space)
    counts = {state: sum(r["state"] == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    summary: dict[str, Any] = {"study": name, "storage": url, "out": str(out), "trials": len(rows),
                               "states": counts, "direction": space.direction, "metric": space.metric}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if complete:
        best = study.best_trial
        header = (f"Best of {len(rows)} trials of study {name!r} ({url}): trial {best.number}, "
                  f"validation {space.metric} {best.value:.4f}.\nMade by quickstudy search {config}; "
                  f"train with: quickstudy train {out / 'best.yaml'}")
        best_params = decode_params(space, best.params)
        write_best_config(base, best_params, out / "best.yaml", header)
        summary.update(best_value=float(best.value), best_params=best_params, best_trial=best.number,
                       best_config=str(out / "best.yaml"))
    else:
        failed = [r for r in rows if r["state"] == "FAIL"]
        summary["warning"] = (f"no trial completed ({counts['PRUNED']} pruned, {len(failed)} failed); "
                              "no best.yaml written")
    atomic_write_text(out / "search.json", json.dumps({**summary, "trials_detail": rows}, indent=1, default=float) + "\n")
    plot_search(rows, out / "search.png", space.direction, space.metric)
    summary["plot"] = str(out / "search.png")
    if not math.isfinite(summary.get("best_value", 0.0)):
        summary["warning"] = "the best value is not finite"
    return summary
