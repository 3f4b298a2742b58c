"""The ``episodes`` task kind: few-shot classification (images) and regression (sinusoids) episodes.

From a validated config (:mod:`quickstudy.config`) to task sources, a learner, a trained run and its
evaluation on fixed test episodes; it implements the task-kind interface of :mod:`quickstudy.tasks.kinds`
(the run-folder shell is :mod:`quickstudy.runs`). Besides the shared files, its run folder holds
``test_episodes.pt``: the fixed test episodes (example indices), made at the first evaluation and kept with the
settings they were drawn for (data set, split, ways, shots, queries, seed, batch size): an evaluation whose
settings differ draws them again.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ._atomic import atomic_write_text
from .algorithms import ALGORITHMS, MetaLearner
from .config import ConfigError, ExperimentConfig, check_kwargs, load_config
from .runs import machine_info, resolve_device
from .models import MODELS
from .tasks import EpisodeSampler, FixedEpisodes, Sinusoid
from .training import TimeLimit, Trainer, evaluate_regression_steps, load_checkpoint
from .training.distributed import is_main_process
from .training import evaluate as evaluate_tasks

__all__ = ["NAME", "STEPS_KEY", "TaskSources", "build_tasks", "build_learner", "load_config", "train", "evaluate",
           "format_eval", "report", "load_run", "adapt_folders", "train_run", "evaluate_run"]

NAME = "episodes"
STEPS_KEY = "train.steps"
DISTRIBUTED = True  # under torchrun, its processes share every meta-batch (docs/distributed.md)
RESULT_FILES = ("test_episodes.pt", "loss.png", "accuracy.png")  # what a replaced run leaves (runs.train_run)


@dataclass
class TaskSources:
    """What an experiment trains and is scored on; ``train[i]`` / ``val[i]`` / ``test[i]`` are TaskBatches."""

    train: Any
    val: Any
    test: Any
    task_type: str
    num_train_classes: int | None = None
    in_channels: int | None = None
    image_size: int | None = None


def _load_dataset(config: ExperimentConfig, split: str):
    from . import data

    d = config.data
    if d.dataset == "omniglot":
        return data.Omniglot(split=split, protocol=d.protocol, root=d.root, download=d.download,
                             image_size=d.image_size)
    if d.dataset == "glyphs":
        return data.Glyphs(split=split, seed=d.seed, image_size=d.image_size)
    if d.dataset == "folder":
        if d.root is None:
            raise ConfigError("key 'data.root': the folder dataset needs a root with one sub-folder per split")
        return data.ImageFolder(Path(d.root) / split, image_size=d.image_size)
    raise ConfigError(f"key 'data.dataset': no image loader for {d.dataset!r}")


def build_tasks(config: ExperimentConfig, test_seed: int | None = None) -> TaskSources:
    """Training, validation and test task sources for ``config`` (deterministic from its seeds)."""
    t, e = config.task, config.eval
    if config.data.dataset == "sinusoid":
        train = Sinusoid(shots=t.shots, queries=t.queries, batch_size=t.meta_batch, seed=config.seed)
        val = Sinusoid(shots=t.test_shots or t.shots, queries=t.test_queries or t.queries,
                       batch_size=e.batch_size, seed=config.seed + 1)
        test = Sinusoid(shots=t.test_shots or t.shots, queries=t.test_queries or t.queries,
                        batch_size=e.batch_size, seed=e.seed if test_seed is None else test_seed)
        return TaskSources(train, val, test, task_type="regression")
    train_ds = _load_dataset(config, config.data.train_split)
    test_ds = _load_dataset(config, config.data.test_split)
    val_ds = _load_dataset(config, config.data.val_split) if config.data.val_split else None
    ways, shots, queries = t.test_ways or t.ways, t.test_shots or t.shots, t.test_queries or t.queries
    train = EpisodeSampler(train_ds, ways=t.ways, shots=t.shots, queries=t.queries, batch_size=t.meta_batch,
                           seed=config.seed)
    val = (EpisodeSampler(val_ds, ways=ways, shots=shots, queries=queries, batch_size=e.batch_size,
                          seed=config.seed + 1) if val_ds is not None else None)
    test = EpisodeSampler(test_ds, ways=ways, shots=shots, queries=queries, batch_size=e.batch_size,
                          seed=e.seed if test_seed is None else test_seed)
    return TaskSources(train, val, test, task_type="classification", num_train_classes=len(train_ds.classes),
                       in_channels=int(train_ds.example_shape[0]), image_size=int(train_ds.example_shape[-1]))


def build_learner(config: ExperimentConfig, sources: TaskSources) -> MetaLearner:
    """The model and algorithm the config names, with shape arguments filled in from the data."""
    model_name, algo_name = config.model.name, config.algorithm.name
    if model_name not in MODELS:
        raise ConfigError(f"key 'model.name': {model_name!r} is not one of {', '.join(MODELS)}")
    if algo_name not in ALGORITHMS:
        raise ConfigError(f"key 'algorithm.name': {algo_name!r} is not one of {', '.join(ALGORITHMS)}")
    model_cls, algo_cls = MODELS[model_name], ALGORITHMS[algo_name]
    model_kwargs = check_kwargs(model_cls, config.model.kwargs(), "model")
    algo_kwargs = check_kwargs(algo_cls, config.algorithm.kwargs(), "algorithm")
    if sources.task_type == "regression":
        algo_kwargs.setdefault("loss", "mse")
    else:
        embedding_only = algo_cls.embedding_model  # the model is an embedding: no head, any test_ways
        head_width = None if embedding_only else config.task.ways
        if (config.task.test_ways or config.task.ways) != config.task.ways and not embedding_only:
            raise ConfigError(f"key 'task.test_ways': {algo_name} has a {config.task.ways}-way head; "
                              "test_ways must equal task.ways (use an embedding method such as protonet for any-way "
                              "testing)")
        accepted = _parameters(model_cls)
        defaults = {"ways": head_width, "in_channels": sources.in_channels, "image_size": sources.image_size}
        for key, value in defaults.items():
            if key in accepted:
                model_kwargs.setdefault(key, value)
        if "num_train_classes" in _parameters(algo_cls):  # pre-trained on every training class (FineTune, ...)
            algo_kwargs.setdefault("num_train_classes", sources.num_train_classes)
    torch.manual_seed(config.seed)
    model = model_cls(**model_kwargs)
    return algo_cls(model, **algo_kwargs)


def _parameters(factory) -> set[str]:
    import inspect

    return set(inspect.signature(factory).parameters)


def _schedule_options(config: ExperimentConfig) -> dict:
    """The named schedule's options from the config (only ``step`` takes any)."""
    tr = config.train
    if tr.schedule == "step":
        return {"step_size": tr.step_size, "gamma": tr.gamma}
    return {}


