"""From a validated ``kind: users`` config to data, split, task sources, the meta-learner and the baselines.

Deterministic from the config's seeds; the same functions serve training, evaluation and ``users recommend``.
The item side a run was trained with (catalogue, training statistics) is saved as ``RUN/items.npz`` so that
recommending for a new user needs the run folder only, not the training data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..algorithms import ALGORITHMS, MetaLearner
from ..config import ConfigError, check_kwargs
from ..data.paths import atomic_save_npz
from ..data.ratings import ItemCatalogue, Ratings, read_items, read_ratings
from ..models import MODELS
from .baselines import BASELINES
from .config import UsersConfig
from .dataset import UsersData, catalogue_of_ids
from .features import ItemStatistics, RowEncoder
from .splits import UserSplit, random_split, time_split
from .tasks import UserEpisodes, UserTasks

__all__ = ["load_ratings", "make_split", "load_data", "train_tasks", "episodes", "build_learner", "build_baselines",
           "save_items", "load_items", "ITEMS_FILE"]

ITEMS_FILE = "items.npz"


def load_ratings(config: UsersConfig) -> tuple[Ratings, ItemCatalogue]:
    """The ratings and item catalogue ``config.data`` names."""
    d = config.data
    if d.source == "movietweetings":
        from ..data.movietweetings import load_movietweetings

        return load_movietweetings(root=d.root, download=d.download)
    ratings = read_ratings(d.ratings, scale=d.scale)
    catalogue = read_items(d.items) if d.items else catalogue_of_ids(ratings.item, f"the item ids of {d.ratings}")
    return ratings, catalogue


def make_split(config: UsersConfig, ratings: Ratings) -> UserSplit:
    s = config.split
    if s.kind == "time":
        return time_split(ratings, cutoff=s.cutoff, min_ratings=s.min_ratings, val_fraction=s.val_fraction)
    return random_split(ratings, min_ratings=s.min_ratings, val_fraction=s.val_fraction,
                        test_fraction=s.test_fraction, seed=s.seed)


def load_data(config: UsersConfig) -> UsersData:
    ratings, catalogue = load_ratings(config)
    return UsersData(ratings, catalogue, make_split(config, ratings), shrink=config.features.item_shrink,
                     genre_profile=config.features.genre_profile)


def train_tasks(config: UsersConfig, data: UsersData) -> UserTasks:
    t = config.task
    return UserTasks(data.grouped("train"), data.encoder, shots=t.shots, queries=t.queries, batch_size=t.meta_batch,
                     seed=config.seed)


def support_rule(config: UsersConfig) -> str:
    """How evaluated users' support ratings are chosen: the config's, else first-by-time for the time split."""
    if config.eval.support is not None:
        return config.eval.support
    return "first" if config.split.kind == "time" else "random"


def episodes(config: UsersConfig, data: UsersData, part: str, shots: int) -> UserEpisodes:
    """Fixed evaluation tasks of the validation (``"val"``) or test (``"test"``) users at K = ``shots``."""
    if part not in ("val", "test"):
        raise ValueError(f"episodes: part must be 'val' or 'test', got {part!r}")
    seed = config.eval.seed if part == "test" else config.eval.seed + 1
    return UserEpisodes(data.grouped(part), data.encoder, shots=shots, support=support_rule(config), seed=seed)


def build_learner(config: UsersConfig, encoder: RowEncoder, global_mean: float) -> MetaLearner:
    """The model and algorithm the config names; the model's shape arguments come from the encoder."""
    model_name, algo_name = config.model.name, config.algorithm.name
    if model_name not in MODELS:
        raise ConfigError(f"key 'model.name': {model_name!r} is not one of {', '.join(MODELS)}")
    if algo_name not in ALGORITHMS or algo_name in ("protonet", "finetune"):
        allowed = [n for n in ALGORITHMS if n not in ("protonet", "finetune")]
        raise ConfigError(f"key 'algorithm.name': {algo_name!r} is not one of {', '.join(allowed)} "
                          "(rating prediction is regression)")
    model_cls, algo_cls = MODELS[model_name], ALGORITHMS[algo_name]
    model_kwargs = check_kwargs(model_cls, config.model.kwargs(), "model")
    algo_kwargs = check_kwargs(algo_cls, config.algorithm.kwargs(), "algorithm")
    algo_kwargs.setdefault("loss", "mse")
    if model_name == "melu":
        for key, value in {**encoder.model_shape(), "offset": global_mean}.items():
            model_kwargs.setdefault(key, value)
    elif model_name == "mlp":
        model_kwargs.setdefault("in_features", encoder.width)
        model_kwargs.setdefault("out_features", 1)
    import torch

    torch.manual_seed(config.seed)
    return algo_cls(model_cls(**model_kwargs), **algo_kwargs)


def build_baselines(config: UsersConfig) -> dict[str, object]:
    """The baselines ``eval.baselines`` names, with their keyword arguments from ``baselines.<name>``."""
    out = {}
    for name in config.eval.baselines:
        kwargs = check_kwargs(BASELINES[name], config.baselines.get(name, {}), f"baselines.{name}")
        out[name] = BASELINES[name](**kwargs)
    return out


def save_items(path: Path, data: UsersData) -> Path:
    """The catalogue and the training statistics, for ``users recommend`` (no pickles)."""
    c, s = data.catalogue, data.stats
    return atomic_save_npz(path, ids=c.ids, titles=c.titles, genres=c.genres, genre_names=np.array(c.genre_names, dtype=str),
                           years=c.years, count=s.count, total=s.total, global_mean=np.array(s.global_mean),
                           source=np.array(c.source))


def load_items(path: Path) -> tuple[ItemCatalogue, ItemStatistics]:
    from ..data.paths import load_npz

    keys = ("ids", "titles", "genres", "genre_names", "years", "count", "total", "global_mean", "source")
    arrays = load_npz(path, keys)
    if arrays is None:
        raise FileNotFoundError(f"{str(path)!r} is missing or unreadable: train the run again to write it")
    catalogue = ItemCatalogue(ids=arrays["ids"], titles=arrays["titles"], genres=arrays["genres"].astype(bool),
                              genre_names=tuple(str(g) for g in arrays["genre_names"]), years=arrays["years"],
                              source=str(arrays["source"]))
    return catalogue, ItemStatistics(arrays["count"], arrays["total"], float(arrays["global_mean"]))
