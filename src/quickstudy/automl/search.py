"""Search over meta-learners: algorithm, inner-loop and outer-loop hyperparameters, backbone size.

Each trial samples the ``search:`` space (:mod:`quickstudy.automl.space`) with Optuna's TPE sampler
(multivariate, grouped so conditional parameters such as MAML's inner learning rate are modelled
only where they exist), meta-trains the resulting experiment config like ``quickstudy train`` would,
and is scored by its best value of ``search.metric`` on the fixed meta-validation episodes (the
Trainer validates every ``train.val_every`` steps on the same seeded episodes). Every validation is
reported to Optuna as an intermediate value; the pruner (median by default) stops a trial whose
curve falls behind the earlier trials at the same step, through a Trainer callback that raises
``optuna.TrialPruned``.

Storage (:mod:`quickstudy.automl.storage`): ``sqlite:///OUT/study.db`` by default; a PostgreSQL URL,
another database URL or ``journal:PATH`` lets several workers, on one or many machines, add trials to
one study (same ``--storage``, same study name: the config's ``name``). Each worker runs ``trials``
trials and then writes, from *all* the study's trials (the best among COMPLETE ones only):

* ``best.yaml``: the base experiment config with the best trial's values, ready for ``quickstudy train``;
* ``search.json``: every trial (state, value, parameters, validation curve, run folder, worker, error);
* ``search.png``: value per trial with the running best, and the validation curves (pruned ones marked).

Trial run folders (config, metrics, checkpoints) are ``OUT/trials/NNNN`` (see
:mod:`quickstudy.automl.trials`). A trial that raises a runtime error (a NaN loss, out of memory, a
shape that does not fit) is recorded as FAIL with its error and the worker goes on; a config error
stops the worker.
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
from .._validation import check_int
from ..config import ConfigError, load_config
from .space import CategoricalParam, FloatParam, SearchSpace, apply_values, load_search_config, sample_overrides
from .storage import default_storage, open_storage
from .trials import claim_run_dir, trial_rows, worker_label

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
        import optuna

        try:
            return train_trial(trial)
        except optuna.TrialPruned:
            raise
        except (Exception, KeyboardInterrupt) as error:  # kept with the trial: search.json shows it
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
            raise

    def train_trial(trial) -> float:
        values = sample_overrides(space, base, lambda key, param: _suggest(trial, key, param))
        raw = _trial_config(base, values, f"{base.get('name', 'experiment')}-trial{trial.number:04d}")
        config, resolved = load_config(raw=raw)
        run_dir = claim_run_dir((out / "trials").resolve(), trial.number)  # absolute: workers start in other folders
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker_label())
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
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
            # complete: solid; pruned: dashed; failed or still running (a killed worker's trial): dotted
            linestyle, color = {"COMPLETE": ("-", "tab:blue"), "PRUNED": ("--", "tab:red")}.get(
                row["state"], (":", "tab:gray"))
            right.plot(steps, list(row["curve"].values()), linestyle=linestyle, marker=".", color=color, alpha=0.6)
    right.set(xlabel="meta-training step", ylabel=f"validation {metric}",
              title="Validation curves (dashed: pruned; dotted: failed, running)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path


def _tpe(space: SearchSpace, seed: int):
    import optuna

    with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # constant_liar: other workers' running trials count as bad ones, so that workers asking at the same
        # time do not all sample one region (Optuna 5's default, set for 4.x too)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.sampler.n_startup_trials,
                                          multivariate=True, group=True, constant_liar=True)


def _open_study(space: SearchSpace, name: str, storage, display: str, seed: int, create: bool):
    """Create or load study ``name``; with ``create=False`` it must exist already."""
    import time

    import optuna
    import sqlalchemy.exc

    if not create:
        try:
            study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(space),
                                      sampler=_tpe(space, seed))
        except KeyError:
            raise ValueError(f"--trials 0: study {name!r} does not exist in {display}") from None
    else:
        for attempt in range(8):  # two workers creating the same study at once: the loser loads it
            try:
                study = optuna.create_study(study_name=name, storage=storage, direction=space.direction,
                                            load_if_exists=True, pruner=make_pruner(space),
                                            sampler=_tpe(space, seed))
                break
            except (optuna.exceptions.DuplicatedStudyError, sqlalchemy.exc.SQLAlchemyError):
                if attempt == 7:
                    raise
                time.sleep(0.25 * (attempt + 1))
    if study.trials:  # continuing a study: a fresh seed, or the random start-up trials would repeat earlier ones
        study.sampler = _tpe(space, seed + len(study.trials))
    if study.direction.name.lower() != space.direction:
        raise ValueError(f"study {name!r} in {display} was created to {study.direction.name.lower()}, the "
                         f"config says {space.direction}")
    return study


def run_search(config: str | os.PathLike, trials: int, out: str | os.PathLike | None = None,
               storage: str | None = None, seed: int | None = None, overrides: list[str] | None = None,
               timeout: float | None = None, progress: bool = True, heartbeat: int | None = 60) -> dict[str, Any]:
    """Add ``trials`` trials to the study of ``config`` and write best.yaml, search.json, search.png.

    ``trials=0`` only writes them, from a study that exists (after workers on other machines finished).
    ``heartbeat``: seconds between the heartbeats of a running trial on a database storage; a trial
    silent for twice that long is failed and queued again (0: no heartbeat).

    Returns a summary: study name, storage, trial counts by state, best value/params/trial, file paths."""
    import optuna

    from ..training import NonFiniteLossError

    trials = check_int("", "--trials", trials, minimum=0)
    space, base = load_search_config(config, overrides=overrides)
    name = str(base.get("name", "experiment"))
    out = Path(out) if out is not None else Path("runs") / "search" / name
    out.mkdir(parents=True, exist_ok=True)
    opened = open_storage(storage or default_storage(out), heartbeat=heartbeat)
    # Optuna logs each failed trial with its traceback; the progress callback below says it in one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = _open_study(space, name, opened.optuna_storage, opened.url,
                        space.sampler.seed if seed is None else seed, create=trials > 0)
    from tqdm import tqdm

    bar = tqdm(total=trials, desc=f"search {name}", unit="trial", file=sys.stderr, disable=not progress)

    def on_trial(study_, trial) -> None:
        bar.update(1)
        if trial.state.name == "FAIL":
            tqdm.write(f"trial {trial.number} failed: {trial.user_attrs.get('error', 'no error recorded')}",
                       file=sys.stderr)
        try:
            best = study_.best_value
            bar.set_postfix({f"best {space.metric}": f"{best:.4f}", "last": trial.state.name.lower()})
        except ValueError:
            pass

    try:
        if trials:
            # Runtime errors belong to the trial (a NaN loss, memory, a shape): FAIL it and go on.
            study.optimize(_objective(space, base, out), n_trials=trials, timeout=timeout, callbacks=[on_trial],
                           catch=(NonFiniteLossError, RuntimeError, MemoryError))
    except ValueError as error:
        if str(error).startswith("Cannot tell a FAIL trial"):  # Optuna's words when the heartbeat check won
            raise ValueError("another worker marked this worker's running trial failed: its heartbeats did not "
                             f"reach {opened.url} in time (the database out of reach? workers with different "
                             "--heartbeat?); the trial's result is lost; give every worker one, larger --heartbeat"
                             ) from None
        raise
    finally:
        bar.close()
    with warnings.catch_warnings():  # a trial whose worker died is failed (and queued again) before the summary
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return _summarise(study, space, base, config, out, name, opened)


def _summarise(study, space: SearchSpace, base: dict, config, out: Path, name: str, opened) -> dict[str, Any]:
    """Write best.yaml (from COMPLETE trials only), search.json and search.png; return the summary."""
    rows = trial_rows(study, lambda params: decode_params(space, params))
    counts = {state: sum(r["state"] == state for r in rows)
              for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    summary: dict[str, Any] = {"study": name, "storage": opened.url, "heartbeat_s": opened.heartbeat,
                               "out": str(out), "trials": len(rows), "states": counts,
                               "direction": space.direction, "metric": space.metric}
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    if complete:
        best = study.best_trial  # Optuna's best is over COMPLETE trials only
        header = (f"Best of {len(rows)} trials of study {name!r} ({opened.url}): trial {best.number}, "
                  f"validation {space.metric} {best.value:.4f}.\nMade by quickstudy search {config}; "
                  f"train with: quickstudy train {out / 'best.yaml'}")
        best_params = decode_params(space, best.params)
        write_best_config(base, best_params, out / "best.yaml", header)
        summary.update(best_value=float(best.value), best_params=best_params, best_trial=best.number,
                       best_config=str(out / "best.yaml"))
    else:
        summary["warning"] = (f"no trial completed ({counts['PRUNED']} pruned, {counts['FAIL']} failed); "
                              "no best.yaml written")
    atomic_write_text(out / "search.json", json.dumps({**summary, "trials_detail": rows}, indent=1, default=float) + "\n")
    plot_search(rows, out / "search.png", space.direction, space.metric)
    summary["plot"] = str(out / "search.png")
    if not math.isfinite(summary.get("best_value", 0.0)):
        summary["warning"] = "the best value is not finite"
    return summary