def _trainer(config: ExperimentConfig, learner, sources: TaskSources, out: Path, progress: bool) -> Trainer:
    tr = config.train
    return Trainer(learner, sources.train, val_tasks=sources.val, steps=tr.steps, lr=tr.lr, optimizer=tr.optimizer,
                   optimizer_kwargs={"weight_decay": tr.weight_decay} if tr.weight_decay else None,
                   schedule=tr.schedule, schedule_options=_schedule_options(config), grad_clip=tr.grad_clip,
                   val_every=tr.val_every,
                   val_episodes=tr.val_episodes, out=out, log_every=tr.log_every,
                   checkpoint_every=tr.checkpoint_every, progress=progress,
                   device=resolve_device(config.device), seed=config.seed, precision=tr.precision,
                   cpu_caching_allocator=tr.cpu_caching_allocator, distributed="auto")


_TimeLimit = TimeLimit  # the name quickstudy.automl.search imported before it moved to training.callbacks


def format_eval(result: dict) -> str:
    metric = result["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    unit = "%" if metric == "accuracy" else ""
    line = (f"{result['experiment']}: test {metric} {result['mean'] * scale:.2f}{unit} "
            f"± {result['ci95'] * scale:.2f}{unit} (95% CI, {result['episodes']} episodes)")
    if result.get("mse_by_step"):
        steps = ", ".join(f"{k}: {v['mean']:.3f}" for k, v in result["mse_by_step"].items())
        line += f"\nMSE by adaptation step: {steps}"
    return line


def report(run_dir: Path) -> list[Path]:
    from .training import make_report

    return make_report(run_dir)


def train(config: ExperimentConfig, run_dir: Path, *, resume: bool = False, progress: bool = True,
          time_limit: float | None = None, callbacks: Sequence[Any] = ()) -> None:
    """Meta-train (or continue) the run in ``run_dir`` with the shared Trainer. ``time_limit``: seconds of
    training across resumes (default ``train.time_limit`` minutes); ``callbacks`` go to the Trainer."""
    sources = build_tasks(config)
    learner = build_learner(config, sources)
    trainer = _trainer(config, learner, sources, run_dir, progress)
    trainer.callbacks.extend(callbacks)
    if time_limit is None and config.train.time_limit is not None:
        time_limit = config.train.time_limit * 60
    if time_limit is not None:
        trainer.callbacks.append(TimeLimit(time_limit))
    trainer.fit(resume=resume, overwrite=not resume)


def train_run(config_path, overrides=None, out=None, resume=False, steps=None, progress=True, raw=None,
              time_limit=None) -> Path:
    """:func:`quickstudy.runs.train_run` (kept here for code written before task kinds)."""
    from .runs import train_run as run

    return run(config_path, overrides=overrides, out=out, resume=resume, steps=steps, progress=progress, raw=raw,
               time_limit=time_limit)


def load_run(run_dir: str | os.PathLike, checkpoint: str = "best") -> tuple[ExperimentConfig, MetaLearner, TaskSources]:
    """The config, the learner with the chosen checkpoint's weights, and the task sources of a run."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} is not a run folder: config.yaml is missing")
    config, _ = load_config(run_dir / "config.yaml")
    sources = build_tasks(config)
    learner = build_learner(config, sources)
    path = run_dir / f"{checkpoint}.pt"
    if not path.is_file() and checkpoint == "best":
        path = run_dir / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint in {str(run_dir)!r} (looked for {path.name}"
                                f"{' and last.pt' if checkpoint == 'best' else ''}): train it first")
    learner.load_state_dict(load_checkpoint(path)["model"])
    return config, learner.to(resolve_device(config.device)), sources


def _episodes_key(config: ExperimentConfig) -> dict[str, Any]:
    """What the test episodes depend on: a saved list drawn for other settings is not reused."""
    d, t, e = config.data, config.task, config.eval
    return {"dataset": d.dataset, "protocol": d.protocol, "root": d.root, "data_seed": d.seed,
            "image_size": d.image_size, "split": d.test_split, "ways": t.test_ways or t.ways,
            "shots": t.test_shots or t.shots, "queries": t.test_queries or t.queries, "seed": e.seed,
            "batch_size": e.batch_size}


def _fixed_test_episodes(run_dir: Path, config: ExperimentConfig, sources: TaskSources, episodes: int):
    """The run's saved test episodes (made and saved on first use), so every evaluation scores the same tasks;
    drawn again when the settings they were drawn for (:func:`_episodes_key`) differ from the config's."""
    batches = math.ceil(episodes / config.eval.batch_size)
    if config.data.dataset == "sinusoid":
        return sources.test  # a pure function of (seed, index): nothing to save
    path, key = run_dir / "test_episodes.pt", _episodes_key(config)
    if path.is_file():
        try:
            fixed = FixedEpisodes.load(path, sources.test.dataset, key=key)
        except ValueError:  # other classes, other settings, an older file without settings, damaged: redraw
            fixed = None
        if fixed is not None and len(fixed) >= batches:
            return fixed
    fixed = sources.test.fixed(batches)
    if is_main_process():  # the others made the same list (a pure function of the seed): one process writes it
        fixed.save(path, key=key)
    return fixed


def evaluate_run(run_dir: str | os.PathLike, episodes: int | None = None, checkpoint: str = "best",
                 progress: bool = True) -> dict[str, Any]:
    """:func:`evaluate` (kept for code written before task kinds)."""
    return evaluate(Path(run_dir), episodes=episodes, checkpoint=checkpoint, progress=progress)


def evaluate(run_dir: Path, *, episodes: int | None = None, checkpoint: str = "best", progress: bool = True,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Score a run on its fixed test episodes; writes and returns ``eval.json``'s content."""
    if overrides:
        raise ValueError(f"eval: an episodes run takes no key=value overrides at evaluation; got {overrides}")
    run_dir = Path(run_dir)
    config, learner, sources = load_run(run_dir, checkpoint)
    episodes = episodes or config.eval.episodes
    tasks = _fixed_test_episodes(run_dir, config, sources, episodes)
    start = time.perf_counter()
    result: dict[str, Any] = {"experiment": config.name, "checkpoint": checkpoint, "episodes": episodes, "n": episodes,
                              "protocol": config.protocol}
    if sources.task_type == "regression":
        by_step = evaluate_regression_steps(learner, tasks, episodes=episodes, max_steps=config.eval.max_steps,
                                            batch_size=config.eval.batch_size, progress=progress,
                                            distributed="auto")
        chosen = config.eval.inner_steps if config.eval.inner_steps is not None else getattr(learner, "eval_steps", None)
        chosen = chosen if chosen is not None and chosen <= config.eval.max_steps else config.eval.max_steps
        headline = by_step[chosen]
        result.update(metric="mse", mean=headline.mean, ci95=headline.ci95, steps=chosen,
                      mse_by_step={str(r.steps): {"mean": r.mean, "ci95": r.ci95} for r in by_step})
    else:
        outcome = evaluate_tasks(learner, tasks, episodes=episodes, batch_size=config.eval.batch_size,
                           steps=config.eval.inner_steps, progress=progress, distributed="auto")
        result.update(metric="accuracy", mean=outcome.mean, ci95=outcome.ci95, metrics=outcome.metrics)
    result["seconds"] = time.perf_counter() - start
    if (run_dir / "last.pt").is_file():
        last = load_checkpoint(run_dir / "last.pt")
        result.update(trained_steps=int(last["step"]), train_seconds=float(last.get("elapsed", 0.0)),
                      best_val=last.get("best"))
    result["configured_steps"] = config.train.steps
    result["reference"] = _reference(config)
    result["machine"] = machine_info()
    if is_main_process():
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2, default=float))
    return result


def _reference(config: ExperimentConfig):
    if config.reference is None:
        return None
    refs = config.reference if isinstance(config.reference, list) else [config.reference]
    return [r.model_dump() for r in refs]


def adapt_folders(run_dir: str | os.PathLike, support: str | os.PathLike, query: str | os.PathLike,
                  checkpoint: str = "best") -> list[dict[str, Any]]:
    """Adapt a trained run to the task in ``support`` (one sub-folder per class) and label the images in
    ``query``: rows of ``{file, label, probability}``."""
    from .data import ImageFolder, image_files, load_images
    from .data.folder import IMAGE_EXTENSIONS
    from .tasks.kinds import kind_of

    if kind_of(run_dir).name != NAME:
        raise ValueError(f"adapt: {str(run_dir)!r} is a {kind_of(run_dir).name!r} run; adapt labels images with a "
                         f"run of kind {NAME!r}")
    config, learner, sources = load_run(run_dir, checkpoint)
    if sources.task_type != "classification":
        raise ValueError(f"adapt: run {str(run_dir)!r} is a regression run; adapt labels images")
    size, channels = sources.image_size, sources.in_channels
    support_set = ImageFolder(support, image_size=size, channels=channels)
    ways = len(support_set.classes)
    if ways < 2:
        raise ValueError(f"adapt: the support folder {str(support)!r} has one class ({support_set.classes[0]!r}); "
                         "a task needs at least two classes, one sub-folder each")
    head = getattr(getattr(learner, "model", None), "out_features", None)
    if not type(learner).embedding_model and head is not None and head != ways:
        raise ValueError(f"adapt: the support folder {str(support)!r} has {ways} classes but this run's "
                         f"{config.algorithm.name} head is {head}-way; give exactly {head} class folders")
    if not Path(query).is_dir():
        raise FileNotFoundError(f"adapt: the query folder {str(query)!r} does not exist (or is not a folder)")
    files = image_files(query)
    if not files:
        raise ValueError(f"adapt: the query folder {str(query)!r} holds no images to label (extensions "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    query_x = support_set.to_float(load_images(files, image_size=size, channels=channels))
    support_x = support_set.to_float(support_set.examples)
    support_y = torch.repeat_interleave(torch.arange(ways), support_set.counts)
    device = resolve_device(config.device)
    learner.eval()
    predictor = learner.adapt(support_x.to(device), support_y.to(device))
    with torch.no_grad():
        probabilities = torch.softmax(predictor(query_x.to(device)), dim=-1).cpu()
    confidence, label = probabilities.max(dim=-1)
    return [{"file": str(f), "label": support_set.classes[int(k)], "probability": round(float(p), 6)}
            for f, k, p in zip(files, label, confidence)]


def __getattr__(name: str):
    # run-folder helpers moved to quickstudy.runs (shared by every task kind)
    if name in ("open_run_dir", "choose_threads"):
        import warnings

        from . import runs

        warnings.warn(f"quickstudy.experiment.{name} has moved to quickstudy.runs.{name}", DeprecationWarning,
                      stacklevel=2)
        return getattr(runs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
